"""The registry: the products of ``engine/data/instruments.toml`` listed as instruments.

One template per product in the data file; `Registry.load` lists each spot product once and
each futures product as consecutive monthly contracts from a listing date.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from engine.instruments import (
    BP_PER_UNIT,
    MAX_PRECISION,
    UNDERLYING_PATTERN,
    UNSIGNED_DECIMAL,
    FutureExpiry,
    Instrument,
    InstrumentError,
    InstrumentErrorCode,
    InstrumentKind,
    LastTradeRule,
    Settlement,
    decimal_places,
    future_symbol,
    last_trade_date,
    scaled,
    spot_symbol,
)

_DecimalText = Annotated[str, msgspec.Meta(pattern=f"^{UNSIGNED_DECIMAL}$")]
_Precision = Annotated[int, msgspec.Meta(ge=0, le=MAX_PRECISION)]
_Bp = Annotated[int, msgspec.Meta(ge=0, le=BP_PER_UNIT)]
_Positive = Annotated[int, msgspec.Meta(gt=0)]


class _ProductSpec(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"
):
    """Fields every product template in the data file has."""

    underlying: Annotated[str, msgspec.Meta(pattern=f"^{UNDERLYING_PATTERN}$")]
    description: str
    quantity_unit: str
    price_unit: str
    quote_currency: Literal["USDC"]  # money is micro-USDC throughout
    tick: _DecimalText
    lot_size: _DecimalText
    price_precision: _Precision
    size_precision: _Precision
    price_band_bp: Annotated[int, msgspec.Meta(gt=0, le=BP_PER_UNIT)]
    reference_price: _DecimalText
    maker_fee_bp: _Bp
    taker_fee_bp: _Bp

    def _name(self) -> str:
        return f"{self.underlying} {type(self).__struct_config__.tag}"

    def _units(self, field: str, text: str, places: int) -> int:
        """A decimal field as an integer count of ``10**-places``; it must have exactly
        ``places`` decimal places, which is what makes the precision that of the tick/lot."""
        value = Decimal(text)
        units = scaled(value, places)
        if units is None or decimal_places(value) != places:
            raise InstrumentError(
                InstrumentErrorCode.INVALID_SPEC,
                f"{self._name()}: {field} {text} must have exactly {places} decimal places",
            )
        return units

    def _instrument(
        self,
        *,
        instrument_id: int,
        symbol: str,
        kind: InstrumentKind,
        settlement: Settlement,
        multiplier: int,
        expiry: FutureExpiry | None = None,
        delivery_window_seconds: int = 0,
        buyer_premium_lock_bp: int = 0,
        seller_bond_bp: int = 0,
        initial_margin_bp: int = 0,
        maintenance_margin_bp: int = 0,
    ) -> Instrument:
        tick_units = self._units("tick", self.tick, self.price_precision)
        reference_units = scaled(Decimal(self.reference_price), self.price_precision)
        if reference_units is None or reference_units % tick_units:
            raise InstrumentError(
                InstrumentErrorCode.INVALID_SPEC,
                f"{self._name()}: reference price {self.reference_price} is not on the tick "
                f"{self.tick}",
            )
        return Instrument(
            instrument_id=instrument_id,
            symbol=symbol,
            underlying=self.underlying,
            kind=kind,
            settlement=settlement,
            description=self.description,
            quantity_unit=self.quantity_unit,
            price_unit=self.price_unit,
            quote_currency=self.quote_currency,
            tick_units=tick_units,
            price_precision=self.price_precision,
            lot_units=self._units("lot_size", self.lot_size, self.size_precision),
            size_precision=self.size_precision,
            multiplier=multiplier,
            reference_price_ticks=reference_units // tick_units,
            price_band_bp=self.price_band_bp,
            initial_margin_bp=initial_margin_bp,
            maintenance_margin_bp=maintenance_margin_bp,
            buyer_premium_lock_bp=buyer_premium_lock_bp,
            seller_bond_bp=seller_bond_bp,
            maker_fee_bp=self.maker_fee_bp,
            taker_fee_bp=self.taker_fee_bp,
            delivery_window_seconds=delivery_window_seconds,
            expiry=expiry,
        )


class _SpotSpec(_ProductSpec, frozen=True, kw_only=True, tag="spot"):
    """A continuous product delivering physically in the next window."""

    settlement: Literal["physical"]
    multiplier: _Positive
    buyer_premium_lock_bp: _Bp
    seller_bond_bp: _Bp
    delivery_window_seconds: _Positive

    def instrument(self, instrument_id: int) -> Instrument:
        """The one instrument of this product."""
        return self._instrument(
            instrument_id=instrument_id,
            symbol=spot_symbol(self.underlying),
            kind=InstrumentKind.SPOT,
            settlement=Settlement(self.settlement),
            multiplier=self.multiplier,
            delivery_window_seconds=self.delivery_window_seconds,
            buyer_premium_lock_bp=self.buyer_premium_lock_bp,
            seller_bond_bp=self.seller_bond_bp,
        )


class _FutureSpec(_ProductSpec, frozen=True, kw_only=True, tag="future"):
    """A monthly cash-settled future, listed as ``listed_months`` consecutive contracts."""

    settlement: Literal["cash_index_mean"]
    multiplier: _Positive | Literal["hours_in_month"]
    initial_margin_bp: Annotated[int, msgspec.Meta(gt=0, le=BP_PER_UNIT)]
    maintenance_margin_bp: Annotated[int, msgspec.Meta(gt=0, le=BP_PER_UNIT)]
    listed_months: _Positive
    last_trade: LastTradeRule

    def __post_init__(self) -> None:
        """Refuse a maintenance margin above the initial margin."""
        if self.maintenance_margin_bp > self.initial_margin_bp:
            raise ValueError(f"{self._name()}: maintenance_margin_bp exceeds initial_margin_bp")

    def instrument(self, instrument_id: int, year: int, month: int) -> Instrument:
        """The contract for delivery month ``year``/``month``."""
        expiry = FutureExpiry.for_month(self.last_trade, year, month)
        return self._instrument(
            instrument_id=instrument_id,
            symbol=future_symbol(self.underlying, year, month),
            kind=InstrumentKind.FUTURE,
            settlement=Settlement(self.settlement),
            multiplier=(
                expiry.hours_in_month if self.multiplier == "hours_in_month" else self.multiplier
            ),
            expiry=expiry,
            initial_margin_bp=self.initial_margin_bp,
            maintenance_margin_bp=self.maintenance_margin_bp,
        )

    def first_month(self, listing_date: date) -> tuple[int, int]:
        """The first month whose last trading day is after ``listing_date``."""
        year, month = listing_date.year, listing_date.month
        while last_trade_date(self.last_trade, year, month) <= listing_date:
            year, month = _next_month(year, month)
        return year, month


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


class _RegistryFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: Literal[1]
    products: list[_SpotSpec | _FutureSpec]


class Registry:
    """Every listed instrument, by symbol and by id, in listing order.

    Built from product templates for an explicit listing date (never the wall clock), so the
    same data and date always give the same symbols and ids. Ids are 1-based in listing
    order: products in file order, each future's months in calendar order, then months
    added with :meth:`list_month`. Iterating yields instruments in id order.
    """

    def __init__(self, products: Sequence[_SpotSpec | _FutureSpec], listing_date: date) -> None:
        """Prefer :meth:`load` or :meth:`from_toml`."""
        if isinstance(listing_date, datetime):
            raise TypeError("listing_date must be a date, not a datetime")
        self._instruments: list[Instrument] = []
        self._by_symbol: dict[str, Instrument] = {}
        self._futures: dict[str, _FutureSpec] = {}
        seen: set[str] = set()
        for product in products:
            if product._name() in seen:
                raise InstrumentError(
                    InstrumentErrorCode.INVALID_SPEC, f"{product._name()} is defined twice"
                )
            seen.add(product._name())
            if isinstance(product, _SpotSpec):
                self._add(product.instrument(len(self._instruments) + 1))
                continue
            self._futures[product.underlying] = product
            year, month = product.first_month(listing_date)
            for _ in range(product.listed_months):
                self._add(product.instrument(len(self._instruments) + 1, year, month))
                year, month = _next_month(year, month)

    @classmethod
    def load(cls, path: str | PathLike[str] | None = None, *, listing_date: date) -> Registry:
        """Read the product templates (default: the file shipped in the package) and list
        instruments as of ``listing_date`` (CLI callers may pass :func:`utc_today`).

        Raises :class:`InstrumentError` (``INVALID_SPEC``) for a malformed file.
        """
        if path is None:
            text = resources.files("engine").joinpath("data", "instruments.toml").read_text("utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        return cls.from_toml(text, listing_date=listing_date)

    @classmethod
    def from_toml(cls, text: str, *, listing_date: date) -> Registry:
        """Like :meth:`load`, from the text of a product file."""
        try:
            data = msgspec.convert(tomllib.loads(text), type=_RegistryFile)
        except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
            raise InstrumentError(
                InstrumentErrorCode.INVALID_SPEC, f"invalid instruments data: {exc}"
            ) from exc
        return cls(data.products, listing_date)

    def _add(self, instrument: Instrument) -> None:
        self._instruments.append(instrument)
        self._by_symbol[instrument.symbol] = instrument

    def get(self, symbol: str) -> Instrument:
        """The instrument listed as ``symbol``; raises ``UNKNOWN_SYMBOL`` if there is none."""
        try:
            return self._by_symbol[symbol]
        except KeyError:
            raise InstrumentError(
                InstrumentErrorCode.UNKNOWN_SYMBOL, f"unknown symbol {symbol!r}"
            ) from None

    __getitem__ = get

    def by_id(self, instrument_id: int) -> Instrument:
        """The instrument with ``instrument_id``; raises ``UNKNOWN_SYMBOL`` if there is none."""
        if type(instrument_id) is int and 0 < instrument_id <= len(self._instruments):
            return self._instruments[instrument_id - 1]
        raise InstrumentError(
            InstrumentErrorCode.UNKNOWN_SYMBOL, f"unknown instrument id {instrument_id!r}"
        )

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._by_symbol

    def __iter__(self) -> Iterator[Instrument]:
        return iter(self._instruments)

    def __len__(self) -> int:
        return len(self._instruments)

    def list_month(self, underlying: str, year: int, month: int) -> Instrument:
        """List the ``year``/``month`` contract of the future on ``underlying``, with the next id.

        Raises ``UNKNOWN_PRODUCT`` if there is no futures template for ``underlying``,
        ``INVALID_SYMBOL`` for a month F<YYMM> cannot name, and ``ALREADY_LISTED`` (leaving
        the registry unchanged) if the contract is listed already.
        """
        product = self._futures.get(underlying)
        if product is None:
            raise InstrumentError(
                InstrumentErrorCode.UNKNOWN_PRODUCT, f"no futures product on {underlying!r}"
            )
        symbol = future_symbol(underlying, year, month)
        if symbol in self._by_symbol:
            raise InstrumentError(InstrumentErrorCode.ALREADY_LISTED, f"{symbol} is already listed")
        instrument = product.instrument(len(self._instruments) + 1, year, month)
        self._add(instrument)
        return instrument
