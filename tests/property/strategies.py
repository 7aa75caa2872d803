"""Hypothesis strategies for order book command sequences.

Sequences are made for a small price band (`MIN_PRICE`..`MAX_PRICE`) and one to four accounts,
so that crosses, self-trades, stop triggers and expiries happen often. Most commands are valid;
some carry bad values, reuse or invent order ids, or target another account's order.

Each choice is a single weighted draw that shrinks towards its first (most common) value, so
a failing example shrinks to plain limit orders, and generation stays cheap.
"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

import msgspec
from hypothesis import strategies as st

from engine.messages import (
    Amend,
    Cancel,
    Command,
    ExpireOrders,
    MassCancel,
    NewOrder,
    OrderType,
    SelfTradePrevention,
    Side,
    TimeInForce,
)

MIN_PRICE = 100
MAX_PRICE = 120

T = TypeVar("T")


def _weighted(*choices: tuple[T, int]) -> st.SearchStrategy[T]:
    """One of the values, drawn in proportion to its weight."""
    return st.sampled_from([value for value, weight in choices for _ in range(weight)])


def _each(values: list[T], weight: int) -> list[tuple[T, int]]:
    return [(value, weight) for value in values]


LIMIT, MARKET = OrderType.LIMIT, OrderType.MARKET
STOP_LIMIT, STOP_MARKET = OrderType.STOP_LIMIT, OrderType.STOP_MARKET
GTC, IOC, FOK, GTD = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK, TimeInForce.GTD

# A limit price is drawn as a depth: how many ticks from the middle of the band, on the order's
# own side (a bid below the middle, an ask above). Negative depths cross the middle, so about
# a third of the orders are aggressive and the rest build a book for them to trade with.
_MIDDLE = (MIN_PRICE + MAX_PRICE) // 2
_BAND_EDGE = 10  # at the far end of the band
_OUT_OF_BAND = 11
_NO_PRICE = 12  # price 0
_DEPTHS = _weighted(
    *_each([0, 1], 10),
    (2, 6),
    (3, 3),
    *_each([-1, -2], 4),
    (-3, 2),
    *_each([_BAND_EDGE, -_BAND_EDGE], 1),
    *_each([_OUT_OF_BAND, _NO_PRICE], 1),
)
_MARKET_PRICES = _weighted((0, 8), (_MIDDLE, 1), (MAX_PRICE + 5, 1))  # all ignored
_QTYS = _weighted(*_each([1, 2, 3, 4, 5, 6], 12), (0, 1), (-2, 1))
_WAITS = _weighted((0, 4), (1, 4), (2, 2), (5, 1), (12, 1))
_ORDER_KINDS = _weighted(
    ((LIMIT, GTC), 10),
    ((LIMIT, GTD), 4),
    ((LIMIT, IOC), 2),
    ((LIMIT, FOK), 2),
    ((MARKET, IOC), 2),
    ((MARKET, FOK), 1),
    ((STOP_LIMIT, GTC), 2),
    ((STOP_LIMIT, GTD), 1),
    ((STOP_LIMIT, IOC), 1),
    ((STOP_LIMIT, FOK), 1),
    ((STOP_MARKET, IOC), 2),
    ((STOP_MARKET, FOK), 1),
    ((MARKET, GTC), 1),  # invalid
    ((STOP_MARKET, GTD), 1),  # invalid
    ((LIMIT, GTC), 10),  # hypothesis favours the ends of a list a little: end on a common one
)
_EXPIRE_IN = _weighted(*_each([0, 1, 2, 3, 4, 6, 8], 3), (-1, 1))  # GTD: expire_ts - ts

# Display quantities that are no number of lots but a rule.
_DISPLAY_OVER_QTY = -2


class _Extras(NamedTuple):
    """The less common parts of a new order."""

    post_only: bool = False
    display_qty: int = 0  # an iceberg's slice (added to qty); or -1, or _DISPLAY_OVER_QTY
    stray_stop_price: bool = False  # a stop price on an order that is no stop (ignored)
    bad_expiry: bool = False  # GTD without expire_ts, or expire_ts without GTD


_PLAIN = _Extras()
_RESTING_EXTRAS = _weighted(
    (_PLAIN, 30),
    (_Extras(post_only=True), 4),
    *_each([_Extras(display_qty=d) for d in (1, 2, 3)], 4),
    (_Extras(post_only=True, display_qty=2), 1),
    (_Extras(display_qty=_DISPLAY_OVER_QTY), 1),
    (_Extras(display_qty=-1), 1),
    (_Extras(stray_stop_price=True), 1),
    (_Extras(bad_expiry=True), 1),
)
_OTHER_EXTRAS = _weighted(  # for the other orders, where each extra is invalid or ignored
    (_PLAIN, 100),
    (_Extras(post_only=True), 1),
    (_Extras(display_qty=2), 1),
    (_Extras(stray_stop_price=True), 1),
    (_Extras(bad_expiry=True), 1),
)

# How a step picks its order id (positive k: the k-th most recently introduced id).
_FRESH = 0  # a new order: the next unused id; a cancel or amend: an id never used
_BAD = -1  # id 0
_NEW_ORDER_TARGETS = _weighted((_FRESH, 50), *_each([1, 2], 1), (_BAD, 1))
_TARGETS = _weighted(*_each([1, 2, 3, 4, 5], 4), (_FRESH, 1), (_BAD, 1))
_RARELY = _weighted((False, 9), (True, 1))


class _Step(NamedTuple):
    """One command before sequencing: its ts, ids and accounts are resolved in `_assemble`."""

    command: Command
    wait: int  # ts advance before this command
    account: int  # an index, taken modulo the sequence's number of accounts
    target: int = _FRESH
    foreign: bool = False  # a cancel or amend sent by another account than the owner's
    keep_price: bool = False  # an amend to the order's own price
    depth: int = 0  # an amend's price, as a depth on the order's side
    expire_in: int | None = None  # a new order's expire_ts, relative to its ts


def _price(side: Side, depth: int) -> int:
    """The price ``depth`` ticks from the middle of the band, away from the touch for ``side``."""
    if depth == _NO_PRICE:
        return 0
    if depth == _OUT_OF_BAND:
        depth = _MIDDLE - MIN_PRICE + 1
    return _MIDDLE - depth if side == Side.BUY else _MIDDLE + depth


def _new_order(draw: st.DrawFn) -> tuple[NewOrder, int | None]:
    """A new order without ts, id and account, and its expire_ts relative to ts."""
    order_type, tif = draw(_ORDER_KINDS)
    qty = draw(_QTYS)
    plain_limit = order_type == LIMIT and tif in (GTC, GTD)
    extras = draw(_RESTING_EXTRAS if plain_limit else _OTHER_EXTRAS)
    display_qty = extras.display_qty
    if display_qty == _DISPLAY_OVER_QTY:
        display_qty = max(qty, 0) + 1
    elif display_qty > 0 and qty > 0:
        qty += display_qty  # at least one hidden slice to refresh
    stop = order_type in (STOP_LIMIT, STOP_MARKET)
    expire_in = draw(_EXPIRE_IN) if tif == GTD else None
    if extras.bad_expiry:
        expire_in = None if tif == GTD else 5
    side = draw(st.sampled_from(Side))
    if order_type in (MARKET, STOP_MARKET):
        price = draw(_MARKET_PRICES)
    else:
        price = _price(side, draw(_DEPTHS))
    # A buy stop waits above the market, a sell stop below: the far side of the book.
    stop_price = _price(Side(1 - side), draw(_DEPTHS)) if stop or extras.stray_stop_price else 0
    order = NewOrder(
        ts=0,
        order_id=0,
        account=0,
        side=side,
        price=price,
        qty=qty,
        order_type=order_type,
        tif=tif,
        post_only=extras.post_only,
        display_qty=display_qty,
        stop_price=stop_price,
        stp=draw(st.sampled_from(SelfTradePrevention)),
    )
    return order, expire_in


_KINDS = _weighted(("new", 14), ("cancel", 2), ("amend", 3), ("mass_cancel", 1), ("expire", 1))


@st.composite
def _steps(draw: st.DrawFn) -> _Step:
    kind = draw(_KINDS)
    wait = draw(_WAITS)
    if kind == "new":
        order, expire_in = _new_order(draw)
        return _Step(
            order, wait, draw(st.integers(0, 3)), draw(_NEW_ORDER_TARGETS), expire_in=expire_in
        )
    if kind == "expire":
        return _Step(ExpireOrders(0), wait, 0)
    account = draw(st.integers(0, 3))
    if kind == "mass_cancel":
        side = draw(st.sampled_from([None, Side.BUY, Side.SELL]))
        return _Step(MassCancel(0, 0, side), wait, account)
    target, foreign = draw(_TARGETS), draw(_RARELY)
    if kind == "cancel":
        return _Step(Cancel(0, 0, 0), wait, account, target, foreign)
    amend = Amend(0, 0, 0, 0, draw(_QTYS))
    return _Step(
        amend, wait, account, target, foreign, keep_price=draw(st.booleans()), depth=draw(_DEPTHS)
    )


def _assemble(steps: list[_Step], accounts: int) -> list[Command]:
    """Sequence ``steps``: non-decreasing ts, resolved order ids and accounts."""
    ts = 1
    next_id = 1
    entered: dict[int, NewOrder] = {}  # the first order sent with each id, in order
    lasting: list[int] = []  # ids of orders that may rest or wait: what cancels and amends pick
    commands: list[Command] = []
    for position, step in enumerate(steps):
        ts += step.wait
        # Offset by position: hypothesis likes to repeat a drawn value, which would make
        # every order one account's.
        account = 1 + (step.account + position) % accounts
        command = step.command
        pool = list(entered) if isinstance(command, NewOrder) else lasting
        if step.target > 0 and pool:
            order_id = pool[-(1 + (step.target - 1) % len(pool))]
        elif step.target == _BAD:
            order_id = 0
        elif isinstance(command, NewOrder):
            order_id, next_id = next_id, next_id + 1
        else:
            order_id = next_id + 1000
        if isinstance(command, NewOrder):
            expire_ts = 0 if step.expire_in is None else ts + step.expire_in
            command = msgspec.structs.replace(
                command, ts=ts, order_id=order_id, account=account, expire_ts=expire_ts
            )
            if order_id > 0 and order_id not in entered:
                entered[order_id] = command
                if command.tif in (GTC, GTD) or command.order_type in (STOP_LIMIT, STOP_MARKET):
                    lasting.append(order_id)
        elif isinstance(command, Cancel | Amend):
            owner = entered.get(order_id)
            if owner is not None:
                account = owner.account % accounts + 1 if step.foreign else owner.account
            if isinstance(command, Amend):
                side = Side.BUY if owner is None else owner.side
                price = _price(side, step.depth)
                if step.keep_price and owner is not None:
                    price = owner.price
                command = msgspec.structs.replace(command, price=price)
            command = msgspec.structs.replace(command, ts=ts, order_id=order_id, account=account)
        elif isinstance(command, MassCancel):
            command = msgspec.structs.replace(command, ts=ts, account=account)
        else:
            command = msgspec.structs.replace(command, ts=ts)
        commands.append(command)
    return commands


@st.composite
def _sequences(draw: st.DrawFn, max_size: int) -> list[Command]:
    # An explicit length, mostly long: st.lists alone averages only a handful of elements.
    shortest = draw(_weighted((0, 1), (max_size // 2, 3)))  # shrinks to allow short ones
    size = draw(st.integers(shortest, max_size))
    steps = draw(st.lists(_steps(), min_size=size, max_size=size))
    return _assemble(steps, accounts=draw(_weighted((1, 1), (2, 2), (3, 2), (4, 2))))


def command_sequences(max_size: int = 40) -> st.SearchStrategy[list[Command]]:
    """Lists of up to ``max_size`` sequenced commands, for a book on [MIN_PRICE, MAX_PRICE]."""
    return _sequences(max_size)
