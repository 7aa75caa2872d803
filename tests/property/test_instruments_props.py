"""Properties of the exact conversions, over every listed instrument (hypothesis)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.instruments import (
    INT64_MAX,
    Instrument,
    InstrumentError,
    InstrumentErrorCode,
)
from engine.registry import Registry

REGISTRY = Registry.load(listing_date=date(2026, 12, 15))
instruments = st.sampled_from(list(REGISTRY))
counts = st.integers(min_value=1, max_value=INT64_MAX)
EXACT = 100  # Decimal digits: far more than any int64 count times a spec needs


def plain(value: Decimal) -> str:
    """A Decimal as the plain digits a client would send (never exponent notation)."""
    return format(value, "f")


@given(instruments, counts)
def test_price_round_trips(instrument: Instrument, ticks: int) -> None:
    text = instrument.ticks_to_price(ticks)
    assert instrument.price_to_ticks(text) == ticks
    assert instrument.price_to_ticks(Decimal(text)) == ticks
    assert len(text.partition(".")[2]) == instrument.price_precision
    assert Decimal(text) == ticks * instrument.tick


@given(instruments, counts)
def test_quantity_round_trips(instrument: Instrument, lots: int) -> None:
    text = instrument.lots_to_qty(lots)
    assert instrument.qty_to_lots(text) == lots
    assert len(text.partition(".")[2]) == instrument.size_precision
    assert Decimal(text) == lots * instrument.lot_size


@given(instruments, st.integers(1, 10**12), st.integers(0, 6))
def test_trailing_zeros_do_not_matter(instrument: Instrument, ticks: int, zeros: int) -> None:
    text = instrument.ticks_to_price(ticks)
    padded = text + "0" * zeros if "." in text else f"{text}.{'0' * zeros}".rstrip(".")
    assert instrument.price_to_ticks(padded) == ticks


@given(instruments, st.integers(0, 10**12), st.integers(1, 6), st.data())
def test_off_tick_prices_are_refused(
    instrument: Instrument, ticks: int, extra_places: int, data: st.DataObject
) -> None:
    # A price strictly between two ticks, written with up to six more decimal places.
    per_tick = instrument.tick_units * 10**extra_places
    inside = data.draw(st.integers(1, per_tick - 1))
    price = Decimal(ticks * per_tick + inside).scaleb(-(instrument.price_precision + extra_places))
    for edge in (plain(price), price):
        with pytest.raises(InstrumentError) as info:
            instrument.price_to_ticks(edge)
        assert info.value.code is InstrumentErrorCode.OFF_TICK


@given(instruments, st.integers(0, 10**12), st.integers(1, 6), st.data())
def test_off_lot_quantities_are_refused(
    instrument: Instrument, lots: int, extra_places: int, data: st.DataObject
) -> None:
    per_lot = instrument.lot_units * 10**extra_places
    inside = data.draw(st.integers(1, per_lot - 1))
    qty = Decimal(lots * per_lot + inside).scaleb(-(instrument.size_precision + extra_places))
    with pytest.raises(InstrumentError) as info:
        instrument.qty_to_lots(plain(qty))
    assert info.value.code is InstrumentErrorCode.OFF_LOT


@given(instruments, counts, counts)
def test_notional_is_the_exact_decimal_product(
    instrument: Instrument, ticks: int, lots: int
) -> None:
    notional = instrument.notional_micro_usdc(ticks, lots)
    assert type(notional) is int
    with localcontext() as context:
        context.prec = EXACT
        price = Decimal(instrument.ticks_to_price(ticks))
        quantity = Decimal(instrument.lots_to_qty(lots))
        expected = price * quantity * instrument.multiplier * 1_000_000
    assert expected == notional


@given(instruments, counts)
def test_band_is_the_widest_tick_range_inside_the_bp_limit(
    instrument: Instrument, reference: int
) -> None:
    low, high = instrument.price_band(reference)
    bp = instrument.price_band_bp
    assert 1 <= low <= reference <= high
    # Inside the limit, and one more tick either way would not be (min is floored at 1 tick).
    assert low * 10_000 >= reference * (10_000 - bp)
    assert low == 1 or (low - 1) * 10_000 < reference * (10_000 - bp)
    assert high * 10_000 <= reference * (10_000 + bp) < (high + 1) * 10_000


@given(instruments, st.one_of(st.text(), st.decimals()))
def test_any_input_gives_ticks_or_an_instrument_error(
    instrument: Instrument, edge: str | Decimal
) -> None:
    try:
        ticks = instrument.price_to_ticks(edge)
    except InstrumentError as error:
        assert error.code in {InstrumentErrorCode.INVALID_PRICE, InstrumentErrorCode.OFF_TICK}
        assert instrument.symbol in str(error)
    else:
        assert 0 < ticks <= INT64_MAX
        assert Decimal(instrument.ticks_to_price(ticks)) == Decimal(edge)
