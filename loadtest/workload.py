"""Seeded order flow in exchange-core's published mix, for the matching-core benchmark.

82% moves (cancel/replace to a new price), 9% GTC limit orders, 6% cancels and 3% IOC orders,
over about 1,000 resting orders spread across the band and 1,000 accounts. A generating book
(the Cython core, run command by command) keeps the stream valid: moves and cancels target
orders that are live at that point of the stream.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cython_ext.book import EVENT_KINDS, MatchingCore
from engine.cython_book import core_call
from engine.messages import Amend, Cancel, Command, NewOrder, Side, TimeInForce

_FILL = EVENT_KINDS["fill"]
_CANCELLED = EVENT_KINDS["cancelled"]


@dataclass(frozen=True)
class Workload:
    """A generated command stream and the figures that describe it."""

    commands: list[Command]
    warmup: int  # leading commands that build the initial book
    resting_at_end: int


class _LiveOrders:
    """The ids of resting orders, with O(1) random choice and removal."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.where: dict[int, int] = {}
        self.side: dict[int, Side] = {}
        self.account: dict[int, int] = {}
        self.qty: dict[int, int] = {}

    def add(self, order_id: int, side: Side, account: int, qty: int) -> None:
        self.where[order_id] = len(self.ids)
        self.ids.append(order_id)
        self.side[order_id] = side
        self.account[order_id] = account
        self.qty[order_id] = qty

    def remove(self, order_id: int) -> None:
        i = self.where.pop(order_id, None)
        if i is None:
            return
        last = self.ids.pop()
        if last != order_id:
            self.ids[i] = last
            self.where[last] = i
        del self.side[order_id], self.account[order_id], self.qty[order_id]

    def __len__(self) -> int:
        return len(self.ids)


def generate(
    ops: int,
    seed: int,
    min_price: int,
    max_price: int,
    *,
    accounts: int = 1000,
    target_resting: int = 1000,
) -> Workload:
    """Build ``ops`` benchmark commands (after a warm-up that fills the book)."""
    rng = random.Random(seed)
    book = MatchingCore(min_price, max_price)
    live = _LiveOrders()
    center = (min_price + max_price) // 2
    half = (max_price - min_price) // 2
    commands: list[Command] = []
    next_id = 1

    def passive_price(side: Side) -> int:
        offset = rng.randint(1, half)
        return center - offset if side == Side.BUY else center + offset

    def aggressive_price(side: Side) -> int:
        best = book.best_ask() if side == Side.BUY else book.best_bid()
        if best is None:
            return passive_price(side)
        slip = rng.randint(0, 3)
        return min(best + slip, max_price) if side == Side.BUY else max(best - slip, min_price)

    def run(cmd: Command) -> None:
        commands.append(cmd)
        method, args = core_call(book, cmd)
        method(*args)
        taker_left = cmd.qty if isinstance(cmd, NewOrder | Amend) else 0
        for words in book.events():
            if words[0] == _FILL:
                taker_left = words[10]
                if words[9]:
                    live.qty[words[5]] = words[9]
                else:
                    live.remove(words[5])
            elif words[0] == _CANCELLED and words[5] == 0:
                live.remove(words[1])
        if isinstance(cmd, NewOrder) and cmd.order_id in book:
            live.add(cmd.order_id, cmd.side, cmd.account, taker_left)
        elif isinstance(cmd, Amend):
            if cmd.order_id in book:
                live.qty[cmd.order_id] = taker_left
            else:
                live.remove(cmd.order_id)

    def new_order(ts: int, tif: TimeInForce, aggressive: bool) -> NewOrder:
        nonlocal next_id
        side = Side(rng.randint(0, 1))
        price = aggressive_price(side) if aggressive else passive_price(side)
        qty = rng.randint(1, 5) if tif == TimeInForce.IOC else rng.randint(1, 10)
        next_id += 1
        return NewOrder(ts, next_id - 1, rng.randint(1, accounts), side, price, qty, tif=tif)

    ts = 0
    while len(live) < target_resting:
        ts += 1
        run(new_order(ts, TimeInForce.GTC, aggressive=False))
    warmup = len(commands)
    for _ in range(ops):
        ts += 1
        roll = rng.random()
        if roll < 0.82 and live.ids:
            order_id = live.ids[rng.randrange(len(live))]
            side = live.side[order_id]
            price = aggressive_price(side) if rng.random() < 0.005 else passive_price(side)
            run(Amend(ts, order_id, live.account[order_id], price, live.qty[order_id]))
        elif roll < 0.91 or not live.ids:
            run(new_order(ts, TimeInForce.GTC, aggressive=len(live) > target_resting))
        elif roll < 0.97:
            order_id = live.ids[rng.randrange(len(live))]
            run(Cancel(ts, order_id, live.account[order_id]))
        else:
            run(new_order(ts, TimeInForce.IOC, aggressive=True))
    return Workload(commands, warmup, len(live))
