"""FIX market data, sans-I/O: MarketDataRequest V answered with W then X, or Y; a client that
applies what it receives holds the engine's book; every message passes the stock FIX44
dictionary."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from engine.commands import CancelOrder, PlaceOrder
from engine.messages import Side
from gateway.fix_codec import Field, FixMessage
from tests.fix_helpers import (
    Book,
    FixLink,
    apply_market_data,
    engine_book,
    fix_acceptor,
    of_type,
    stock_problem,
)
from tests.ws_helpers import ALICE, BOB, CAROL_KEY, Floor

FUTURE = "GPU.H100.F2701"
SPOT = "GPU.H100.SPOT"


@pytest.fixture
def floor(tmp_path: Path) -> Iterator[Floor]:
    floor = Floor(tmp_path / "data")
    floor.fund(ALICE, BOB)
    yield floor
    floor.close()


def request(md_req_id: str, symbols: Sequence[str], *, kind: str = "1", depth: int = 10,
            types: Sequence[str] = ("0", "1"), extra: Sequence[Field] = ()) -> list[Field]:
    """A MarketDataRequest V body."""
    return [(262, md_req_id), (263, kind), (264, depth), *extra, (267, len(types)),
            *[(269, t) for t in types], (146, len(symbols)), *[(55, s) for s in symbols]]


def place(floor: Floor, account: str, side: Side, price: str, qty: int,
          symbol: str = FUTURE) -> None:
    ticks = floor.exchange.markets[symbol].instrument.price_to_ticks(price)
    floor.gateway.submit(PlaceOrder(account, symbol, side, qty, ticks))
    floor.pump()


def watcher(floor: Floor, key: str = CAROL_KEY, sender: str = "MD1") -> FixLink:
    return FixLink(floor, fix_acceptor(floor), key, time.time_ns(), sender)


def assert_stock(messages: Sequence[FixMessage]) -> None:
    for message in messages:
        assert stock_problem(message) is None, (stock_problem(message), message)


def test_snapshot_then_increments_rebuild_the_engine_book(floor: Floor) -> None:
    rng = random.Random(5)
    for i in range(30):
        place(floor, ALICE if i % 2 else BOB, Side.BUY, f"2.{400 - 5 * (i % 15)}", 1 + i % 3)
        place(floor, BOB if i % 2 else ALICE, Side.SELL, f"2.{600 + 5 * (i % 15)}", 1 + i % 4)
    link = watcher(floor)
    answer = link.send("V", request("md1", [FUTURE], depth=10))
    assert [m.msg_type for m in answer] == ["W"]
    assert answer[0].get(262) == "md1" and answer[0].get(55) == FUTURE
    books: dict[str, Book] = {}
    apply_market_data(books, answer[0])
    assert books[FUTURE] == engine_book(floor.exchange, FUTURE, 10)
    assert len(books[FUTURE]["0"]) == 10  # 15 bid levels, cut to the depth
    seen: list[FixMessage] = list(answer)
    for _ in range(300):
        live = [o for o in floor.exchange.orders.values() if o.placed is not None]
        if live and rng.random() < 0.3:
            order = rng.choice(live)
            assert order.placed is not None
            floor.gateway.submit(CancelOrder(order.placed.account, FUTURE, order.order_id))
            floor.pump()
        else:
            side = rng.choice((Side.BUY, Side.SELL))
            centre = 470 if side == Side.BUY else 530
            price = f"2.{centre + 5 * rng.randint(-12, 12):03d}"
            place(floor, rng.choice((ALICE, BOB)), side, price, rng.randint(1, 4))
        increments = link.received()
        assert all(m.msg_type == "X" and m.get(262) == "md1" for m in increments)
        for message in increments:
            apply_market_data(books, message)
        seen += increments
        assert books[FUTURE] == engine_book(floor.exchange, FUTURE, 10)
    actions = {e.get(279) for m in of_type(seen, "X")
               for e in m.groups(268, (279, 269, 55, 270, 271))}
    assert actions == {"0", "1", "2"}
    assert_stock(seen[:50])


def test_trades_are_entries_of_type_2_when_asked_for(floor: Floor) -> None:
    place(floor, ALICE, Side.SELL, "2.500", 3)
    link = watcher(floor)
    books: dict[str, Book] = {}
    answer = link.send("V", request("md2", [FUTURE], depth=0, types=("0", "1", "2")))
    apply_market_data(books, answer[0])
    place(floor, BOB, Side.BUY, "2.500", 2)
    increments = link.received()
    trades = [(e.get(269), e.get(270), e.get(271), e.get(279)) for m in increments
              for e in m.groups(268, (279, 269, 55, 270, 271)) if e.get(269) == "2"]
    assert trades == [("2", "2.500", "2", "0")]
    for message in increments:
        apply_market_data(books, message)
    assert books[FUTURE] == engine_book(floor.exchange, FUTURE, 500)
    again = watcher(floor, sender="MD2").send("V", request("md3", [FUTURE], types=("2",)))
    entries = again[0].groups(268, (269, 270, 271))
    assert [(e.get(269), e.get(270), e.get(271)) for e in entries] == [("2", "2.500", "2")]
    assert_stock([*answer, *increments, *again])


def test_only_requested_entry_types_are_sent(floor: Floor) -> None:
    place(floor, ALICE, Side.BUY, "2.400", 1)
    place(floor, ALICE, Side.SELL, "2.600", 1)
    link = watcher(floor)
    answer = link.send("V", request("bids", [FUTURE], types=("0",)))
    assert [e.get(269) for e in answer[0].groups(268, (269, 270, 271))] == ["0"]
    place(floor, BOB, Side.SELL, "2.650", 1)
    assert link.received() == []  # an offer changed: nothing for a bids-only request
    place(floor, BOB, Side.BUY, "2.450", 1)
    [update] = link.received()
    entries = update.groups(268, (279, 269, 55, 270, 271))
    assert [(e.get(279), e.get(269), e.get(270)) for e in entries] == [("0", "0", "2.450")]


def test_depth_rounds_up_to_a_view_and_requests_share_it(floor: Floor) -> None:
    gateway = floor.gateway
    first = watcher(floor)
    first.send("V", request("a", [FUTURE, SPOT], depth=5))
    second = watcher(floor, sender="MD2")
    second.send("V", request("b", [FUTURE], depth=10))
    third = watcher(floor, sender="MD3")
    third.send("V", request("c", [FUTURE], depth=0))
    assert gateway.book_subscribers[(FUTURE, 10)] == {first.connection, second.connection}
    assert gateway.book_subscribers[(SPOT, 10)] == {first.connection}
    assert gateway.book_subscribers[(FUTURE, 500)] == {third.connection}
    for depth, view in ((26, 100), (101, 500), (500, 500)):
        assert of_type(first.send("V", request(f"d{depth}", [SPOT], depth=depth)), "W")
        assert gateway.book_subscribers.get((SPOT, view)) == {first.connection}
    assert set(floor.gateway.books[SPOT].views) == {500}  # replaced views were dropped


def test_unsubscribe_and_disconnect_leave_the_views(floor: Floor) -> None:
    gateway = floor.gateway
    link = watcher(floor)
    link.send("V", request("md1", [FUTURE, SPOT]))
    assert link.send("V", request("md1", [FUTURE, SPOT], kind="2")) == []
    assert (FUTURE, 10) not in gateway.book_subscribers
    assert 10 not in gateway.books[FUTURE].views
    place(floor, ALICE, Side.BUY, "2.400", 1)
    assert link.received() == []
    link.send("V", request("md2", [FUTURE]))
    link.close()
    assert (FUTURE, 10) not in gateway.book_subscribers


def test_snapshot_only_makes_no_view(floor: Floor) -> None:
    place(floor, ALICE, Side.BUY, "2.400", 2)
    link = watcher(floor)
    answer = link.send("V", request("snap", [FUTURE, SPOT], kind="0", depth=25))
    assert [(m.msg_type, m.get(55)) for m in answer] == [("W", FUTURE), ("W", SPOT)]
    assert [(e.get(269), e.get(270), e.get(271)) for e in
            answer[0].groups(268, (269, 270, 271))] == [("0", "2.400", "2")]
    assert answer[1].get(268) == "0"
    assert floor.gateway.books[FUTURE].views == {}
    place(floor, ALICE, Side.BUY, "2.405", 2)
    assert link.received() == []
    assert_stock(answer)


@pytest.mark.parametrize(("body", "reason"), [
    (request("r", ["NOPE"]), "0"),
    (request("r", [FUTURE], depth=501), "5"),
    (request("r", [FUTURE], kind="7"), "4"),
    (request("r", [FUTURE], kind="2"), "4"),  # nothing to unsubscribe
    (request("r", [FUTURE], types=("0", "6")), "8"),
    (request("r", [FUTURE], extra=[(265, "0")]), "6"),
])
def test_bad_requests_get_market_data_request_reject(floor: Floor, body: list[Field],
                                                     reason: str) -> None:
    link = watcher(floor)
    [reject] = link.send("V", body)
    assert (reject.msg_type, reject.get(262), reject.get(281)) == ("Y", "r", reason)
    assert reject.get(58)
    assert stock_problem(reject) is None
    assert not floor.gateway.book_subscribers


def test_a_live_md_req_id_cannot_be_reused(floor: Floor) -> None:
    link = watcher(floor)
    link.send("V", request("dup", [FUTURE]))
    [reject] = link.send("V", request("dup", [SPOT]))
    assert (reject.msg_type, reject.get(281)) == ("Y", "1")
    assert link.connection.market_data.subscriptions.keys() == {FUTURE}


def test_missing_required_tags_get_a_session_reject(floor: Floor) -> None:
    link = watcher(floor)
    [reject] = [m for m in link.send("V", request("x", [FUTURE])[1:], admin=True)
                if m.msg_type == "3"]
    assert (reject.get(371), reject.get(373), reject.get(372)) == ("262", "1", "V")
    miscounted: list[Field] = [(262, "x"), (263, "1"), (264, 10), (267, 2), (269, "0"), (146, 1),
                  (55, FUTURE)]
    [reject] = [m for m in link.send("V", miscounted, admin=True) if m.msg_type == "3"]
    assert (reject.get(371), reject.get(373)) == ("267", "16")


def test_a_new_request_for_a_symbol_replaces_the_old_one(floor: Floor) -> None:
    place(floor, ALICE, Side.BUY, "2.400", 1)
    link = watcher(floor)
    link.send("V", request("old", [FUTURE], depth=10))
    [snapshot] = link.send("V", request("new", [FUTURE], depth=25))
    assert snapshot.get(262) == "new"
    assert link.connection not in floor.gateway.book_subscribers.get((FUTURE, 10), set())
    place(floor, ALICE, Side.BUY, "2.395", 1)
    assert [m.get(262) for m in link.received()] == ["new"]
