"""Time on the exchange: index fixes, halts at last trade, final settlement, GTD expiry.

December 2026 futures stop trading at 00:00 UTC on 31 December (GPU: last UTC day; rack-load:
last business day, a Thursday) and settle once January has begun, at the mean of December's
index fixes rounded half up to the tick. Fixes are micro-USDC per unit of the futures quote:
a GPU tick (0.005 USDC per GPU-hour) is 5 000, a rack-load tick (0.10 USDC per kW-month)
100 000.
"""

from __future__ import annotations

from datetime import date
from fractions import Fraction
from math import floor

import pytest

from engine.commands import IndexFix, ListInstrument
from engine.events import (
    CommandRejected,
    FinalSettlement,
    IndexFixed,
    InstrumentHalted,
    InstrumentListed,
    InsuranceCover,
    Liquidation,
    MarkPrice,
    OrderAccepted,
    OrderCancelled,
    OrderRejected,
    PositionChanged,
    Reason,
    Trade,
    VariationMargin,
)
from engine.exchange import Exchange
from engine.exchange_state import decode_state, encode_state
from engine.ledger import INSURANCE_FUND, Balances
from engine.messages import OrderType, TimeInForce
from engine.registry import Registry
from tests.exchange_helpers import (
    ALICE,
    BOB,
    BUY,
    CAROL,
    DAVE,
    GPU_FUT,
    GPU_FUT_NEXT,
    GPU_SPOT,
    HOUR,
    RACK_FUT,
    SELL,
    START,
    Desk,
    instrument,
    of_type,
    one,
    utc_ns,
)

FUT = instrument(GPU_FUT)
TV = FUT.micro_usdc_per_tick_lot
RACK_TV = instrument(RACK_FUT).micro_usdc_per_tick_lot
LAST_TRADE = utc_ns(2026, 12, 31)
MONTH_END = utc_ns(2027, 1, 1)
DECEMBER_FUTURES = ["GPU.B200.F2612", "GPU.H100.F2612", "GPU.H200.F2612", "RACK.KW.F2612"]
RICH = 10**13


def test_the_contract_dates_these_tests_rely_on() -> None:
    assert FUT.expiry is not None and FUT.expiry.last_trade_ns == LAST_TRADE
    rack = instrument(RACK_FUT).expiry
    assert rack is not None and rack.last_trade_ns == LAST_TRADE
    assert (TV, RACK_TV) == (3_720_000, 10_000_000)


def settlement_ticks(fixes: list[int], tick_micro: int) -> int:
    """The mean of ``fixes`` in ticks, rounded half up."""
    return floor(Fraction(sum(fixes), len(fixes) * tick_micro) + Fraction(1, 2))


def fix_december(desk: Desk, underlying: str, prices: list[int]) -> None:
    """One fix for each of the 31 days of December 2026, in order."""
    assert len(prices) == 31
    for day, price in enumerate(prices, 1):
        desk.fix(underlying, 20261200 + day, price)


def funded(*accounts: str) -> Desk:
    desk = Desk()
    for who in accounts:
        desk.deposit(who, RICH)
    return desk


def long_two(desk: Desk, price: int = 500, symbol: str = GPU_FUT) -> None:
    desk.rest(BOB, symbol, SELL, 2, price)
    desk.place(ALICE, symbol, BUY, 2, price)


# --- index fixes ----------------------------------------------------------------------------


def test_an_index_fix_is_recorded() -> None:
    desk = Desk()
    assert desk.fix("GPU.H100", 20261201, 2_500_000) == \
        [IndexFixed("GPU.H100", 20261201, 2_500_000)]
    assert desk.fix("RACK.KW", 20261231, 150_000_000) == \
        [IndexFixed("RACK.KW", 20261231, 150_000_000)]
    assert desk.ex.fixes == {("GPU.H100", 20261201): 2_500_000,
                             ("RACK.KW", 20261231): 150_000_000}


@pytest.mark.parametrize(("underlying", "day", "price", "reason"), [
    ("GPU.X1", 20261201, 2_500_000, Reason.UNKNOWN_UNDERLYING),
    ("GPU.H100.SPOT", 20261201, 2_500_000, Reason.UNKNOWN_UNDERLYING),
    ("", 20261201, 2_500_000, Reason.UNKNOWN_UNDERLYING),
    ("GPU.H100", 20261201, 0, Reason.INVALID_AMOUNT),
    ("GPU.H100", 20261201, -2_500_000, Reason.INVALID_AMOUNT),
    ("GPU.H100", 20261300, 2_500_000, Reason.INVALID_AMOUNT),  # month 13, day 0
    ("GPU.H100", 20261232, 2_500_000, Reason.INVALID_AMOUNT),
    ("GPU.H100", 20260001, 2_500_000, Reason.INVALID_AMOUNT),
    ("GPU.H100", 20261131, 2_500_000, Reason.INVALID_AMOUNT),  # 31 November
    ("GPU.H100", 20270229, 2_500_000, Reason.INVALID_AMOUNT),  # 2027 is no leap year
    ("GPU.H100", 1201, 2_500_000, Reason.INVALID_AMOUNT),  # year 0
])
def test_invalid_index_fixes_are_refused(underlying: str, day: int, price: int,
                                         reason: Reason) -> None:
    desk = Desk()
    assert desk.apply(IndexFix(underlying, day, price)) == \
        [CommandRejected("index_fix", "", day, reason)]
    assert desk.ex.fixes == {}


# --- halts ----------------------------------------------------------------------------------


def test_a_future_halts_at_its_last_trade_and_cancels_its_orders() -> None:
    desk = funded(ALICE, BOB, CAROL)
    long_two(desk)
    resting = desk.rest(ALICE, GPU_FUT, SELL, 1, 550)
    stop = desk.rest(CAROL, GPU_FUT, BUY, 1, 0, order_type=OrderType.STOP_MARKET,
                     tif=TimeInForce.IOC, stop_price=580)
    next_month = desk.rest(CAROL, GPU_FUT_NEXT, BUY, 1, 480)
    alice = desk.balances(ALICE)
    assert of_type(desk.timer(LAST_TRADE - 1), InstrumentHalted) == []
    events = desk.timer(LAST_TRADE)
    assert of_type(events, InstrumentHalted) == \
        [InstrumentHalted(symbol) for symbol in DECEMBER_FUTURES]
    assert [(c.order_id, c.account, c.reason, c.qty) for c in of_type(events, OrderCancelled)] \
        == [(resting, ALICE, Reason.HALTED, 1), (stop, CAROL, Reason.HALTED, 1)]
    # the order's hold comes back; the position keeps its margin until settlement
    sell_fee = 600 * 1 * TV * 5 // 10_000  # a sell holds its fee on the band top
    assert desk.balances(ALICE) == Balances(available=alice.available + sell_fee,
                                            margin=alice.margin)
    assert desk.balances(CAROL).reserved > 0  # her January order is untouched
    assert list(desk.ex.orders) == [next_month]
    assert desk.place(CAROL, GPU_FUT, BUY, 1, 500, client_order_id="late") == \
        [OrderRejected(0, CAROL, GPU_FUT, "late", Reason.INSTRUMENT_HALTED)]
    assert desk.cancel(ALICE, GPU_FUT, resting) == \
        [OrderRejected(resting, ALICE, GPU_FUT, "", Reason.UNKNOWN_ORDER)]
    assert of_type(desk.timer(LAST_TRADE + HOUR), InstrumentHalted) == []


def test_nothing_trades_after_the_last_trade_time_even_before_a_timer() -> None:
    # CONTRACTS.md: "trading stops at last trade". Every command carries the time; an order
    # stamped at or after the last trade must not trade, whether or not a Timer came first.
    desk = funded(ALICE, BOB)
    desk.rest(BOB, GPU_FUT, SELL, 1, 500)
    desk.rest(ALICE, GPU_FUT, BUY, 1, 490)
    desk.at(LAST_TRADE)
    assert desk.place(ALICE, GPU_FUT, BUY, 1, 500, client_order_id="late") == \
        [OrderRejected(0, ALICE, GPU_FUT, "late", Reason.INSTRUMENT_HALTED)]
    assert desk.amend(ALICE, GPU_FUT, 2, 500, 1) == \
        [OrderRejected(2, ALICE, GPU_FUT, "", Reason.INSTRUMENT_HALTED)]
    assert desk.position(ALICE, GPU_FUT).qty == 0
    # the next timer halts the future and cancels what rests
    assert len(of_type(desk.timer(), OrderCancelled)) == 2


def test_a_liquidation_places_no_order_past_the_last_trade_time() -> None:
    # Past the last trade but before the halting Timer, the future takes no orders: not even
    # the liquidation's.
    desk = funded(BOB, CAROL, DAVE)
    desk.deposit(ALICE, 500 * 2 * TV * 5 // 10_000 + 2 * 500 * TV * 2_000 // 10_000)
    long_two(desk)
    desk.rest(DAVE, GPU_FUT, SELL, 1, 450)
    desk.place(CAROL, GPU_FUT, BUY, 1, 450)  # the last trade: 450
    desk.rest(CAROL, GPU_FUT, BUY, 2, 440)  # a bid the liquidation could hit
    events = desk.cut(LAST_TRADE)
    assert one(events, Liquidation).account == ALICE
    assert of_type(events, OrderAccepted) == []
    assert of_type(events, Trade) == []
    assert desk.position(ALICE, GPU_FUT).qty == 2


def test_quotes_left_past_the_last_trade_time_make_no_mark() -> None:
    # Like expired GTD quotes, quotes on a future past its last trade can no longer trade
    # (the Timer that cancels them just has not come yet): the mark is the last trade.
    desk = funded(ALICE, BOB, CAROL)
    long_two(desk, 520)
    desk.rest(CAROL, GPU_FUT, BUY, 1, 480)
    desk.rest(CAROL, GPU_FUT, SELL, 1, 580)  # a mid of 530
    events = desk.cut(LAST_TRADE)
    marks = [(m.price, m.source) for m in of_type(events, MarkPrice) if m.symbol == GPU_FUT]
    assert marks == [(520, "last_trade")]
    # and the same once the Timer has halted it
    desk.timer()
    marks = [(m.price, m.source) for m in of_type(desk.cut(), MarkPrice) if m.symbol == GPU_FUT]
    assert marks == [(520, "last_trade")]


def test_a_halted_position_is_still_marked_and_liquidated_without_an_order() -> None:
    desk = funded(BOB, CAROL, DAVE)
    desk.deposit(ALICE, 500 * 2 * TV * 5 // 10_000 + 2 * 500 * TV * 2_000 // 10_000)
    long_two(desk)
    desk.rest(DAVE, GPU_FUT, SELL, 1, 450)
    desk.place(CAROL, GPU_FUT, BUY, 1, 450)  # the last trade: 450
    desk.timer(LAST_TRADE)
    events = desk.cut()
    assert one(events, Liquidation).account == ALICE
    assert of_type(events, OrderAccepted) == []  # nothing can trade on a halted future
    assert desk.position(ALICE, GPU_FUT).qty == 2
    moved = {v.account: v.amount for v in of_type(events, VariationMargin)
             if v.symbol == GPU_FUT}
    assert moved[ALICE] == (450 - 500) * 2 * TV


# --- final settlement -----------------------------------------------------------------------


def test_a_future_settles_after_its_month_at_the_mean_of_the_months_fixes() -> None:
    desk = funded(ALICE, BOB)
    long_two(desk)
    fixes = [2_500_000] * 15 + [2_505_000] * 16  # mean 2 502 580.6: 500.52 ticks
    desk.fix("GPU.H100", 20261130, 9_000_000)  # November: not part of the mean
    desk.fix("GPU.H100", 20261231, 1)
    fix_december(desk, "GPU.H100", fixes)  # 31 December replaces the fix of the same day
    desk.fix("GPU.H100", 20270101, 1_000_000)  # January: not part of it either
    price = settlement_ticks(fixes, 5_000)
    assert price == 501
    desk.timer(LAST_TRADE)
    assert of_type(desk.timer(MONTH_END - 1), FinalSettlement) == []
    events = desk.timer(MONTH_END)
    # only GPU.H100 has fixes; the other December futures wait for theirs
    assert of_type(events, FinalSettlement) == [FinalSettlement(GPU_FUT, price)]
    moved = {v.account: v.amount for v in of_type(events, VariationMargin)}
    assert moved == {ALICE: (501 - 500) * 2 * TV, BOB: -(501 - 500) * 2 * TV}
    closed = {p.account: p for p in of_type(events, PositionChanged)}
    assert closed[ALICE] == PositionChanged(ALICE, GPU_FUT, 0, 0, (501 * 2 - 1000) * TV)
    assert closed[BOB] == PositionChanged(BOB, GPU_FUT, 0, 0, -(501 * 2 - 1000) * TV)
    buyer_fee = 500 * 2 * TV * 5 // 10_000
    assert desk.balances(ALICE) == Balances(available=RICH - buyer_fee + 2 * TV)
    assert desk.balances(BOB) == Balances(available=RICH - 2 * TV)
    assert desk.ex.markets[GPU_FUT].settled
    assert of_type(desk.timer(MONTH_END + HOUR), FinalSettlement) == []
    assert of_type(desk.cut(), VariationMargin) == []


def test_settlement_pays_only_what_the_last_cut_left() -> None:
    desk = funded(ALICE, BOB, CAROL)
    long_two(desk)
    desk.rest(BOB, GPU_FUT, SELL, 1, 520)
    desk.place(CAROL, GPU_FUT, BUY, 1, 520)
    cut = {v.account: v.amount for v in of_type(desk.cut(), VariationMargin)}
    # marked at the last trade, 520: Bob is short 2 from 500 and 1 from 520
    assert cut == {ALICE: 20 * 2 * TV, BOB: -(20 * 2) * TV}
    fix_december(desk, "GPU.H100", [2_505_000] * 31)  # 501 ticks
    desk.timer(LAST_TRADE)
    events = desk.timer(MONTH_END)
    assert one(events, FinalSettlement) == FinalSettlement(GPU_FUT, 501)
    settled = {v.account: v.amount for v in of_type(events, VariationMargin)}
    assert settled == {ALICE: (501 - 520) * 2 * TV, BOB: (520 - 501) * 3 * TV,
                       CAROL: (501 - 520) * 1 * TV}
    assert sum(settled.values()) == 0


def test_without_fixes_for_its_month_a_future_waits() -> None:
    desk = funded(ALICE, BOB)
    long_two(desk)
    desk.fix("GPU.H100", 20261130, 2_600_000)
    desk.fix("GPU.H100", 20270102, 2_600_000)
    desk.timer(LAST_TRADE)
    assert of_type(desk.timer(MONTH_END + HOUR), FinalSettlement) == []
    assert desk.position(ALICE, GPU_FUT).qty == 2
    assert desk.balances(ALICE).margin == 2 * 500 * TV * 2_000 // 10_000
    assert not desk.ex.markets[GPU_FUT].settled
    for day in range(1, 31):  # late, but for December: all days but the last
        desk.fix("GPU.H100", 20261200 + day, 2_600_000)
    assert of_type(desk.timer(MONTH_END + 2 * HOUR), FinalSettlement) == []
    desk.fix("GPU.H100", 20261231, 2_600_000)  # the month is complete
    events = desk.timer(MONTH_END + 3 * HOUR)
    assert one(events, FinalSettlement) == FinalSettlement(GPU_FUT, 520)
    assert desk.position(ALICE, GPU_FUT).qty == 0
    assert desk.balances(ALICE).margin == 0


def test_rack_load_settles_on_its_own_tick() -> None:
    desk = funded(ALICE, BOB)
    long_two(desk, 1500, RACK_FUT)
    # USDC 150.00 and 150.10 per kW-month, one day more of the higher: 1500.5 ticks + 1/310
    fixes = [150_000_000] * 15 + [150_100_000] * 16
    fix_december(desk, "RACK.KW", fixes)
    price = settlement_ticks(fixes, 100_000)
    assert price == 1501
    desk.timer(LAST_TRADE)
    events = desk.timer(MONTH_END)
    assert one(events, FinalSettlement) == FinalSettlement(RACK_FUT, price)
    moved = {v.account: v.amount for v in of_type(events, VariationMargin)}
    assert moved == {ALICE: 1 * 2 * RACK_TV, BOB: -1 * 2 * RACK_TV}


def test_a_settlement_loss_beyond_the_margin_is_covered_by_the_insurance_fund() -> None:
    desk = funded(BOB)
    desk.deposit(ALICE, 600 * 2 * TV * 5 // 10_000 + 2 * 500 * TV * 2_000 // 10_000)
    long_two(desk, 600)
    fix_december(desk, "GPU.H100", [2_000_000] * 31)  # 400 ticks
    desk.timer(LAST_TRADE)
    events = desk.timer(MONTH_END)
    assert one(events, FinalSettlement) == FinalSettlement(GPU_FUT, 400)
    loss = (400 - 600) * 2 * TV
    margin = 2 * 500 * TV * 2_000 // 10_000
    shortfall = -(loss + margin)
    assert shortfall == 744_000_000
    assert one(events, InsuranceCover) == InsuranceCover(ALICE, shortfall, -shortfall)
    assert events.index(one(events, FinalSettlement)) < events.index(one(events, InsuranceCover))
    assert desk.balances(ALICE) == Balances()
    assert desk.balances(INSURANCE_FUND) == Balances(available=-shortfall)


# --- GTD expiry -----------------------------------------------------------------------------


def test_gtd_orders_expire_on_a_timer_after_their_expiry() -> None:
    desk = funded(ALICE)
    expiry = START + HOUR
    fut = desk.rest(ALICE, GPU_FUT, BUY, 1, 490, tif=TimeInForce.GTD, expire_ts=expiry)
    spot = desk.rest(ALICE, GPU_SPOT, BUY, 2, 2400, tif=TimeInForce.GTD, expire_ts=expiry)
    assert of_type(desk.timer(expiry), OrderCancelled) == []  # still live at its expiry
    events = desk.timer(expiry + 1)
    assert of_type(events, OrderCancelled) == [
        OrderCancelled(fut, ALICE, GPU_FUT, Reason.EXPIRED, 1, 0),
        OrderCancelled(spot, ALICE, GPU_SPOT, Reason.EXPIRED, 2, 0),
    ]
    assert desk.balances(ALICE) == Balances(available=RICH)
    assert desk.ex.orders == {}


# --- listing ----------------------------------------------------------------------------------


def test_a_new_month_is_listed_by_command_and_survives_a_restore() -> None:
    registry = Registry.load(listing_date=date(2026, 11, 30))
    spec = registry.list_month("GPU.H100", 2027, 12)  # one past the 12 listed months
    desk = funded(ALICE, BOB)
    assert spec.symbol not in desk.ex.markets
    assert desk.apply(ListInstrument(spec)) == [
        InstrumentListed("GPU.H100.F2712", spec.instrument_id)]
    assert desk.apply(ListInstrument(spec)) == [
        CommandRejected("list_instrument", "", spec.instrument_id, Reason.ALREADY_LISTED)]
    long_two(desk, 500, spec.symbol)
    assert desk.position(ALICE, spec.symbol).qty == 2
    refused = one(desk.place(CAROL, spec.symbol, BUY, 1, 500), OrderRejected)
    assert refused.reason == Reason.INSUFFICIENT_MARGIN  # risk applies there as anywhere
    restored = Exchange.restore(decode_state(encode_state(desk.ex.state())))
    assert restored.state_hash() == desk.ex.state_hash()
    assert spec.symbol in restored.markets
