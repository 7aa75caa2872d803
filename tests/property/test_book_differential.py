"""Differential test: 100k seeded random commands through every book, compared as they go.

Every book in `BOOKS`, plus a second instance of the first (so one implementation alone still
checks its determinism), gets the same commands; their events must match command by command
and their state hashes every 100 commands. The commands are mostly valid and aimed at live
orders, with a mid price that wanders, so the books stay deep and busy.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from engine.book import OrderBook, state_hash
from engine.messages import (
    Accepted,
    Amend,
    Amended,
    Cancel,
    Cancelled,
    Command,
    Event,
    ExpireOrders,
    Fill,
    MassCancel,
    NewOrder,
    OrderType,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from tests.books import BOOKS

MIN_PRICE, MAX_PRICE = 1_000, 2_000
COMMANDS = 100_000
HASH_EVERY = 100
ACCOUNTS = 8
LEAST_SEEN = {  # events a run must produce, or the flow has stopped testing much
    "Fill": 20_000,
    "Triggered": 1_000,
    "Amended": 5_000,
    "Rejected": 500,
    "Cancelled:STP": 1_000,
    "Cancelled:EXPIRED": 1_000,
    "Cancelled:FOK": 1_000,
    "Cancelled:POST_ONLY": 200,
}


class RandomFlow:
    """Seeded commands that follow the book: cancels and amends pick orders that are live."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.ts = 0
        self.mid = (MIN_PRICE + MAX_PRICE) // 2
        self.next_id = 1
        self.live: dict[int, tuple[int, int]] = {}  # order id -> (account, price)
        self.live_ids: list[int] = []  # the same ids (and some dead ones), for random picks

    def observe(self, events: list[Event]) -> None:
        """Track which orders are live from the events of the last command."""
        for event in events:
            if isinstance(event, Accepted):
                self.live[event.order_id] = (event.account, event.price)
                self.live_ids.append(event.order_id)
            elif isinstance(event, Amended):
                self.live[event.order_id] = (event.account, event.price)
            elif isinstance(event, Cancelled) and event.remaining == 0:
                self.live.pop(event.order_id, None)
            elif isinstance(event, Fill):
                if event.maker_remaining == 0:
                    self.live.pop(event.maker_order_id, None)
                if event.taker_remaining == 0:
                    self.live.pop(event.taker_order_id, None)

    def next(self) -> Command:
        rng = self.rng
        self.ts += rng.choice((0, 1, 1, 2, 5))
        self.mid = min(max(self.mid + rng.choice((-1, 0, 0, 1)), MIN_PRICE + 30), MAX_PRICE - 30)
        roll = rng.random()
        # Thin the book out when it grows deep.
        if roll < (0.30 if len(self.live) > 600 else 0.08) and self.live:
            order_id = self.pick_live()
            return Cancel(self.ts, order_id, self.live[order_id][0])
        if roll < 0.20 and self.live:
            return self.amend()
        if roll < 0.215:
            side = rng.choice((None, Side.BUY, Side.SELL))
            return MassCancel(self.ts, rng.randint(1, ACCOUNTS), side)
        if roll < 0.23:
            return ExpireOrders(self.ts)
        if roll < 0.24:
            return self.invalid()
        return self.new_order()

    def pick_live(self) -> int:
        while True:
            index = self.rng.randrange(len(self.live_ids))
            order_id = self.live_ids[index]
            if order_id in self.live:
                return order_id
            self.live_ids[index] = self.live_ids[-1]
            self.live_ids.pop()

    def amend(self) -> Amend:
        rng = self.rng
        order_id = self.pick_live()
        account, price = self.live[order_id]
        if rng.random() < 0.5:
            price = self.mid + rng.randint(-8, 8)
        return Amend(self.ts, order_id, account, price, rng.randint(1, 20))

    def new_order(self) -> NewOrder:
        rng = self.rng
        side = rng.choice((Side.BUY, Side.SELL))
        away = 1 if side == Side.SELL else -1  # price direction away from the other side
        price = self.mid + away * rng.randint(-3, 10)
        qty = rng.randint(1, 20)
        kind = rng.random()
        order_type, tif = OrderType.LIMIT, TimeInForce.GTC
        post_only, display_qty, stop_price, expire_ts = False, 0, 0, 0
        if kind < 0.08:
            tif = rng.choice((TimeInForce.IOC, TimeInForce.FOK))
        elif kind < 0.14:
            order_type, tif = OrderType.MARKET, rng.choice((TimeInForce.IOC, TimeInForce.FOK))
            price = 0
        elif kind < 0.22:
            order_type = rng.choice((OrderType.STOP_LIMIT, OrderType.STOP_MARKET))
            stop_price = self.mid - away * rng.randint(0, 6)  # buy stops above the mid
            if order_type == OrderType.STOP_MARKET:
                price, tif = 0, rng.choice((TimeInForce.IOC, TimeInForce.FOK))
        elif kind < 0.32:
            display_qty = rng.randint(1, 5)
            qty += display_qty * rng.randint(1, 4)
        elif kind < 0.37:
            post_only = True
        if order_type != OrderType.MARKET and tif == TimeInForce.GTC and rng.random() < 0.15:
            tif, expire_ts = TimeInForce.GTD, self.ts + rng.randint(0, 40)
        order_id, self.next_id = self.next_id, self.next_id + 1
        return NewOrder(
            self.ts,
            order_id,
            rng.randint(1, ACCOUNTS),
            side,
            price,
            qty,
            order_type=order_type,
            tif=tif,
            post_only=post_only,
            display_qty=display_qty,
            stop_price=stop_price,
            expire_ts=expire_ts,
            stp=rng.choice(list(SelfTradePrevention)),
        )

    def invalid(self) -> Command:
        rng = self.rng
        order = self.new_order()
        choice = rng.randrange(5)
        if choice == 0:
            return NewOrder(self.ts, order.order_id, order.account, order.side, order.price, 0)
        if choice == 1:
            return NewOrder(self.ts, order.order_id, 1, Side.BUY, MAX_PRICE + 1, 1)
        if choice == 2 and self.live:
            return NewOrder(self.ts, self.pick_live(), 1, Side.BUY, self.mid, 1)
        if choice == 3:
            return Cancel(self.ts, self.next_id + 10_000, 1)
        return Amend(self.ts, order.order_id + 10_000, 1, self.mid, 0)


def book_kinds() -> list[tuple[str, OrderBook]]:
    """A fresh book of every kind, and a second one of the first kind."""
    (first, make_first), *_ = BOOKS.items()
    books = [(name, make(MIN_PRICE, MAX_PRICE)) for name, make in BOOKS.items()]
    return [*books, (f"{first} (second instance)", make_first(MIN_PRICE, MAX_PRICE))]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [20260101, 7])
def test_books_agree_on_100k_seeded_commands(seed: int) -> None:
    (baseline_name, baseline), *others = book_kinds()
    flow = RandomFlow(seed)
    seen: Counter[str] = Counter()
    for position in range(COMMANDS):
        command = flow.next()
        expected = baseline.apply(command)
        for name, book in others:
            assert book.apply(command) == expected, (
                f"{name} differs from {baseline_name} at command {position} (seed {seed}): "
                f"{command}"
            )
        flow.observe(expected)
        seen.update(
            f"Cancelled:{event.reason.name}"
            if isinstance(event, Cancelled)
            else type(event).__name__
            for event in expected
        )
        bid, ask = baseline.best_bid(), baseline.best_ask()
        assert bid is None or ask is None or bid < ask
        if position % HASH_EVERY == HASH_EVERY - 1:
            digest = state_hash(baseline)
            for name, book in others:
                assert state_hash(book) == digest, f"{name} state at command {position}"
    for kind, least in LEAST_SEEN.items():
        assert seen[kind] >= least, f"the flow no longer exercises {kind}: {seen}"
