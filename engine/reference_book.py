"""The reference order book: plain, readable Python on sortedcontainers.

It is the executable specification of matching (the rules are listed in `engine.book`); the
Cython core must emit the same events for every command sequence.
"""

from __future__ import annotations

from sortedcontainers import SortedDict, SortedList

from engine.book import BookState, PendingStop, RestingOrder
from engine.messages import (
    MAX_QTY,
    Accepted,
    Amend,
    Amended,
    BookLevel,
    Cancel,
    Cancelled,
    CancelReason,
    Command,
    Event,
    ExpireOrders,
    Fill,
    MassCancel,
    NewOrder,
    OrderType,
    Rejected,
    RejectReason,
    SelfTradePrevention,
    Side,
    TimeInForce,
    Triggered,
)

STP = SelfTradePrevention


class _Order:
    """A live order: resting in a level, or a pending stop."""

    __slots__ = (
        "account",
        "display_qty",
        "expire_ts",
        "order_id",
        "order_type",
        "post_only",
        "price",
        "remaining",
        "shown",
        "side",
        "stop_price",
        "stp",
        "tif",
    )

    def __init__(self, cmd: NewOrder) -> None:
        self.order_id = cmd.order_id
        self.account = cmd.account
        self.side = cmd.side
        self.order_type = cmd.order_type
        self.price = cmd.price
        self.stop_price = cmd.stop_price
        self.remaining = cmd.qty
        self.shown = 0
        self.display_qty = cmd.display_qty
        self.tif = cmd.tif
        self.expire_ts = cmd.expire_ts
        self.stp = cmd.stp
        self.post_only = cmd.post_only

    def slice_size(self) -> int:
        """How much the order shows when it (re)enters a level."""
        if self.display_qty:
            return min(self.display_qty, self.remaining)
        return self.remaining


class PriceLevel:
    """The orders resting at one price, in time priority, and their total shown quantity."""

    __slots__ = ("orders", "qty")

    def __init__(self) -> None:
        self.orders: dict[int, _Order] = {}
        self.qty = 0


class ReferenceBook:
    """Price-time priority limit order book for one instrument (see `engine.book`)."""

    def __init__(self, min_price: int, max_price: int) -> None:
        if not 0 < min_price <= max_price:
            raise ValueError(f"bad price band [{min_price}, {max_price}]")
        self._min_price = min_price
        self._max_price = max_price
        self._bids: SortedDict = SortedDict()  # price -> PriceLevel; best is the last key
        self._asks: SortedDict = SortedDict()  # price -> PriceLevel; best is the first key
        self._orders: dict[int, _Order] = {}  # every live order, resting or pending stop
        self._stops: dict[int, _Order] = {}  # pending stops in entry order
        self._expiries: SortedList = SortedList()  # (expire_ts, order_id) of live GTD orders
        self._last_price = 0
        self._next_trade_id = 1
        self._traded = False  # a trade happened since the stops were last checked
        self._events: list[Event] = []

    # --- queries ------------------------------------------------------------------------------

    @property
    def min_price(self) -> int:
        """Bottom of the price band, in ticks."""
        return self._min_price

    @property
    def max_price(self) -> int:
        """Top of the price band, in ticks."""
        return self._max_price

    @property
    def last_price(self) -> int:
        """Price of the last trade, 0 before the first."""
        return self._last_price

    def best_bid(self) -> int | None:
        """Highest bid price, or None."""
        return self._bids.peekitem(-1)[0] if self._bids else None

    def best_ask(self) -> int | None:
        """Lowest ask price, or None."""
        return self._asks.peekitem(0)[0] if self._asks else None

    def depth(self, side: Side, levels: int) -> list[tuple[int, int]]:
        """Up to ``levels`` (price, shown quantity) pairs of ``side``, best first."""
        book = self._bids if side == Side.BUY else self._asks
        prices = reversed(book.keys()) if side == Side.BUY else iter(book.keys())
        out: list[tuple[int, int]] = []
        for price in prices:
            if len(out) == levels:
                break
            out.append((price, book[price].qty))
        return out

    def state(self) -> BookState:
        """Canonical state: resting orders best first per side, stops in entry order."""
        resting: list[RestingOrder] = []
        for side, book in ((Side.BUY, self._bids), (Side.SELL, self._asks)):
            prices = reversed(book.keys()) if side == Side.BUY else iter(book.keys())
            for price in prices:
                resting.extend(
                    (o.order_id, o.account, o.side, o.price, o.remaining, o.shown,
                     o.display_qty, o.tif, o.expire_ts, o.stp, o.post_only)
                    for o in book[price].orders.values()
                )
        stops: list[PendingStop] = [
            (o.order_id, o.account, o.side, o.order_type, o.price, o.stop_price, o.remaining,
             o.tif, o.expire_ts, o.stp)
            for o in self._stops.values()
        ]
        return BookState(resting, stops, self._last_price, self._next_trade_id)

    def restore(self, state: BookState) -> None:
        """Load ``state`` (as `state` returned it) into this empty book."""
        if self._orders:
            raise ValueError("a book can only be restored while empty")
        for (order_id, account, side, price, remaining, shown, display_qty, tif, expire_ts,
             stp, post_only) in state.resting:
            if self._check_price(price) is not None or order_id in self._orders:
                raise ValueError(f"bad resting order {order_id} in book state")
            order = _Order(NewOrder(0, order_id, account, Side(side), price, remaining,
                                    OrderType.LIMIT, TimeInForce(tif), post_only, display_qty,
                                    0, expire_ts, STP(stp)))
            order.shown = shown
            level = self._side(side).setdefault(price, PriceLevel())
            level.orders[order_id] = order
            level.qty += shown
            self._remember(order)
        for (order_id, account, side, order_type, price, stop_price, qty, tif, expire_ts,
             stp) in state.stops:
            if order_id in self._orders:
                raise ValueError(f"bad stop order {order_id} in book state")
            order = _Order(NewOrder(0, order_id, account, Side(side), price, qty,
                                    OrderType(order_type), TimeInForce(tif), False, 0,
                                    stop_price, expire_ts, STP(stp)))
            self._stops[order_id] = order
            self._remember(order)
        self._last_price = state.last_price
        self._next_trade_id = state.next_trade_id

    def _remember(self, order: _Order) -> None:
        self._orders[order.order_id] = order
        if order.tif == TimeInForce.GTD:
            self._expiries.add((order.expire_ts, order.order_id))

    # --- commands -----------------------------------------------------------------------------

    def apply(self, command: Command) -> list[Event]:
        """Process one sequenced command; return its events in order."""
        events: list[Event] = []
        self._events = events
        self._expire(command.ts)
        if isinstance(command, NewOrder):
            self._new_order(command)
        elif isinstance(command, Amend):
            self._amend(command)
        elif isinstance(command, Cancel):
            self._cancel(command)
        elif isinstance(command, MassCancel):
            self._mass_cancel(command)
        else:
            assert isinstance(command, ExpireOrders)
        self._trigger_stops()
        return events

    def _new_order(self, cmd: NewOrder) -> None:
        reason = self._validate(cmd)
        if reason is not None:
            self._events.append(Rejected(cmd.order_id, cmd.account, reason))
            return
        order = _Order(cmd)
        self._remember(order)
        self._events.append(
            Accepted(cmd.order_id, cmd.account, cmd.side, cmd.order_type, cmd.price, cmd.qty)
        )
        if order.order_type in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET):
            if self._stop_reached(order):
                self._events.append(Triggered(order.order_id, order.account, order.stop_price))
            else:
                self._stops[order.order_id] = order
                return
        self._execute(order)

    def _validate(self, cmd: NewOrder) -> RejectReason | None:
        if cmd.order_id <= 0:
            return RejectReason.INVALID_ORDER
        if cmd.order_id in self._orders:
            return RejectReason.DUPLICATE_ORDER_ID
        if not 0 < cmd.qty <= MAX_QTY or not 0 <= cmd.display_qty <= cmd.qty:
            return RejectReason.INVALID_QUANTITY
        is_market = cmd.order_type in (OrderType.MARKET, OrderType.STOP_MARKET)
        is_stop = cmd.order_type in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET)
        rests = cmd.tif in (TimeInForce.GTC, TimeInForce.GTD)
        if is_market and rests:
            return RejectReason.INVALID_ORDER
        if (cmd.post_only or cmd.display_qty) and (is_stop or is_market or not rests):
            return RejectReason.INVALID_ORDER
        if (cmd.tif == TimeInForce.GTD) != (cmd.expire_ts != 0):
            return RejectReason.INVALID_ORDER
        if not is_market:
            reason = self._check_price(cmd.price)
            if reason is not None:
                return reason
        if is_stop:
            reason = self._check_price(cmd.stop_price)
            if reason is not None:
                return reason
        if cmd.tif == TimeInForce.GTD and cmd.expire_ts < cmd.ts:
            return RejectReason.INVALID_EXPIRY
        return None

    def _check_price(self, price: int) -> RejectReason | None:
        if price <= 0:
            return RejectReason.INVALID_PRICE
        if not self._min_price <= price <= self._max_price:
            return RejectReason.PRICE_OUT_OF_BAND
        return None

    def _amend(self, cmd: Amend) -> None:
        order = self._orders.get(cmd.order_id)
        reason = self._amend_refusal(order, cmd)
        if reason is not None:
            self._events.append(Rejected(cmd.order_id, cmd.account, reason))
            return
        assert order is not None
        if cmd.price == order.price and cmd.qty <= order.remaining:
            level = self._side(order.side)[order.price]
            shown = min(order.shown, cmd.qty)
            order.remaining = cmd.qty
            self._events.append(Amended(order.order_id, order.account, order.price, cmd.qty))
            if shown != order.shown:
                level.qty -= order.shown - shown
                order.shown = shown
                self._events.append(BookLevel(order.side, order.price, level.qty))
            return
        self._events.append(Amended(order.order_id, order.account, cmd.price, cmd.qty))
        self._unlink(order)
        order.price = cmd.price
        order.remaining = cmd.qty
        self._execute(order)

    def _amend_refusal(self, order: _Order | None, cmd: Amend) -> RejectReason | None:
        if order is None or order.account != cmd.account:
            return RejectReason.UNKNOWN_ORDER
        if order.order_id in self._stops:
            return RejectReason.NOT_AMENDABLE
        if not 0 < cmd.qty <= MAX_QTY:
            return RejectReason.INVALID_QUANTITY
        reason = self._check_price(cmd.price)
        if reason is None and order.post_only and self._crosses(order.side, cmd.price):
            return RejectReason.WOULD_CROSS
        return reason

    def _cancel(self, cmd: Cancel) -> None:
        order = self._orders.get(cmd.order_id)
        if order is None or order.account != cmd.account:
            self._events.append(Rejected(cmd.order_id, cmd.account, RejectReason.UNKNOWN_ORDER))
            return
        self._drop(order, CancelReason.USER)

    def _mass_cancel(self, cmd: MassCancel) -> None:
        targets = sorted(
            order_id
            for order_id, order in self._orders.items()
            if order.account == cmd.account and (cmd.side is None or order.side == cmd.side)
        )
        for order_id in targets:
            self._drop(self._orders[order_id], CancelReason.MASS_CANCEL)

    def _expire(self, ts: int) -> None:
        while self._expiries and self._expiries[0][0] < ts:
            _, order_id = self._expiries[0]
            self._drop(self._orders[order_id], CancelReason.EXPIRED)

    # --- matching -----------------------------------------------------------------------------

    def _execute(self, order: _Order) -> None:
        """Match an incoming (or re-entering) order, then rest or cancel what is left."""
        is_market = order.order_type in (OrderType.MARKET, OrderType.STOP_MARKET)
        if is_market:
            limit = self._max_price if order.side == Side.BUY else self._min_price
        else:
            limit = order.price
        if order.tif == TimeInForce.FOK and not self._fok_fillable(order, limit):
            self._forget(order, CancelReason.FOK, order.remaining)
            return
        if order.post_only and self._crosses(order.side, limit):
            self._forget(order, CancelReason.POST_ONLY, order.remaining)
            return
        stopped = self._match(order, limit)
        if stopped or order.remaining == 0:
            return
        if order.tif in (TimeInForce.IOC, TimeInForce.FOK):
            self._forget(order, CancelReason.IOC_REMAINDER, order.remaining)
            return
        order.shown = order.slice_size()
        level = self._side(order.side).setdefault(order.price, PriceLevel())
        level.orders[order.order_id] = order
        level.qty += order.shown
        self._events.append(BookLevel(order.side, order.price, level.qty))

    def _match(self, taker: _Order, limit: int) -> bool:
        """Trade ``taker`` against the opposite side up to ``limit``.

        Returns True when self-trade prevention cancelled the rest of the taker.
        """
        book = self._side(Side.SELL if taker.side == Side.BUY else Side.BUY)
        events = self._events
        while taker.remaining and book:
            price, level = book.peekitem(0 if taker.side == Side.BUY else -1)
            if (price > limit) if taker.side == Side.BUY else (price < limit):
                break
            qty_before = level.qty
            stopped = False
            while taker.remaining and level.orders:
                maker = next(iter(level.orders.values()))
                if maker.account == taker.account:
                    mode = taker.stp
                    if mode in (STP.CANCEL_OLDEST, STP.CANCEL_BOTH):
                        self._remove_resting(maker, level)
                        events.append(
                            Cancelled(maker.order_id, maker.account, CancelReason.STP,
                                      maker.remaining, 0)
                        )
                    if mode in (STP.CANCEL_NEWEST, STP.CANCEL_BOTH):
                        self._forget(taker, CancelReason.STP, taker.remaining)
                        taker.remaining = 0
                        stopped = True
                        break
                    if mode == STP.DECREMENT:
                        qty = min(taker.remaining, maker.shown)
                        self._take(maker, level, qty)
                        taker.remaining -= qty
                        events.append(
                            Cancelled(maker.order_id, maker.account, CancelReason.STP, qty,
                                      maker.remaining)
                        )
                        events.append(
                            Cancelled(taker.order_id, taker.account, CancelReason.STP, qty,
                                      taker.remaining)
                        )
                        if taker.remaining == 0:
                            del self._orders[taker.order_id]
                            self._discard_expiry(taker)
                    continue
                qty = min(taker.remaining, maker.shown)
                self._take(maker, level, qty)
                taker.remaining -= qty
                events.append(
                    Fill(self._next_trade_id, price, qty, taker.side, maker.order_id,
                         taker.order_id, maker.account, taker.account, maker.remaining,
                         taker.remaining)
                )
                self._next_trade_id += 1
                self._last_price = price
                self._traded = True
                if taker.remaining == 0:
                    del self._orders[taker.order_id]
                    self._discard_expiry(taker)
            if level.qty != qty_before:
                events.append(BookLevel(Side(1 - taker.side), price, level.qty))
            if not level.orders:
                del book[price]
            if stopped:
                return True
        return False

    def _take(self, maker: _Order, level: PriceLevel, qty: int) -> None:
        """Take ``qty`` off a maker's shown slice; refresh an iceberg or remove the order."""
        maker.shown -= qty
        maker.remaining -= qty
        level.qty -= qty
        if maker.shown:
            return
        if maker.remaining:
            maker.shown = maker.slice_size()
            del level.orders[maker.order_id]
            level.orders[maker.order_id] = maker
            level.qty += maker.shown
        else:
            del level.orders[maker.order_id]
            del self._orders[maker.order_id]
            self._discard_expiry(maker)

    def _fok_fillable(self, taker: _Order, limit: int) -> bool:
        book = self._side(Side.SELL if taker.side == Side.BUY else Side.BUY)
        prices = iter(book.keys()) if taker.side == Side.BUY else reversed(book.keys())
        available = 0
        for price in prices:
            if (price > limit) if taker.side == Side.BUY else (price < limit):
                break
            for maker in book[price].orders.values():
                if maker.account == taker.account:
                    return False
                available += maker.remaining
            if available >= taker.remaining:
                return True
        return False

    def _crosses(self, side: Side, price: int) -> bool:
        if side == Side.BUY:
            best = self.best_ask()
            return best is not None and best <= price
        best = self.best_bid()
        return best is not None and best >= price

    # --- stops --------------------------------------------------------------------------------

    def _stop_reached(self, order: _Order) -> bool:
        if not self._last_price:
            return False
        if order.side == Side.BUY:
            return self._last_price >= order.stop_price
        return self._last_price <= order.stop_price

    def _trigger_stops(self) -> None:
        while self._traded:
            self._traded = False
            for order in self._stops.values():
                if self._stop_reached(order):
                    del self._stops[order.order_id]
                    self._events.append(
                        Triggered(order.order_id, order.account, order.stop_price)
                    )
                    self._execute(order)
                    self._traded = True  # look again from the oldest stop
                    break

    # --- removal ------------------------------------------------------------------------------

    def _side(self, side: Side | int) -> SortedDict:
        return self._bids if side == Side.BUY else self._asks

    def _unlink(self, order: _Order) -> None:
        """Take a resting order out of its level (it stays live) and report the level."""
        book = self._side(order.side)
        level = book[order.price]
        del level.orders[order.order_id]
        level.qty -= order.shown
        if not level.orders:
            del book[order.price]
        self._events.append(BookLevel(order.side, order.price, level.qty))

    def _remove_resting(self, order: _Order, level: PriceLevel) -> None:
        """Remove a resting order while its level is being matched (caller reports the level)."""
        del level.orders[order.order_id]
        level.qty -= order.shown
        del self._orders[order.order_id]
        self._discard_expiry(order)

    def _drop(self, order: _Order, reason: CancelReason) -> None:
        """Cancel a live order whole, wherever it is."""
        resting = self._stops.pop(order.order_id, None) is None
        self._forget(order, reason, order.remaining)
        if resting:
            self._unlink(order)

    def _forget(self, order: _Order, reason: CancelReason, qty: int) -> None:
        del self._orders[order.order_id]
        self._discard_expiry(order)
        self._events.append(Cancelled(order.order_id, order.account, reason, qty, 0))

    def _discard_expiry(self, order: _Order) -> None:
        if order.tif == TimeInForce.GTD:
            self._expiries.discard((order.expire_ts, order.order_id))
