"""The instrument registry: the CONTRACTS.md products, symbols, listing, conversions, errors."""

from __future__ import annotations

import calendar
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from engine.instruments import (
    FutureExpiry,
    Instrument,
    InstrumentError,
    InstrumentErrorCode,
    InstrumentKind,
    LastTradeRule,
    Settlement,
    future_symbol,
    hours_in_month,
    last_trade_date,
    parse_symbol,
    spot_symbol,
)
from engine.registry import Registry

LISTING_DATE = date(2026, 12, 15)
DATA_FILE = Path(__file__).parents[2] / "engine" / "data" / "instruments.toml"
Code = InstrumentErrorCode
REGISTRY = Registry.load(listing_date=LISTING_DATE)


def midnight_ns(day: date) -> int:
    return calendar.timegm(day.timetuple()) * 1_000_000_000


def raises(code: InstrumentErrorCode, *fragments: str) -> Callable[[Callable[[], object]], None]:
    """Check that a call raises InstrumentError with ``code`` and a message naming the parts."""

    def check(call: Callable[[], object]) -> None:
        with pytest.raises(InstrumentError) as info:
            call()
        assert info.value.code is code
        for fragment in fragments:
            assert fragment in str(info.value)

    return check


# --- listing ----------------------------------------------------------------------------


def test_lists_64_instruments_with_ids_in_listing_order() -> None:
    instruments = list(REGISTRY)
    assert len(REGISTRY) == len(instruments) == 64
    assert [i.instrument_id for i in instruments] == list(range(1, 65))
    assert len({i.symbol for i in instruments}) == 64
    assert all(REGISTRY.by_id(i.instrument_id) is i for i in instruments)
    assert all(REGISTRY[i.symbol] is i and i.symbol in REGISTRY for i in instruments)


@pytest.mark.parametrize(
    ("underlying", "futures"),
    [("GPU.H100", 12), ("GPU.H200", 12), ("GPU.B200", 12), ("RACK.KW", 24)],
)
def test_each_underlying_has_one_spot_and_its_months(underlying: str, futures: int) -> None:
    mine = [i for i in REGISTRY if i.underlying == underlying]
    assert [i.kind for i in mine] == [InstrumentKind.SPOT] + [InstrumentKind.FUTURE] * futures
    assert mine[0].symbol == f"{underlying}.SPOT"


def test_futures_are_consecutive_months_from_the_listing_date() -> None:
    gpu = [i.symbol for i in REGISTRY if i.underlying == "GPU.B200"][1:]
    assert gpu[0] == "GPU.B200.F2612"
    assert gpu[-1] == "GPU.B200.F2711"
    rack = [i.symbol for i in REGISTRY if i.underlying == "RACK.KW"][1:]
    assert rack[:3] == ["RACK.KW.F2612", "RACK.KW.F2701", "RACK.KW.F2702"]
    assert rack[-1] == "RACK.KW.F2811"


def test_first_month_is_the_first_whose_last_trade_is_after_the_listing_date() -> None:
    # Friday 29 January 2027 is RACK's last trading day for January; GPU trades to the 31st.
    on_29th = Registry.load(listing_date=date(2027, 1, 29))
    assert "GPU.H100.F2701" in on_29th
    assert "RACK.KW.F2701" not in on_29th
    assert "RACK.KW.F2702" in on_29th
    assert "RACK.KW.F2901" in on_29th
    on_28th = Registry.load(listing_date=date(2027, 1, 28))
    assert "RACK.KW.F2701" in on_28th
    on_31st = Registry.load(listing_date=date(2027, 1, 31))
    assert "GPU.H100.F2701" not in on_31st
    assert "GPU.H100.F2801" in on_31st


def test_listing_is_deterministic_and_the_shipped_file_is_the_default() -> None:
    default = list(Registry.load(listing_date=LISTING_DATE))
    assert list(Registry.load(listing_date=LISTING_DATE)) == default
    assert list(Registry.load(DATA_FILE, listing_date=LISTING_DATE)) == default
    assert list(Registry.load(str(DATA_FILE), listing_date=LISTING_DATE)) == default


def test_listing_date_must_be_a_date_not_a_datetime() -> None:
    with pytest.raises(TypeError, match="listing_date"):
        Registry.load(listing_date=datetime(2026, 12, 15))


def test_list_month_adds_a_contract_with_the_next_id() -> None:
    registry = Registry.load(listing_date=LISTING_DATE)
    added = registry.list_month("GPU.H100", 2028, 2)
    assert added.symbol == "GPU.H100.F2802"
    assert added.instrument_id == 65
    assert added.multiplier == 696
    assert registry["GPU.H100.F2802"] is added
    assert registry.by_id(65) is added
    assert list(registry)[-1] is added
    raises(Code.ALREADY_LISTED, "GPU.H100.F2802")(lambda: registry.list_month("GPU.H100", 2028, 2))
    raises(Code.ALREADY_LISTED, "RACK.KW.F2701")(lambda: registry.list_month("RACK.KW", 2027, 1))
    assert len(registry) == 65


# --- the products of CONTRACTS.md --------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "reference"), [("H100", "2.500"), ("H200", "3.500"), ("B200", "5.000")]
)
def test_gpu_spot(cls: str, reference: str) -> None:
    spot = REGISTRY[f"GPU.{cls}.SPOT"]
    assert (spot.kind, spot.settlement) == (InstrumentKind.SPOT, Settlement.PHYSICAL)
    assert (spot.tick, spot.lot_size, spot.multiplier) == (Decimal("0.001"), Decimal(1), 1)
    assert (spot.price_precision, spot.size_precision) == (3, 0)
    assert (spot.quote_currency, spot.quantity_unit, spot.price_unit) == (
        "USDC",
        "GPU-hour",
        "USDC per GPU-hour",
    )
    assert spot.ticks_to_price(spot.reference_price_ticks) == reference
    assert (spot.price_band_bp, spot.buyer_premium_lock_bp, spot.seller_bond_bp) == (
        1500,
        10000,
        2500,
    )
    assert (spot.initial_margin_bp, spot.maintenance_margin_bp) == (0, 0)
    assert (spot.maker_fee_bp, spot.taker_fee_bp) == (0, 5)
    assert spot.delivery_window_seconds == 3600
    assert spot.expiry is None


@pytest.mark.parametrize(
    ("cls", "reference"), [("H100", "2.500"), ("H200", "3.500"), ("B200", "5.000")]
)
def test_gpu_future(cls: str, reference: str) -> None:
    future = REGISTRY[f"GPU.{cls}.F2701"]
    assert (future.kind, future.settlement) == (InstrumentKind.FUTURE, Settlement.CASH_INDEX_MEAN)
    assert (future.tick, future.lot_size, future.multiplier) == (Decimal("0.005"), Decimal(1), 744)
    assert (future.quantity_unit, future.price_unit) == ("GPU", "USDC per GPU-hour")
    assert future.ticks_to_price(future.reference_price_ticks) == reference
    assert future.price_band_bp == 2000
    assert (future.initial_margin_bp, future.maintenance_margin_bp) == (2000, 1333)
    assert (future.buyer_premium_lock_bp, future.seller_bond_bp) == (0, 0)
    assert (future.maker_fee_bp, future.taker_fee_bp) == (0, 5)
    assert future.delivery_window_seconds == 0
    assert future.expiry == FutureExpiry(
        year=2027, month=1, last_trade_ns=midnight_ns(date(2027, 1, 31)), hours_in_month=744
    )


def test_rack_spot() -> None:
    spot = REGISTRY["RACK.KW.SPOT"]
    assert (spot.kind, spot.settlement) == (InstrumentKind.SPOT, Settlement.PHYSICAL)
    assert (spot.tick, spot.lot_size, spot.multiplier) == (Decimal("0.01"), Decimal(1), 1)
    assert (spot.quantity_unit, spot.price_unit) == ("kW-day", "USDC per kW-day")
    assert spot.ticks_to_price(spot.reference_price_ticks) == "5.00"
    assert (spot.price_band_bp, spot.buyer_premium_lock_bp, spot.seller_bond_bp) == (
        1500,
        10000,
        2500,
    )
    assert (spot.maker_fee_bp, spot.taker_fee_bp) == (0, 5)
    assert spot.delivery_window_seconds == 86400


def test_rack_future() -> None:
    future = REGISTRY["RACK.KW.F2702"]
    assert (future.kind, future.settlement) == (InstrumentKind.FUTURE, Settlement.CASH_INDEX_MEAN)
    assert (str(future.tick), str(future.lot_size), future.multiplier) == ("0.10", "100", 1)
    assert (future.price_precision, future.size_precision) == (2, 0)
    assert (future.quantity_unit, future.price_unit) == ("kW", "USDC per kW-month")
    assert future.ticks_to_price(future.reference_price_ticks) == "150.00"
    assert future.price_band_bp == 1000
    assert (future.initial_margin_bp, future.maintenance_margin_bp) == (1500, 1000)
    assert (future.maker_fee_bp, future.taker_fee_bp) == (0, 5)
    assert future.expiry is not None
    assert future.expiry.hours_in_month == 672


def test_instruments_survive_a_msgpack_round_trip() -> None:
    for instrument in REGISTRY:
        encoded = msgspec.msgpack.encode(instrument)
        assert msgspec.msgpack.decode(encoded, type=Instrument) == instrument


# --- calendar rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("year", "month", "hours"),
    [(2027, 1, 744), (2027, 2, 672), (2027, 4, 720), (2028, 2, 696), (2100, 2, 672)],
)
def test_hours_in_month(year: int, month: int, hours: int) -> None:
    assert hours_in_month(year, month) == hours


def test_gpu_future_multiplier_is_the_hours_of_its_month() -> None:
    registry = Registry.load(listing_date=date(2027, 6, 1))
    assert registry["GPU.H200.F2802"].multiplier == 696
    assert registry["GPU.H200.F2709"].multiplier == 720
    assert registry["GPU.H200.F2712"].multiplier == 744
    assert all(i.multiplier == 1 for i in registry if i.underlying == "RACK.KW")


@pytest.mark.parametrize(
    ("rule", "year", "month", "expected"),
    [
        (LastTradeRule.LAST_UTC_DAY, 2027, 1, date(2027, 1, 31)),  # a Sunday: still the 31st
        (LastTradeRule.LAST_UTC_DAY, 2028, 2, date(2028, 2, 29)),
        (LastTradeRule.LAST_BUSINESS_DAY, 2027, 1, date(2027, 1, 29)),  # Sunday -> Friday
        (LastTradeRule.LAST_BUSINESS_DAY, 2027, 7, date(2027, 7, 30)),  # Saturday -> Friday
        (LastTradeRule.LAST_BUSINESS_DAY, 2028, 3, date(2028, 3, 31)),  # already a Friday
        (LastTradeRule.LAST_BUSINESS_DAY, 2026, 12, date(2026, 12, 31)),  # a Thursday
    ],
)
def test_last_trade_date(rule: LastTradeRule, year: int, month: int, expected: date) -> None:
    assert last_trade_date(rule, year, month) == expected


def test_rack_future_stops_trading_on_the_last_business_day() -> None:
    expiry = REGISTRY["RACK.KW.F2707"].expiry
    assert expiry is not None
    assert expiry.last_trade_ns == midnight_ns(date(2027, 7, 30))
    assert expiry.last_trade_ns == 1_816_992_000_000_000_000 - 86_400 * 1_000_000_000


# --- symbols -----------------------------------------------------------------------------


def test_symbol_formats() -> None:
    assert spot_symbol("GPU.H100") == "GPU.H100.SPOT"
    assert future_symbol("GPU.H100", 2027, 1) == "GPU.H100.F2701"
    assert future_symbol("RACK.KW", 2030, 12) == "RACK.KW.F3012"
    assert parse_symbol("GPU.H100.SPOT") == ("GPU.H100", None)
    assert parse_symbol("RACK.KW.F2702") == ("RACK.KW", (2027, 2))


def test_every_listed_symbol_parses_back() -> None:
    for instrument in REGISTRY:
        underlying, tenor = parse_symbol(instrument.symbol)
        assert underlying == instrument.underlying
        expiry = instrument.expiry
        assert tenor == (None if expiry is None else (expiry.year, expiry.month))


@pytest.mark.parametrize(
    "symbol",
    [
        "GPU.H100",
        "GPU.H100.F2713",
        "GPU.H100.F2700",
        "gpu.h100.SPOT",
        "GPU.H100.F271",
        "GPU.H100.SPOTS",
        "GPU.H100.F2701 ",
    ],
)
def test_malformed_symbols_are_refused(symbol: str) -> None:
    raises(Code.INVALID_SYMBOL, symbol.strip())(lambda: parse_symbol(symbol))


def test_tenors_outside_yymm_are_refused() -> None:
    raises(Code.INVALID_SYMBOL, "2100-01")(lambda: future_symbol("GPU.H100", 2100, 1))
    raises(Code.INVALID_SYMBOL, "2027-13")(lambda: future_symbol("GPU.H100", 2027, 13))


# --- conversions -------------------------------------------------------------------------


def test_price_conversions() -> None:
    spot = REGISTRY["GPU.H100.SPOT"]
    assert spot.price_to_ticks("2.135") == 2135
    assert spot.price_to_ticks("2.1350") == 2135
    assert spot.price_to_ticks("+2.135") == 2135
    assert spot.price_to_ticks(Decimal("2.135")) == 2135
    assert spot.price_to_ticks(Decimal("2135E-3")) == 2135
    assert spot.price_to_ticks("7") == 7000
    assert spot.ticks_to_price(2135) == "2.135"
    assert spot.ticks_to_price(2500) == "2.500"
    assert spot.ticks_to_price(1) == "0.001"
    future = REGISTRY["GPU.H100.F2701"]
    assert future.price_to_ticks("2.505") == 501
    assert future.ticks_to_price(501) == "2.505"
    rack = REGISTRY["RACK.KW.F2701"]
    assert rack.price_to_ticks("150.1") == 1501
    assert rack.ticks_to_price(1501) == "150.10"


def test_quantity_conversions() -> None:
    spot = REGISTRY["GPU.H100.SPOT"]
    assert spot.qty_to_lots("3") == 3
    assert spot.qty_to_lots("3.000") == 3
    assert spot.lots_to_qty(3) == "3"
    rack = REGISTRY["RACK.KW.F2701"]
    assert rack.qty_to_lots("300") == 3
    assert rack.qty_to_lots(Decimal("1E+3")) == 10
    assert rack.lots_to_qty(3) == "300"


def test_int64_limits() -> None:
    spot = REGISTRY["GPU.H100.SPOT"]
    assert spot.price_to_ticks("9223372036854775.807") == 2**63 - 1
    assert spot.ticks_to_price(2**63 - 1) == "9223372036854775.807"
    assert spot.qty_to_lots("9223372036854775807") == 2**63 - 1
    rack = REGISTRY["RACK.KW.F2701"]  # 100 kW lots: the largest quantity has 21 digits
    assert rack.qty_to_lots("922337203685477580700") == 2**63 - 1
    assert rack.lots_to_qty(2**63 - 1) == "922337203685477580700"


def test_notional_is_exact_micro_usdc() -> None:
    spot = REGISTRY["GPU.H100.SPOT"]
    assert spot.micro_usdc_per_tick_lot == 1_000
    assert spot.notional_micro_usdc(2135, 3) == 6_405_000  # 2.135 x 3 GPU-hours
    future = REGISTRY["GPU.H100.F2701"]
    assert future.micro_usdc_per_tick_lot == 3_720_000  # 0.005 x 744 hours
    assert future.notional_micro_usdc(500, 2) == 3_720_000_000  # 2.50 x 744 h x 2 GPUs
    rack_spot = REGISTRY["RACK.KW.SPOT"]
    assert rack_spot.notional_micro_usdc(500, 10) == 50_000_000  # 5.00 x 10 kW-days
    rack = REGISTRY["RACK.KW.F2701"]
    assert rack.micro_usdc_per_tick_lot == 10_000_000  # 0.10 x 100 kW
    assert rack.notional_micro_usdc(1500, 1) == 15_000_000_000  # 150.00 x 100 kW


# --- price bands -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "low", "high"),
    [
        ("GPU.H100.SPOT", "2.125", "2.875"),
        ("GPU.B200.SPOT", "4.250", "5.750"),
        ("GPU.H100.F2701", "2.000", "3.000"),
        ("RACK.KW.SPOT", "4.25", "5.75"),
        ("RACK.KW.F2701", "135.00", "165.00"),
    ],
)
def test_band_around_the_reference_price(symbol: str, low: str, high: str) -> None:
    instrument = REGISTRY[symbol]
    assert instrument.ticks_to_price(instrument.min_price_ticks) == low
    assert instrument.ticks_to_price(instrument.max_price_ticks) == high
    assert instrument.price_band() == (instrument.min_price_ticks, instrument.max_price_ticks)


def test_band_rounds_inwards_and_stays_positive() -> None:
    spot = REGISTRY["GPU.H100.SPOT"]  # 1500 bp: 1001 x 0.85 = 850.85, 1001 x 1.15 = 1151.15
    assert spot.price_band(1001) == (851, 1151)
    assert spot.price_band(1) == (1, 1)


def test_check_price_in_band() -> None:
    spot = REGISTRY["GPU.H100.SPOT"]
    spot.check_price_in_band(2125)
    spot.check_price_in_band(2875)
    spot.check_price_in_band(3000, reference_ticks=3000)
    raises(Code.PRICE_OUT_OF_BAND, "GPU.H100.SPOT", "2.876", "2.125..2.875")(
        lambda: spot.check_price_in_band(2876)
    )
    raises(Code.PRICE_OUT_OF_BAND, "2.124")(lambda: spot.check_price_in_band(2124))
    raises(Code.PRICE_OUT_OF_BAND)(lambda: spot.check_price_in_band(2500, reference_ticks=3000))


# --- every error code --------------------------------------------------------------------

H100 = REGISTRY["GPU.H100.SPOT"]
RACK_F = REGISTRY["RACK.KW.F2701"]
GOOD_TOML = DATA_FILE.read_text(encoding="utf-8")


def bad_data(old: str, new: str) -> Callable[[], object]:
    assert old in GOOD_TOML
    text = GOOD_TOML.replace(old, new, 1)
    return lambda: Registry.from_toml(text, listing_date=LISTING_DATE)


ERROR_CASES: list[tuple[str, Callable[[], object], InstrumentErrorCode, tuple[str, ...]]] = [
    ("unknown symbol", lambda: REGISTRY["GPU.A100.SPOT"], Code.UNKNOWN_SYMBOL, ("GPU.A100.SPOT",)),
    ("get unknown", lambda: REGISTRY.get("GPU.H100.F3001"), Code.UNKNOWN_SYMBOL, ("F3001",)),
    ("id zero", lambda: REGISTRY.by_id(0), Code.UNKNOWN_SYMBOL, ("id 0",)),
    ("id past end", lambda: REGISTRY.by_id(65), Code.UNKNOWN_SYMBOL, ("id 65",)),
    ("bad symbol", lambda: parse_symbol("GPU.H100.X"), Code.INVALID_SYMBOL, ("GPU.H100.X",)),
    (
        "no futures",
        lambda: REGISTRY.list_month("GPU.A100", 2027, 1),
        Code.UNKNOWN_PRODUCT,
        ("GPU.A100",),
    ),
    (
        "bad month",
        lambda: REGISTRY.list_month("GPU.H100", 2027, 0),
        Code.INVALID_SYMBOL,
        ("2027-00",),
    ),
    ("listed", lambda: REGISTRY.list_month("GPU.H100", 2027, 1), Code.ALREADY_LISTED, ("F2701",)),
    ("off tick", lambda: H100.price_to_ticks("2.1351"), Code.OFF_TICK, ("2.1351", "0.001")),
    ("off tick 0.10", lambda: RACK_F.price_to_ticks("150.05"), Code.OFF_TICK, ("150.05", "0.10")),
    ("tiny", lambda: H100.price_to_ticks("0." + "0" * 40 + "1"), Code.OFF_TICK, ("GPU.H100.SPOT",)),
    ("far off tick", lambda: H100.price_to_ticks(Decimal("1E-999999999")), Code.OFF_TICK, ()),
    ("nan", lambda: H100.price_to_ticks("NaN"), Code.INVALID_PRICE, ("NaN",)),
    ("inf", lambda: H100.price_to_ticks("Infinity"), Code.INVALID_PRICE, ("Infinity",)),
    ("decimal nan", lambda: H100.price_to_ticks(Decimal("sNaN")), Code.INVALID_PRICE, ("sNaN",)),
    (
        "decimal inf",
        lambda: H100.price_to_ticks(Decimal("-Inf")),
        Code.INVALID_PRICE,
        ("Infinity",),
    ),
    ("exponent", lambda: H100.price_to_ticks("2e3"), Code.INVALID_PRICE, ("2e3",)),
    ("spaces", lambda: H100.price_to_ticks(" 2.5"), Code.INVALID_PRICE, ("GPU.H100.SPOT",)),
    ("underscore", lambda: H100.price_to_ticks("2_5"), Code.INVALID_PRICE, ("2_5",)),
    ("empty", lambda: H100.price_to_ticks(""), Code.INVALID_PRICE, ("GPU.H100.SPOT",)),
    ("float", lambda: H100.price_to_ticks(2.5), Code.INVALID_PRICE, ("2.5",)),  # type: ignore[arg-type]
    ("zero price", lambda: H100.price_to_ticks("0.000"), Code.INVALID_PRICE, ("0.000", "positive")),
    ("negative price", lambda: H100.price_to_ticks("-2.5"), Code.INVALID_PRICE, ("-2.5",)),
    ("huge price", lambda: H100.price_to_ticks("1" + "0" * 30), Code.INVALID_PRICE, ("too large",)),
    ("vast price", lambda: H100.price_to_ticks(Decimal("1E+999999999")), Code.INVALID_PRICE, ()),
    (
        "big price",
        lambda: H100.price_to_ticks("9223372036854775.808"),
        Code.INVALID_PRICE,
        ("large",),
    ),
    ("zero ticks", lambda: H100.ticks_to_price(0), Code.INVALID_PRICE, ("0 ticks",)),
    ("bool ticks", lambda: H100.ticks_to_price(True), Code.INVALID_PRICE, ("True",)),
    ("int64 ticks", lambda: H100.ticks_to_price(2**63), Code.INVALID_PRICE, ("int64",)),
    ("notional price", lambda: H100.notional_micro_usdc(-1, 1), Code.INVALID_PRICE, ("-1",)),
    ("band reference", lambda: H100.price_band(0), Code.INVALID_PRICE, ("0 ticks",)),
    ("band price", lambda: H100.check_price_in_band(0), Code.INVALID_PRICE, ("0 ticks",)),
    ("off lot", lambda: RACK_F.qty_to_lots("150"), Code.OFF_LOT, ("RACK.KW.F2701", "150", "100")),
    ("fractional lot", lambda: H100.qty_to_lots("1.5"), Code.OFF_LOT, ("1.5",)),
    ("zero qty", lambda: H100.qty_to_lots("0"), Code.NON_POSITIVE_QUANTITY, ("0",)),
    ("negative qty", lambda: RACK_F.qty_to_lots("-100"), Code.NON_POSITIVE_QUANTITY, ("-100",)),
    ("zero lots", lambda: H100.lots_to_qty(0), Code.NON_POSITIVE_QUANTITY, ("0 lots",)),
    ("notional lots", lambda: H100.notional_micro_usdc(1, 0), Code.NON_POSITIVE_QUANTITY, ("0",)),
    ("qty text", lambda: H100.qty_to_lots("ten"), Code.INVALID_QUANTITY, ("ten",)),
    (
        "huge qty",
        lambda: H100.qty_to_lots("9223372036854775808"),
        Code.INVALID_QUANTITY,
        ("large",),
    ),
    ("out of band", lambda: H100.check_price_in_band(1), Code.PRICE_OUT_OF_BAND, ("0.001",)),
    (
        "not toml",
        lambda: Registry.from_toml("version = ", listing_date=LISTING_DATE),
        Code.INVALID_SPEC,
        (),
    ),
    ("float tick", bad_data('tick = "0.10"', "tick = 0.1"), Code.INVALID_SPEC, ("tick",)),
    ("precision", bad_data('tick = "0.10"', 'tick = "0.1"'), Code.INVALID_SPEC, ("RACK.KW", "0.1")),
    (
        "lot places",
        bad_data('lot_size = "100"', 'lot_size = "100.0"'),
        Code.INVALID_SPEC,
        ("lot_size",),
    ),
    ("ref off tick", bad_data('"150.00"', '"150.05"'), Code.INVALID_SPEC, ("150.05",)),
    ("zero ref", bad_data('"150.00"', '"0.00"'), Code.INVALID_SPEC, ("RACK.KW.F",)),
    (
        "unknown field",
        bad_data("listed_months = 24", "listed_months = 24\nlisted = 1"),
        Code.INVALID_SPEC,
        ("listed",),
    ),
    (
        "spot field on future",
        bad_data("listed_months = 24", "listed_months = 24\nseller_bond_bp = 1"),
        Code.INVALID_SPEC,
        (),
    ),
    (
        "missing field",
        bad_data('last_trade = "last_business_day"', ""),
        Code.INVALID_SPEC,
        ("last_trade",),
    ),
    (
        "bad rule",
        bad_data('last_trade = "last_business_day"', 'last_trade = "third_friday"'),
        Code.INVALID_SPEC,
        ("third_friday",),
    ),
    ("bad kind", bad_data('kind = "future"', 'kind = "option"'), Code.INVALID_SPEC, ("option",)),
    (
        "currency",
        bad_data('quote_currency = "USDC"', 'quote_currency = "USD"'),
        Code.INVALID_SPEC,
        (),
    ),
    (
        "margin order",
        bad_data("maintenance_margin_bp = 1000", "maintenance_margin_bp = 1600"),
        Code.INVALID_SPEC,
        ("maintenance",),
    ),
    (
        "duplicate",
        lambda: Registry.from_toml(
            GOOD_TOML + GOOD_TOML[GOOD_TOML.index("[[products]]") :], listing_date=LISTING_DATE
        ),
        Code.INVALID_SPEC,
        ("GPU.H100 spot",),
    ),
    (
        "sub-micro",
        bad_data(
            'tick = "0.001"\nlot_size = "1"\nprice_precision = 3',
            'tick = "0.0000001"\nlot_size = "1"\nprice_precision = 7',
        ),
        Code.INVALID_SPEC,
        ("micro-USDC",),
    ),
]


@pytest.mark.parametrize(
    ("call", "code", "fragments"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_refusals(
    call: Callable[[], object], code: InstrumentErrorCode, fragments: tuple[str, ...]
) -> None:
    raises(code, *fragments)(call)


def test_every_error_code_is_exercised() -> None:
    assert {code for _, _, code, _ in ERROR_CASES} == set(InstrumentErrorCode)


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="multiple of the tick"):
        H100.price_to_ticks("2.0001")
