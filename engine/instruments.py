"""The instrument registry: what CMX lists, and exact conversions between its numbers.

Products are data: ``engine/data/instruments.toml`` (shipped with the package) holds one
*template* per product, and the registry lists instruments from it for a given listing date:
each spot product once (``GPU.H100.SPOT``) and each futures product as consecutive monthly
contracts (``GPU.H100.F2701`` = January 2027).

Inside the engine every number is an integer: prices in ticks, quantities in lots, money in
micro-USDC. Decimal strings exist only at the edges, and :class:`Instrument` converts between
the two exactly; a value that does not land on the grid is rejected, never rounded.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Final, NamedTuple

import msgspec

MICRO_USDC_PER_USDC: Final = 1_000_000
BP_PER_UNIT: Final = 10_000
INT64_MAX: Final = 2**63 - 1
NS_PER_SECOND: Final = 1_000_000_000
# Prices and quantities are int64 in the core; no edge value needs more than 18 decimals.
MAX_PRECISION: Final = 18

UNSIGNED_DECIMAL = r"[0-9]+(?:\.[0-9]+)?"
_DECIMAL_TEXT = re.compile(rf"[+-]?{UNSIGNED_DECIMAL}")
UNDERLYING_PATTERN = r"[A-Z][A-Z0-9]*\.[A-Z][A-Z0-9]*"
_SYMBOL = re.compile(
    rf"(?P<underlying>{UNDERLYING_PATTERN})\.(?:SPOT|F(?P<yy>[0-9]{{2}})(?P<mm>[0-9]{{2}}))"
)


class InstrumentErrorCode(StrEnum):
    """Why an instrument lookup, conversion or listing was refused."""

    UNKNOWN_SYMBOL = "UNKNOWN_SYMBOL"
    INVALID_SYMBOL = "INVALID_SYMBOL"
    UNKNOWN_PRODUCT = "UNKNOWN_PRODUCT"
    ALREADY_LISTED = "ALREADY_LISTED"
    INVALID_PRICE = "INVALID_PRICE"
    OFF_TICK = "OFF_TICK"
    PRICE_OUT_OF_BAND = "PRICE_OUT_OF_BAND"
    INVALID_QUANTITY = "INVALID_QUANTITY"
    NON_POSITIVE_QUANTITY = "NON_POSITIVE_QUANTITY"
    OFF_LOT = "OFF_LOT"
    INVALID_SPEC = "INVALID_SPEC"


class InstrumentError(ValueError):
    """A refused instrument operation; ``code`` says why, the message names symbol and value."""

    def __init__(self, code: InstrumentErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class InstrumentKind(StrEnum):
    """Spot products deliver physically in the next window; futures settle monthly in cash."""

    SPOT = "spot"
    FUTURE = "future"


class Settlement(StrEnum):
    """How a product settles."""

    PHYSICAL = "physical"
    CASH_INDEX_MEAN = "cash_index_mean"


class LastTradeRule(StrEnum):
    """When a monthly future stops trading: 00:00 UTC on the named day of its month.

    ``LAST_BUSINESS_DAY`` is the last Monday-Friday; exchange holidays are not modelled.
    """

    LAST_UTC_DAY = "last_utc_day"
    LAST_BUSINESS_DAY = "last_business_day"


def hours_in_month(year: int, month: int) -> int:
    """Hours in a calendar month in UTC (no DST): 744 for January, 696 for February 2028."""
    return calendar.monthrange(year, month)[1] * 24


def last_trade_date(rule: LastTradeRule, year: int, month: int) -> date:
    """The UTC day at whose 00:00 a future for ``year``/``month`` stops trading."""
    day = date(year, month, calendar.monthrange(year, month)[1])
    if rule is LastTradeRule.LAST_BUSINESS_DAY:
        day -= timedelta(days=max(0, day.weekday() - 4))  # Saturday -> Friday, Sunday -> Friday
    return day


def utc_today() -> date:
    """Today's UTC date from the wall clock, the default listing date for CLI callers.

    The engine itself never calls this: its registry is built from an explicit date.
    """
    return datetime.now(UTC).date()


def spot_symbol(underlying: str) -> str:
    """``GPU.H100`` -> ``GPU.H100.SPOT``."""
    return f"{underlying}.SPOT"


def future_symbol(underlying: str, year: int, month: int) -> str:
    """``GPU.H100``, 2027, 1 -> ``GPU.H100.F2701``; the tenor is ``F`` + YYMM."""
    _check_tenor(underlying, year, month)
    return f"{underlying}.F{year % 100:02d}{month:02d}"


def parse_symbol(symbol: str) -> tuple[str, tuple[int, int] | None]:
    """Split a symbol into its underlying and, for a future, its (year, month).

    ``GPU.H100.SPOT`` -> ``("GPU.H100", None)``; ``RACK.KW.F2702`` -> ``("RACK.KW", (2027, 2))``.
    Two-digit years are 2000-2099. Raises :class:`InstrumentError` (``INVALID_SYMBOL``).
    """
    match = _SYMBOL.fullmatch(symbol)
    if match is None:
        raise InstrumentError(
            InstrumentErrorCode.INVALID_SYMBOL,
            f"{symbol!r} is not a symbol of the form <UNDERLYING>.<CLASS>.SPOT or .F<YYMM>",
        )
    if match["yy"] is None:
        return match["underlying"], None
    year, month = 2000 + int(match["yy"]), int(match["mm"])
    _check_tenor(symbol, year, month)
    return match["underlying"], (year, month)


def _check_tenor(name: str, year: int, month: int) -> None:
    if not (2000 <= year <= 2099 and 1 <= month <= 12):
        raise InstrumentError(
            InstrumentErrorCode.INVALID_SYMBOL,
            f"{name}: {year}-{month:02d} is not a month that F<YYMM> can name",
        )


class FutureExpiry(msgspec.Struct, frozen=True, kw_only=True):
    """The delivery month of a future and when it stops trading."""

    year: int
    month: int
    last_trade_ns: int
    """00:00 UTC of the last trading day, in nanoseconds since the Unix epoch."""
    hours_in_month: int

    @classmethod
    def for_month(cls, rule: LastTradeRule, year: int, month: int) -> FutureExpiry:
        """The expiry of the ``year``/``month`` contract under ``rule``."""
        last_day = last_trade_date(rule, year, month)
        return cls(
            year=year,
            month=month,
            last_trade_ns=calendar.timegm(last_day.timetuple()) * NS_PER_SECOND,
            hours_in_month=hours_in_month(year, month),
        )


class _Grid(NamedTuple):
    """How one kind of edge number (price or quantity) is named and refused."""

    noun: str
    step: str
    steps: str
    invalid: InstrumentErrorCode
    non_positive: InstrumentErrorCode
    off_grid: InstrumentErrorCode


_PRICE = _Grid(
    "price",
    "tick",
    "ticks",
    InstrumentErrorCode.INVALID_PRICE,
    InstrumentErrorCode.INVALID_PRICE,
    InstrumentErrorCode.OFF_TICK,
)
_QUANTITY = _Grid(
    "quantity",
    "lot size",
    "lots",
    InstrumentErrorCode.INVALID_QUANTITY,
    InstrumentErrorCode.NON_POSITIVE_QUANTITY,
    InstrumentErrorCode.OFF_LOT,
)


def _parse_decimal(text: str | Decimal) -> Decimal | None:
    """A finite Decimal, or None. Text must be plain digits with an optional sign and point:
    no exponent, whitespace, underscores, NaN or Infinity."""
    if isinstance(text, Decimal):
        return text if text.is_finite() else None
    if isinstance(text, str) and _DECIMAL_TEXT.fullmatch(text):
        return Decimal(text)
    return None


def decimal_places(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def scaled(value: Decimal, places: int) -> int | None:
    """``value * 10**places`` when that is an integer, else None. ``value`` is finite and the
    caller has bounded its exponent, so nothing here grows large."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int), "finite by contract"
    coefficient = int("".join(map(str, digits)))
    if coefficient == 0:
        return 0
    shift = exponent + places
    if -shift > len(digits):  # more zeros needed than there are digits: cannot divide exactly
        return None
    scale: int = 10 ** abs(shift)
    if shift >= 0:
        scaled = coefficient * scale
    else:
        scaled, remainder = divmod(coefficient, scale)
        if remainder:
            return None
    return -scaled if sign else scaled


def _format_units(units: int, places: int) -> str:
    """An integer count of ``10**-places`` as a decimal string with exactly ``places`` places."""
    if places == 0:
        return str(units)
    whole, fraction = divmod(units, 10**places)
    return f"{whole}.{fraction:0{places}d}"


def _to_steps(symbol: str, grid: _Grid, text: str | Decimal, step_units: int, places: int) -> int:
    value = _parse_decimal(text)
    if value is None:
        raise InstrumentError(
            grid.invalid,
            f"{symbol}: {grid.noun} {text!r} is not a plain decimal string or finite Decimal",
        )
    if value <= 0:
        raise InstrumentError(grid.non_positive, f"{symbol}: {grid.noun} {text} is not positive")
    steps = None
    # INT64_MAX steps is below 10**(19 + digits of step_units - places); checking the exponent
    # first refuses larger values without doing arithmetic on (possibly huge) numbers.
    if value.adjusted() < 19 + len(str(step_units)) - places:
        units = scaled(value, places)
        if units is None or units % step_units:
            step = _format_units(step_units, places)
            raise InstrumentError(
                grid.off_grid,
                f"{symbol}: {grid.noun} {text} is not a multiple of the {grid.step} {step}",
            )
        steps = units // step_units
    if steps is None or steps > INT64_MAX:
        raise InstrumentError(grid.invalid, f"{symbol}: {grid.noun} {text} is too large")
    return steps


def _check_steps(symbol: str, grid: _Grid, steps: int) -> None:
    """Refuse anything but a positive int64 count of ticks or lots."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps > INT64_MAX:
        raise InstrumentError(grid.invalid, f"{symbol}: {steps!r} {grid.steps} is not an int64")
    if steps <= 0:
        raise InstrumentError(grid.non_positive, f"{symbol}: {steps} {grid.steps} is not positive")


def _from_steps(symbol: str, grid: _Grid, steps: int, step_units: int, places: int) -> str:
    _check_steps(symbol, grid, steps)
    return _format_units(steps * step_units, places)


class Instrument(msgspec.Struct, frozen=True, kw_only=True):
    """One tradable instrument, with integer specs and exact conversions at the edges.

    The tick is ``tick_units * 10**-price_precision`` and one lot is
    ``lot_units * 10**-size_precision`` of ``quantity_unit``. A position of ``lots`` at
    ``price_ticks`` is worth ``price * lot size * multiplier`` USDC, which is always a whole
    number of micro-USDC: construction refuses specs where it would not be, so nothing rounds.
    Basis-point fields not used by a kind (margin for spot, premium and bond for futures) are 0.
    """

    instrument_id: int
    """Small stable integer, 1-based in listing order."""
    symbol: str
    underlying: str
    kind: InstrumentKind
    settlement: Settlement
    description: str
    quantity_unit: str
    price_unit: str
    quote_currency: str
    tick_units: int
    price_precision: int
    lot_units: int
    size_precision: int
    multiplier: int
    reference_price_ticks: int
    """Centre of the price band: the spot reference, or a future's last settlement."""
    price_band_bp: int
    initial_margin_bp: int
    maintenance_margin_bp: int
    buyer_premium_lock_bp: int
    seller_bond_bp: int
    maker_fee_bp: int
    taker_fee_bp: int
    delivery_window_seconds: int
    """Length of a spot delivery window (the next whole UTC hour or day); 0 for futures."""
    expiry: FutureExpiry | None
    """Delivery month and last trade of a future; None for spot."""

    def __post_init__(self) -> None:
        """Refuse specs under which conversions or notional values could not be exact."""
        if not (
            self.tick_units > 0
            and self.lot_units > 0
            and self.multiplier > 0
            and 0 <= self.price_precision <= MAX_PRECISION
            and 0 <= self.size_precision <= MAX_PRECISION
            and self._tick_lot_value()[1] == 0
            and 0 < self.reference_price_ticks <= INT64_MAX
        ):
            raise InstrumentError(
                InstrumentErrorCode.INVALID_SPEC,
                f"{self.symbol}: tick, lot size, multiplier and reference price must be "
                "positive, precisions 0..18, and one tick on one lot must be worth a whole "
                "number of micro-USDC",
            )

    def _tick_lot_value(self) -> tuple[int, int]:
        """Micro-USDC value of one tick on one lot, as (whole part, remainder)."""
        numerator = self.tick_units * self.lot_units * self.multiplier * MICRO_USDC_PER_USDC
        scale: int = 10 ** (self.price_precision + self.size_precision)
        return divmod(numerator, scale)

    @property
    def tick(self) -> Decimal:
        """The price increment, e.g. ``Decimal('0.005')``."""
        return Decimal(self.tick_units).scaleb(-self.price_precision)

    @property
    def lot_size(self) -> Decimal:
        """Units of ``quantity_unit`` in one lot, e.g. ``Decimal('100')`` kW."""
        return Decimal(self.lot_units).scaleb(-self.size_precision)

    @property
    def micro_usdc_per_tick_lot(self) -> int:
        """Value in micro-USDC of one tick on one lot: PnL = ticks moved * lots * this."""
        return self._tick_lot_value()[0]

    def price_to_ticks(self, text: str | Decimal) -> int:
        """``"2.135"`` -> 2135 ticks of 0.001. Exact: off-tick prices are refused, not rounded.

        Raises :class:`InstrumentError`: ``INVALID_PRICE`` for text that is not a plain
        decimal (floats, exponents, NaN, Infinity), zero, negative or beyond int64 ticks;
        ``OFF_TICK`` for a price that is not a whole number of ticks.
        """
        return _to_steps(self.symbol, _PRICE, text, self.tick_units, self.price_precision)

    def ticks_to_price(self, ticks: int) -> str:
        """2135 ticks -> ``"2.135"``, always with ``price_precision`` decimal places."""
        return _from_steps(self.symbol, _PRICE, ticks, self.tick_units, self.price_precision)

    def qty_to_lots(self, text: str | Decimal) -> int:
        """``"300"`` kW -> 3 lots of 100 kW. Exact: off-lot quantities are refused.

        Raises :class:`InstrumentError`: ``INVALID_QUANTITY`` for text that is not a plain
        decimal or beyond int64 lots, ``NON_POSITIVE_QUANTITY`` for zero or negative,
        ``OFF_LOT`` for a quantity that is not a whole number of lots.
        """
        return _to_steps(self.symbol, _QUANTITY, text, self.lot_units, self.size_precision)

    def lots_to_qty(self, lots: int) -> str:
        """3 lots -> ``"300"`` (in ``quantity_unit``), with ``size_precision`` decimal places."""
        return _from_steps(self.symbol, _QUANTITY, lots, self.lot_units, self.size_precision)

    def notional_micro_usdc(self, price_ticks: int, lots: int) -> int:
        """Contract value ``price * lot size * multiplier`` in micro-USDC, exactly.

        No rounding policy is needed: every instrument's tick-lot value is a whole number of
        micro-USDC. Both arguments must be positive (``INVALID_PRICE``,
        ``NON_POSITIVE_QUANTITY``); signed PnL uses :attr:`micro_usdc_per_tick_lot`.
        """
        _check_steps(self.symbol, _PRICE, price_ticks)
        _check_steps(self.symbol, _QUANTITY, lots)
        return price_ticks * lots * self.micro_usdc_per_tick_lot

    def price_band(self, reference_ticks: int | None = None) -> tuple[int, int]:
        """``(min, max)`` ticks allowed around ``reference_ticks`` (default: the reference price).

        The bounds are rounded inwards (min up, max down), so the band never exceeds
        ``±price_band_bp`` of the reference, and min is at least one tick.
        """
        reference = self.reference_price_ticks if reference_ticks is None else reference_ticks
        _check_steps(self.symbol, _PRICE, reference)
        low = -(-reference * (BP_PER_UNIT - self.price_band_bp) // BP_PER_UNIT)
        high = reference * (BP_PER_UNIT + self.price_band_bp) // BP_PER_UNIT
        return max(low, 1), high

    @property
    def min_price_ticks(self) -> int:
        """Lowest price in the band around the reference price."""
        return self.price_band()[0]

    @property
    def max_price_ticks(self) -> int:
        """Highest price in the band around the reference price."""
        return self.price_band()[1]

    def check_price_in_band(self, price_ticks: int, reference_ticks: int | None = None) -> None:
        """Raise ``PRICE_OUT_OF_BAND`` if ``price_ticks`` is outside :meth:`price_band`."""
        _check_steps(self.symbol, _PRICE, price_ticks)
        low, high = self.price_band(reference_ticks)
        if not low <= price_ticks <= high:
            raise InstrumentError(
                InstrumentErrorCode.PRICE_OUT_OF_BAND,
                f"{self.symbol}: price {self.ticks_to_price(price_ticks)} is outside the band "
                f"{self.ticks_to_price(low)}..{self.ticks_to_price(high)}",
            )
