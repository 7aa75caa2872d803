"""The market page in headless Chromium against a live exchange: orders placed through the
websocket API must show on the page's ladder exactly as the engine holds them, trades and the
ticker must follow, and the client-side book must verify its seq and checksum."""

from __future__ import annotations

import random
from pathlib import Path

from playwright.sync_api import Page
from websockets.sync.client import connect

from gateway.checksum import book_checksum
from tests.e2e.conftest import (
    BUYER_KEY,
    WAIT_S,
    Ladder,
    PageOpener,
    ServedExchange,
    Trader,
    wait_for,
)

SYMBOL = "GPU.H100.SPOT"
SHOWN_LEVELS = 20
ARTIFACTS = Path(__file__).parent / "artifacts"

BIDS = [("2.400", "5"), ("2.390", "3"), ("2.380", "7"), ("2.350", "10"), ("2.300", "25"),
        ("2.275", "40")]
ASKS = [("2.450", "4"), ("2.460", "6"), ("2.480", "2"), ("2.500", "8"), ("2.550", "30"),
        ("2.600", "45")]

READ_LADDER = """() => {
  const rows = (id) => [...document.querySelectorAll(`#${id} .level`)]
    .map((row) => [row.dataset.price, row.dataset.size]);
  return [rows("bids"), rows("asks").reverse()];
}"""
BOOK_STATUS = """() => {
  const box = document.getElementById("book-status");
  return {state: box.dataset.state, ok: box.dataset.checksumOk, seq: box.dataset.seq,
          failures: document.getElementById("checksum-failures").dataset.count};
}"""


def page_ladder(page: Page) -> Ladder:
    """The page's ladder, best first: (bids, asks) of (price, size)."""
    bids, asks = page.evaluate(READ_LADDER)
    return [tuple(level) for level in bids], [tuple(level) for level in asks]


def book_status(page: Page) -> dict[str, str]:
    """The book status element's data attributes."""
    status: dict[str, str] = page.evaluate(BOOK_STATUS)
    return status


def wait_for_engine_ladder(page: Page, exchange: ServedExchange, symbol: str = SYMBOL) -> None:
    """Wait until the page's ladder is the engine's top 20 levels each side, verified."""
    expected = exchange.ladder(symbol, SHOWN_LEVELS)
    wait_for("ladder", lambda: page_ladder(page), expected)
    wait_for("checksum", lambda: book_status(page)["ok"], "true")


def test_ladder_trades_and_ticker_follow_the_engine(
        exchange: ServedExchange, traders: tuple[Trader, Trader], open_page: PageOpener) -> None:
    buyer, seller = traders
    for price, qty in BIDS:
        buyer.place("buy", price, qty)
    for price, qty in ASKS:
        seller.place("sell", price, qty)
    assert buyer.place("buy", "2.450", "1")["status"] == "filled"
    bids, asks = exchange.ladder(SYMBOL, SHOWN_LEVELS)
    assert (bids[0], asks[0]) == (("2.400", "5"), ("2.450", "3"))

    page = open_page()
    wait_for_engine_ladder(page, exchange)
    assert page.evaluate("location.hash") == f"#{SYMBOL}"
    assert page.locator(f'.instrument.selected[data-symbol="{SYMBOL}"]').count() == 1
    trade = page.locator('#trades .trade[data-price="2.450"][data-size="1"][data-side="buy"]')
    trade.wait_for(timeout=WAIT_S * 1000)
    wait_for("last price", lambda: page.text_content("#t-last"), "2.450")
    wait_for("best bid", lambda: page.text_content("#t-bid"), "2.400 \N{MULTIPLICATION SIGN} 5")
    wait_for("best ask", lambda: page.text_content("#t-ask"), "2.450 \N{MULTIPLICATION SIGN} 3")
    status = book_status(page)
    assert (status["state"], status["ok"], status["failures"]) == ("ok", "true", "0")
    seq_before = int(status["seq"])

    buyer.place("buy", "2.420", "9")
    assert exchange.ladder(SYMBOL, 1)[0] == [("2.420", "9")]
    wait_for_engine_ladder(page, exchange)
    seller.place("sell", "2.400", "2")  # trades 2 at the best bid, 2.420
    assert exchange.ladder(SYMBOL, 1)[0] == [("2.420", "7")]
    wait_for_engine_ladder(page, exchange)
    page.locator('#trades .trade[data-price="2.420"][data-size="2"][data-side="sell"]') \
        .wait_for(timeout=WAIT_S * 1000)
    assert page.locator("#trades .trade").count() == 2
    wait_for("24h volume", lambda: page.text_content("#t-volume"), "3 GPU-hour")
    status = book_status(page)
    assert int(status["seq"]) > seq_before
    assert (status["state"], status["failures"]) == ("ok", "0")

    page.wait_for_timeout(700)  # let the ladder's change highlights fade for the picture
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "page.png"
    shot.unlink(missing_ok=True)
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_choosing_an_instrument_follows_its_book(
        exchange: ServedExchange, traders: tuple[Trader, Trader], open_page: PageOpener) -> None:
    buyer, seller = traders
    seller.place("sell", "2.500", "4")
    page = open_page()
    wait_for_engine_ladder(page, exchange)

    page.click('.instrument[data-symbol="GPU.H200.SPOT"]')
    wait_for("hash", lambda: page.evaluate("location.hash"), "#GPU.H200.SPOT")
    wait_for("symbol", lambda: page.text_content("#symbol"), "GPU.H200.SPOT")
    wait_for_engine_ladder(page, exchange, "GPU.H200.SPOT")
    assert page_ladder(page) == ([], [])
    buyer.place("buy", "3.400", "6", symbol="GPU.H200.SPOT")
    wait_for_engine_ladder(page, exchange, "GPU.H200.SPOT")
    assert page_ladder(page) == ([("3.400", "6")], [])

    page.goto(exchange.url + "#GPU.H100.F2701")  # the choice lives in the hash
    page.reload()
    wait_for("symbol", lambda: page.text_content("#symbol"), "GPU.H100.F2701")
    buyer.place("buy", "2.405", "3", symbol="GPU.H100.F2701")
    wait_for_engine_ladder(page, exchange, "GPU.H100.F2701")
    assert page_ladder(page) == ([("2.405", "3")], [])


def test_a_corrupted_client_book_is_caught_and_resynced(
        exchange: ServedExchange, traders: tuple[Trader, Trader], open_page: PageOpener) -> None:
    buyer, seller = traders
    for price, qty in BIDS:
        buyer.place("buy", price, qty)
    for price, qty in ASKS:
        seller.place("sell", price, qty)
    page = open_page()
    wait_for_engine_ladder(page, exchange)
    assert book_status(page)["failures"] == "0"

    # Damage a level the next update does not touch: its checksum must no longer match.
    page.evaluate("() => window.cmx.state.book.bids.set('2.390', '99')")
    buyer.place("buy", "2.410", "1")
    wait_for("checksum failures", lambda: book_status(page)["failures"], "1")
    wait_for_engine_ladder(page, exchange)
    assert page.text_content("#resyncs") == "1"
    assert book_status(page)["state"] == "ok"

    # A skipped seq is a gap: the page resyncs instead of applying the next update.
    page.evaluate("() => { window.cmx.state.book.seq -= 1; }")
    seller.place("sell", "2.470", "5")
    wait_for("resyncs", lambda: page.text_content("#resyncs"), "2")
    wait_for_engine_ladder(page, exchange)
    assert book_status(page)["failures"] == "1"


def test_page_reconnects_when_the_server_drops_it(exchange: ServedExchange,
                                                 open_page: PageOpener) -> None:
    page = open_page()
    wait_for_engine_ladder(page, exchange)
    page.evaluate("() => { window.firstSocket = window.cmx.state.socket; }")

    exchange.drop_connections()
    wait_for("reconnected", lambda: page.evaluate(
        "() => window.cmx.state.socket !== window.firstSocket"
        " && window.cmx.state.socket?.readyState === WebSocket.OPEN"), True)
    wait_for("connection", lambda: page.get_attribute("#connection", "data-state"), "live")
    with connect(exchange.ws_url) as socket:
        Trader(socket, BUYER_KEY).place("buy", "2.333", "4")
    wait_for_engine_ladder(page, exchange)
    assert page_ladder(page) == ([("2.333", "4")], [])


def _decimal(units: int, places: int) -> str:
    whole, fraction = divmod(units, 10**places)
    return f"{whole}.{fraction:0{places}d}"


def _sample_books() -> list[Ladder]:
    rng = random.Random(20260)
    books: list[Ladder] = [([], []), ([("0.005", "1")], []), ([], [("150.10", "300")])]
    for levels in (3, 10, 11, 25):
        prices = sorted({rng.randrange(1, 6000) for _ in range(2 * levels + 5)})
        middle = len(prices) // 2
        bids = [(_decimal(p, 3), str(rng.randrange(1, 5000)))
                for p in reversed(prices[:middle][-levels:])]
        asks = [(_decimal(p, 3), _decimal(rng.randrange(1, 10**6), 2))
                for p in prices[middle:][:levels]]
        books.append((bids, asks))
    return books


def test_page_checksum_matches_the_server(exchange: ServedExchange, open_page: PageOpener) -> None:
    page = open_page()
    page.wait_for_function("() => window.cmx !== undefined")
    assert page.evaluate("() => window.cmx.crc32('123456789')") == 0xCBF43926
    for bids, asks in _sample_books():
        in_page = page.evaluate("([bids, asks]) => window.cmx.bookChecksum(bids, asks)",
                                [bids, asks])
        assert in_page == book_checksum(bids, asks), (bids, asks)
