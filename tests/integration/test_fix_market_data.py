"""FIX market data and quoting over TCP: a market maker subscribes to a book, quotes with
MassQuote, is traded against and cancels with QuoteCancel; the book it rebuilds from W and X
is the engine's, and every message it receives passes the stock FIX44 dictionary."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from gateway.fix_client import FixClient
from gateway.fix_codec import Field, FixMessage
from gateway.hub import Gateway
from tests.fix_helpers import Book, apply_market_data, engine_book, stock_problem
from tests.integration.test_fix_acceptor import (
    FUTURE,
    KEY,
    OTHER_KEY,
    exchange,
    expect,
    logged_on,
)

DEPTH = 10


class Watcher:
    """Everything one initiator receives, with the books its W and X describe."""

    def __init__(self, client: FixClient) -> None:
        self.client = client
        self.seen: list[FixMessage] = []
        self.books: dict[str, Book] = {}

    async def until(self, done: Callable[[], bool]) -> None:
        """Read messages until ``done`` holds (fails after 10 s)."""
        async with asyncio.timeout(10):
            while not done():
                message = await self.client.messages.get()
                self.seen.append(message)
                if message.msg_type in ("W", "X"):
                    apply_market_data(self.books, message)

    def last(self, msg_type: str) -> FixMessage | None:
        found = [m for m in self.seen if m.msg_type == msg_type]
        return found[-1] if found else None

    def trades(self) -> list[tuple[str | None, str | None]]:
        """Price and size of the trade entries received."""
        return [(e.get(270), e.get(271)) for m in self.seen if m.msg_type == "X"
                for e in m.groups(268, (279, 269, 55, 270, 271)) if e.get(269) == "2"]

    def holds_engine_book(self, gateway: Gateway) -> bool:
        return self.books.get(FUTURE) == engine_book(gateway.exchange, FUTURE, DEPTH)


def order(cl_ord_id: str, side: str, price: str, qty: str) -> list[Field]:
    return [(11, cl_ord_id), (55, FUTURE), (54, side), (60, "20261130-00:00:00.000"),
            (38, qty), (40, "2"), (44, price), (59, "1")]


def quote(quote_id: str, bid: str, offer: str) -> list[Field]:
    return [(117, quote_id), (296, 1), (302, "s1"), (304, 2), (295, 2),
            (299, "e1"), (55, FUTURE), (132, bid), (133, offer), (134, "2"), (135, "2"),
            (299, "e2"), (55, FUTURE), (132, "2.300"), (133, "2.700"), (134, "1"),
            (135, "1")]


def test_a_market_maker_sees_its_quotes_and_trades_in_the_book(tmp_path: Path) -> None:
    async def main() -> None:
        async with exchange(tmp_path) as (gateway, port):
            mm = await logged_on(port, KEY)
            taker = await logged_on(port, OTHER_KEY, sender="TK1")
            for i in range(12):
                taker.send("D", order(f"B{i}", "1", f"2.{350 + 5 * i}", "1"))
            await expect(taker, "8", t150="0", t11="B11")
            watcher = Watcher(mm)
            mm.send("V", [(262, "md"), (263, "1"), (264, DEPTH), (265, "1"), (267, 3),
                          (269, "0"), (269, "1"), (269, "2"), (146, 1), (55, FUTURE)])
            await watcher.until(lambda: watcher.last("W") is not None)
            assert watcher.books[FUTURE]["0"] and not watcher.books[FUTURE]["1"]

            mm.send("i", quote("q1", "2.450", "2.550"))
            await watcher.until(lambda: watcher.last("b") is not None)
            ack = watcher.last("b")
            assert ack is not None and (ack.get(117), ack.get(297)) == ("q1", "0")
            await watcher.until(lambda: watcher.holds_engine_book(gateway))
            book = watcher.books[FUTURE]
            assert len(book["0"]) == DEPTH  # the quote's bids pushed two levels out
            assert max(book["0"]) == max(engine_book(gateway.exchange, FUTURE, 1)["0"])

            taker.send("D", order("T1", "1", "2.550", "1"))
            await watcher.until(lambda: bool(watcher.trades()) and any(
                m.msg_type == "8" and m.get(150) == "F" for m in watcher.seen))
            assert watcher.trades() == [("2.550", "1")]
            fill = [m for m in watcher.seen if m.msg_type == "8" and m.get(150) == "F"]
            assert [(m.get(11), m.get(31), m.get(32)) for m in fill] == [("Q:e1:S", "2.550",
                                                                           "1")]
            await watcher.until(lambda: watcher.holds_engine_book(gateway))

            mm.send("i", quote("q2", "2.460", "2.540"))
            await watcher.until(lambda: watcher.last("b") is not ack)
            ack = watcher.last("b")
            assert ack is not None and (ack.get(117), ack.get(297)) == ("q2", "0")
            await watcher.until(lambda: watcher.holds_engine_book(gateway))

            mm.send("Z", [(117, "c1"), (298, "4")])
            await watcher.until(lambda: (b := watcher.last("b")) is not None and
                                b.get(117) == "c1")
            cancelled = watcher.last("b")
            assert cancelled is not None and cancelled.get(297) == "4"
            await watcher.until(lambda: watcher.holds_engine_book(gateway))
            assert not watcher.books[FUTURE]["1"]
            assert not [o for o in gateway.exchange.orders.values() if o.account == mm.account]
            problems = [(stock_problem(m), m) for m in watcher.seen]
            assert [p for p in problems if p[0] is not None] == []
            assert {m.msg_type for m in watcher.seen} >= {"W", "X", "b", "8"}
            for client in (mm, taker):
                await client.close()

    asyncio.run(main())
