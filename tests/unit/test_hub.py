"""The gateway on the happy path, sans-I/O: replies, private channels, market data views."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from engine.commands import IndexFix, PlaceOrder
from engine.messages import Side, TimeInForce
from gateway.checksum import book_checksum
from gateway.hub import Gateway
from gateway.serve import run_clock
from gateway.session import ClientSession
from tests.ws_helpers import (
    ALICE,
    ALICE_KEY,
    BOB,
    BOB_KEY,
    NS,
    SPOT,
    Floor,
    Message,
    decode,
    place_request,
    reply_to,
)

T0 = 1_796_000_000 * NS
FUTURE = "GPU.H100.F2701"


@pytest.fixture
def floor(tmp_path: Path) -> Iterator[Floor]:
    floor = Floor(tmp_path)
    floor.fund(ALICE, BOB)
    floor.capacity(ALICE)
    floor.capacity(BOB)
    yield floor
    floor.close()


def channel(messages: list[Message], name: str) -> list[Message]:
    return [m for m in messages if m.get("channel") == name and "id" not in m]


def subscribe(floor: Floor, session: ClientSession, **fields: object) -> list[Message]:
    return floor.send(session, {"op": "subscribe", "id": "s", **fields}, T0)


def test_a_second_place_with_an_in_flight_client_id_gets_the_same_order(floor: Floor) -> None:
    alice = floor.logged_in(ALICE_KEY, T0)
    alice.receive(json.dumps(place_request("dup", request_id=1)), T0)
    alice.receive(json.dumps(place_request("dup", request_id=2)), T0)  # before the first is durable
    floor.pump()
    replies = decode(alice.drain())
    first, second = reply_to(replies, 1), reply_to(replies, 2)
    assert first["order"]["order_id"] == second["order"]["order_id"]
    assert list(floor.live_orders(ALICE)) == ["dup"]


def test_a_cancel_right_after_its_place_waits_for_it(floor: Floor) -> None:
    alice = floor.logged_in(ALICE_KEY, T0)
    alice.receive(json.dumps(place_request("quick", request_id=1)), T0)
    alice.receive(json.dumps({"op": "cancel", "id": 2, "cl_ord_id": "quick"}), T0)
    alice.receive(json.dumps({"op": "amend", "id": 3, "cl_ord_id": "never", "qty": "2"}), T0)
    floor.pump()
    replies = decode(alice.drain())
    assert reply_to(replies, 1)["order"]["status"] == "new"
    cancelled = reply_to(replies, 2)
    assert (cancelled["type"], cancelled["order"]["status"]) == ("order", "cancelled")
    assert reply_to(replies, 3)["code"] == "unknown_order"
    assert floor.live_orders(ALICE) == {}


class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []

    def on_account_event(self, event: object, seq: int, index: int, ts: int) -> None:
        self.events.append(event)


def test_account_listeners_get_their_accounts_events_once_durable(floor: Floor) -> None:
    recorder = Recorder()
    floor.gateway.account_listeners[ALICE] = {recorder}
    alice = floor.logged_in(ALICE_KEY, T0)
    bob = floor.logged_in(BOB_KEY, T0)
    alice.receive(json.dumps(place_request("bid", qty="2", symbol=FUTURE)), T0)
    assert recorder.events == []  # not before the journal has it
    floor.pump()
    floor.send(bob, place_request("hit", side="sell", qty="1", symbol=FUTURE), T0)
    kinds = [type(e).__name__ for e in recorder.events]
    assert kinds[0] == "OrderAccepted" and "Trade" in kinds
    assert all(getattr(e, "account", ALICE) == ALICE for e in recorder.events
               if type(e).__name__ != "Trade")
    assert sum(type(e).__name__ == "OrderAccepted" for e in recorder.events) == 1  # not bob's


def test_private_channels_follow_a_fill(floor: Floor) -> None:
    alice = floor.logged_in(ALICE_KEY, T0)
    bob = floor.logged_in(BOB_KEY, T0)
    for name in ("orders", "fills", "balances", "positions"):
        subscribe(floor, alice, channel=name)
    floor.send(alice, place_request("bid", side="buy", price="2.400", qty="5", symbol=FUTURE),
               T0)
    alice.drain()
    floor.send(bob, place_request("hit", side="sell", price="2.400", qty="2", symbol=FUTURE),
               T0)
    seen = decode(alice.drain())
    [fill] = [f for m in channel(seen, "fills") for f in m["data"]]
    assert (fill["side"], fill["price"], fill["qty"], fill["liquidity"]) == \
        ("buy", "2.400", "2", "maker")
    [order] = [o for m in channel(seen, "orders") for o in m["data"]]
    assert (order["status"], order["filled"], order["remaining"]) == \
        ("partially_filled", "2", "3")
    [position] = [p for m in channel(seen, "positions") for p in m["data"]]
    assert (position["symbol"], position["qty"], position["entry_price"]) == (FUTURE, "2",
                                                                              "2.400")
    balances = floor.exchange.ledger.accounts[ALICE]
    [balance] = [b for m in channel(seen, "balances") for b in m["data"]]
    assert balance["available"] == f"{balances.available // 10**6}." \
                                   f"{balances.available % 10**6:06d}"
    for name in ("orders", "fills", "positions", "balances"):  # each channel counts on its own
        seqs = [m["seq"] for m in channel(seen, name)]
        assert seqs and all(b == a + 1 for a, b in pairwise(seqs))
    assert not channel(decode(bob.drain()), "orders")  # bob never subscribed


def test_mass_cancel_counts_and_withdraw_reports(floor: Floor) -> None:
    alice = floor.logged_in(ALICE_KEY, T0)
    for i in range(3):
        floor.send(alice, place_request(f"o{i}", price=f"2.{300 + i}"), T0)
    done = reply_to(floor.send(alice, {"op": "mass_cancel", "id": 9, "symbol": SPOT}, T0), 9)
    assert done == {"type": "mass_cancelled", "id": 9, "cancelled": 3}
    assert floor.live_orders(ALICE) == {}
    paid = reply_to(floor.send(alice, {"op": "withdraw", "id": 10, "amount": "12.5"}, T0), 10)
    assert (paid["type"], paid["amount"]) == ("withdrawal", "12.500000")
    too_much = reply_to(floor.send(alice, {"op": "withdraw", "id": 11,
                                           "amount": "999999999999"}, T0), 11)
    assert (too_much["type"], too_much["code"]) == ("error", "insufficient_funds")


def test_a_book_view_cut_to_its_depth_brings_in_the_next_level(floor: Floor) -> None:
    alice = floor.logged_in(ALICE_KEY, T0)
    for i in range(12):
        floor.send(alice, place_request(f"b{i}", price=f"2.{300 + i}"), T0)
    watcher = floor.session(T0)
    watcher.drain()
    [snapshot] = channel(subscribe(floor, watcher, channel="book", symbols=[SPOT], depth=10),
                         "book")
    assert [p for p, _ in snapshot["bids"]] == [f"2.{311 - i}" for i in range(10)]
    floor.send(alice, {"op": "cancel", "id": 1, "cl_ord_id": "b11"}, T0)
    [update] = channel(decode(watcher.drain()), "book")
    assert sorted(update["bids"]) == [["2.301", "1"], ["2.311", "0"]]
    assert update["prev_seq"] == snapshot["seq"] and update["seq"] == snapshot["seq"] + 1
    book = floor.exchange.markets[SPOT].book
    spec = floor.exchange.markets[SPOT].instrument
    top = [(spec.ticks_to_price(p), spec.lots_to_qty(q)) for p, q in book.depth(Side.BUY, 10)]
    assert update["checksum"] == book_checksum(top, [])


def test_market_data_coalesces_between_flushes(tmp_path: Path) -> None:
    floor = Floor(tmp_path)
    floor.gateway.market_data_interval_ns = 10_000_000
    floor.fund(ALICE)
    watcher = floor.session(T0)
    watcher.drain()
    subscribe(floor, watcher, channel="book", symbols=[SPOT])
    alice = floor.logged_in(ALICE_KEY, T0)
    floor.send(alice, place_request("a", price="2.300"), T0)
    floor.send(alice, place_request("b", price="2.301"), T0)
    assert not channel(decode(watcher.drain()), "book")  # held until the flush
    floor.gateway.flush_market_data()
    [update] = channel(decode(watcher.drain()), "book")
    assert (update["seq"], sorted(update["bids"])) == (1, [["2.300", "1"], ["2.301", "1"]])
    floor.gateway.flush_market_data()
    assert not decode(watcher.drain())  # nothing changed since
    floor.close()


def test_the_index_survives_a_restart(tmp_path: Path) -> None:
    floor = Floor(tmp_path)
    floor.gateway.submit(IndexFix("GPU.H100", 20261130, 2_450_000))
    floor.pump()
    assert floor.gateway.books[SPOT].index == 2_450_000
    floor.close()
    again = Floor(tmp_path)
    try:
        assert again.gateway.books[SPOT].index == 2_450_000
        watcher = ClientSession(again.gateway, T0)
        [ticker] = channel(again.send(watcher, {"op": "subscribe", "channel": "ticker",
                                                "symbols": [SPOT]}, T0), "ticker")
        assert ticker["index"] == "2.450000"
    finally:
        again.close()


def test_a_new_gateway_knows_live_orders_by_client_id(tmp_path: Path) -> None:
    floor = Floor(tmp_path)
    floor.fund(ALICE)
    alice = floor.logged_in(ALICE_KEY, T0)
    placed = reply_to(floor.send(alice, place_request("keep", request_id=1), T0), 1)
    restarted = Gateway(floor.sequencer)
    order = restarted.tracker.find(ALICE, None, "keep")
    assert order is not None and order.order_id == placed["order"]["order_id"]
    floor.close()


def test_the_serve_clock_expires_a_gtd_order_and_survives_a_failed_commit(
        floor: Floor, caplog: pytest.LogCaptureFixture) -> None:
    now = time.time_ns()
    for price, expire in ((2400, now + 200_000_000), (2390, now + 600_000_000)):
        floor.gateway.submit(PlaceOrder(ALICE, SPOT, Side.BUY, 1, price,
                                        tif=TimeInForce.GTD, expire_ts=expire))
    floor.pump()
    orders = set(floor.exchange.orders)
    assert len(orders) == 2
    commits = []

    def pump() -> None:  # the first commit fails, as a full disk would make it
        commits.append(time.monotonic())
        if len(commits) == 1:
            raise OSError("no space left on device")
        floor.pump()

    async def run() -> None:
        clock = asyncio.create_task(run_clock(floor.gateway, pump, interval_s=0.05))
        deadline = time.monotonic() + 5
        while orders & set(floor.exchange.orders) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not clock.done()
        clock.cancel()

    asyncio.run(run())
    assert not orders & set(floor.exchange.orders)  # expired by Timers, not by a trader
    assert len(commits) >= 2  # the clock went on after the failed commit
    assert "could not sequence a Timer" in caplog.text
