"""Commands into an order book and the events it emits, as msgspec Structs.

Every field is an integer: prices in ticks, quantities in lots, times in nanoseconds of the
sequencer's clock. Commands and events are tagged unions, so one decoder validates a message
and picks its type in one step (``msgspec.msgpack.decode(buf, type=Command)``).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated

import msgspec

MAX_QTY = 1 << 40
"""Largest quantity (lots) an order may have: sums of quantities stay far inside int64."""

Int64 = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
"""An integer that fits the matching core's int64 fields; decoding refuses anything else."""


def fits_int64(*values: int) -> bool:
    """Whether every value fits in an int64."""
    return all(-(1 << 63) <= v < (1 << 63) for v in values)


class Side(IntEnum):
    """Which side of the book an order rests on."""

    BUY = 0
    SELL = 1


class OrderType(IntEnum):
    """How an order is priced; stop types wait for the last trade price to reach the stop."""

    LIMIT = 0
    MARKET = 1
    STOP_LIMIT = 2
    STOP_MARKET = 3


class TimeInForce(IntEnum):
    """How long an order may rest: GTC until cancelled, GTD until ``expire_ts``."""

    GTC = 0
    IOC = 1
    FOK = 2
    GTD = 3


class SelfTradePrevention(IntEnum):
    """What happens when an incoming order would trade with its own account's resting order.

    The incoming (taker) order's mode applies.
    """

    CANCEL_NEWEST = 0
    CANCEL_OLDEST = 1
    CANCEL_BOTH = 2
    DECREMENT = 3


class CancelReason(IntEnum):
    """Why (part of) an order left the book."""

    USER = 0
    IOC_REMAINDER = 1
    FOK = 2
    STP = 3
    EXPIRED = 4
    MASS_CANCEL = 5
    POST_ONLY = 6


class RejectReason(IntEnum):
    """Why a command was refused without changing the book."""

    DUPLICATE_ORDER_ID = 1
    INVALID_QUANTITY = 2
    INVALID_PRICE = 3
    PRICE_OUT_OF_BAND = 4
    INVALID_ORDER = 5
    INVALID_EXPIRY = 6
    UNKNOWN_ORDER = 7
    NOT_AMENDABLE = 8
    WOULD_CROSS = 9


# --- commands ---------------------------------------------------------------------------------


class NewOrder(msgspec.Struct, frozen=True, tag="new_order"):
    """Enter an order. ``price`` is ignored for market types; ``stop_price`` only for stops.

    ``display_qty`` > 0 makes an iceberg that shows at most that much at a time.
    ``expire_ts`` is the last sequenced time at which a GTD order is still live.
    """

    ts: Int64
    order_id: Int64
    account: Int64
    side: Side
    price: Int64
    qty: Int64
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    display_qty: Int64 = 0
    stop_price: Int64 = 0
    expire_ts: Int64 = 0
    stp: SelfTradePrevention = SelfTradePrevention.CANCEL_NEWEST


class Cancel(msgspec.Struct, frozen=True, tag="cancel"):
    """Cancel one resting or pending order of ``account``."""

    ts: Int64
    order_id: Int64
    account: Int64


class Amend(msgspec.Struct, frozen=True, tag="amend"):
    """Change a resting order's limit price and open quantity.

    Lowering the quantity at the same price keeps time priority; any other change loses it,
    and a new price that crosses the book trades at once.
    """

    ts: Int64
    order_id: Int64
    account: Int64
    price: Int64
    qty: Int64


class MassCancel(msgspec.Struct, frozen=True, tag="mass_cancel"):
    """Cancel every order of ``account``, or only those on ``side``."""

    ts: Int64
    account: Int64
    side: Side | None = None


class ExpireOrders(msgspec.Struct, frozen=True, tag="expire_orders"):
    """Timer: expire GTD orders whose ``expire_ts`` is before ``ts``."""

    ts: Int64


Command = NewOrder | Cancel | Amend | MassCancel | ExpireOrders

# --- events -----------------------------------------------------------------------------------


class Accepted(msgspec.Struct, frozen=True, tag="accepted"):
    """A new order passed validation and is live (it may still trade or be cancelled at once)."""

    order_id: int
    account: int
    side: Side
    order_type: OrderType
    price: int
    qty: int


class Rejected(msgspec.Struct, frozen=True, tag="rejected"):
    """A command was refused; nothing changed."""

    order_id: int
    account: int
    reason: RejectReason


class Fill(msgspec.Struct, frozen=True, tag="fill"):
    """A trade between a resting (maker) and an incoming (taker) order, at the maker's price."""

    trade_id: int
    price: int
    qty: int
    aggressor_side: Side
    maker_order_id: int
    taker_order_id: int
    maker_account: int
    taker_account: int
    maker_remaining: int
    taker_remaining: int


class Cancelled(msgspec.Struct, frozen=True, tag="cancelled"):
    """``qty`` lots of an order were cancelled; ``remaining`` is what is still open (often 0).

    A self-trade decrement cancels part of an order and leaves the rest open.
    """

    order_id: int
    account: int
    reason: CancelReason
    qty: int
    remaining: int


class Amended(msgspec.Struct, frozen=True, tag="amended"):
    """A resting order now has this limit price and open quantity."""

    order_id: int
    account: int
    price: int
    qty: int


class Triggered(msgspec.Struct, frozen=True, tag="triggered"):
    """The last trade price reached a stop order's stop price; it now enters the book."""

    order_id: int
    account: int
    stop_price: int


class BookLevel(msgspec.Struct, frozen=True, tag="book_level"):
    """The displayed quantity at one price level after a change (0 = the level is gone)."""

    side: Side
    price: int
    qty: int


Event = Accepted | Rejected | Fill | Cancelled | Amended | Triggered | BookLevel
