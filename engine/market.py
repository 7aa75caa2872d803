"""One instrument as the exchange trades it: its book, trading state and positions."""

from __future__ import annotations

import calendar
from collections.abc import Callable

import msgspec

from engine.book import OrderBook
from engine.commands import PlaceOrder
from engine.instruments import Instrument, InstrumentKind
from engine.messages import Side
from engine.positions import Position
from engine.risk import fee, held, spot_buy_lock

BookFactory = Callable[[int, int], OrderBook]
NS = 1_000_000_000


class LiveOrder(msgspec.Struct, array_like=True):
    """An order the exchange holds collateral for."""

    order_id: int
    account: str
    symbol: str
    side: Side
    limit: int  # the price its lock is computed on
    remaining: int
    lock: int  # micro-USDC in the account's reserved bucket for this order
    placed: PlaceOrder | None = None  # the command that entered it (for order status views)
    filled: int = 0  # lots traded so far


class Market:
    """One instrument: its book and its trading state."""

    def __init__(self, instrument: Instrument, book_factory: BookFactory) -> None:
        self.instrument = instrument
        self.symbol = instrument.symbol
        self.spot = instrument.kind == InstrumentKind.SPOT
        self.min_price, self.max_price = instrument.min_price_ticks, instrument.max_price_ticks
        self.book = book_factory(self.min_price, self.max_price)
        self.tick_value = instrument.micro_usdc_per_tick_lot
        self.window_ns = instrument.delivery_window_seconds * NS
        self.mark = instrument.reference_price_ticks
        self.halted = False
        self.settled = False
        self.positions: dict[str, Position] = {}
        expiry = instrument.expiry
        self.last_trade_ns = expiry.last_trade_ns if expiry else 0
        if expiry:
            year, month = (expiry.year + 1, 1) if expiry.month == 12 else \
                (expiry.year, expiry.month + 1)
            self.month_end_ns = calendar.timegm((year, month, 1, 0, 0, 0)) * NS
        else:
            self.month_end_ns = 0

    def order_lock(self, side: Side, limit: int, qty: int) -> int:
        """What an order of ``qty`` lots at ``limit`` holds in reserved besides margin."""
        spec = self.instrument
        if not self.spot:
            # a sell may trade above its limit, up to the top of the band
            worst = limit if side == Side.BUY else self.max_price
            return fee(worst * qty * self.tick_value, spec.taker_fee_bp)
        notional = limit * qty * self.tick_value
        if side == Side.BUY:
            return spot_buy_lock(notional, spec.buyer_premium_lock_bp, spec.taker_fee_bp)
        return held(notional, spec.seller_bond_bp)

    def initial_margin(self, lots: int) -> int:
        """Initial margin on ``lots`` at the mark."""
        return held(lots * self.mark * self.tick_value, self.instrument.initial_margin_bp)

    def maintenance_margin(self, lots: int) -> int:
        """Maintenance margin on ``lots`` at the mark."""
        return held(lots * self.mark * self.tick_value, self.instrument.maintenance_margin_bp)

    def to_ticks(self, micro: int, count: int = 1) -> int:
        """The mean ``micro / count`` (micro-USDC per unit) rounded half up to a tick.

        A tick is ``tick_units * 10**-price_precision`` USDC, so the mean in ticks is
        ``micro * 10**precision / (count * tick_units * 10**6)``, rounded exactly.
        """
        spec = self.instrument
        numerator = micro * 10**spec.price_precision
        denominator = count * spec.tick_units * 10**6
        return int((2 * numerator + denominator) // (2 * denominator))
