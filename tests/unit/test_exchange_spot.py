"""Spot fills and physical delivery: escrow at the fill, payout when the window closes.

GPU.H100.SPOT: 1 000 micro-USDC per tick-lot, delivery in the next whole UTC hour.
RACK.KW.SPOT: 0.01 USDC ticks on 1 kW-day (10 000 micro-USDC per tick-lot), next UTC day.
Both: premium locked 100 %, bond 25 %, maker fee 0, taker fee 5 bp.
"""

from __future__ import annotations

import calendar

from engine.commands import SettleDelivery
from engine.events import (
    BalanceChanged,
    CommandRejected,
    DeliveryOpened,
    DeliverySettled,
    OrderAccepted,
    OrderRejected,
    Reason,
    Trade,
)
from engine.ledger import FEE_ACCOUNT, Balances
from engine.messages import Side
from tests.exchange_helpers import (
    ALICE,
    BOB,
    BUY,
    CAROL,
    DEC_1,
    GPU_SPOT,
    HOUR,
    RACK_SPOT,
    SELL,
    Desk,
    instrument,
    of_type,
    one,
    utc_ns,
)

GPU_TV = instrument(GPU_SPOT).micro_usdc_per_tick_lot
RACK_TV = instrument(RACK_SPOT).micro_usdc_per_tick_lot
SELLER_FUNDS = 10_000_000
BUYER_FUNDS = 20_000_000


def test_the_contract_numbers_these_tests_rely_on() -> None:
    assert (GPU_TV, RACK_TV) == (1_000, 10_000)
    assert instrument(GPU_SPOT).delivery_window_seconds == 3600
    assert instrument(RACK_SPOT).delivery_window_seconds == 86_400


def market_with_seller(capacity: int = 10) -> Desk:
    desk = Desk()  # 00:10 UTC, 1 December 2026
    desk.deposit(BOB, SELLER_FUNDS)
    desk.deposit(ALICE, BUYER_FUNDS)
    desk.capacity(BOB, "GPU.H100", capacity)
    desk.capacity(BOB, "RACK.KW", capacity)
    return desk


def test_a_taker_buy_escrows_the_premium_pays_its_fee_and_escrows_the_bond() -> None:
    desk = market_with_seller()
    desk.rest(BOB, GPU_SPOT, SELL, 4, 2600)
    events = desk.place(ALICE, GPU_SPOT, BUY, 3, 2650)
    premium = 2600 * 3 * GPU_TV  # at the maker's price
    buyer_fee = premium * 5 // 10_000  # Alice is the taker
    bond = 2600 * 4 * GPU_TV // 4 - 2600 * 1 * GPU_TV // 4  # the bond on 3 of Bob's 4 lots
    assert (premium, buyer_fee, bond) == (7_800_000, 3_900, 1_950_000)
    trade = one(events, Trade)
    assert (trade.price, trade.qty, trade.maker_account, trade.taker_account) == \
        (2600, 3, BOB, ALICE)
    assert (trade.maker_fee, trade.taker_fee) == (0, buyer_fee)  # the seller pays at delivery
    assert one(events, DeliveryOpened) == DeliveryOpened(
        1, GPU_SPOT, trade.trade_id, BOB, ALICE, 3,
        window_start=DEC_1 + HOUR, window_end=DEC_1 + 2 * HOUR, premium=premium, bond=bond)
    assert desk.balances(ALICE) == \
        Balances(available=BUYER_FUNDS - premium - buyer_fee, escrow=premium)
    assert desk.balances(BOB) == Balances(available=SELLER_FUNDS - 2600 * 4 * GPU_TV // 4,
                                          reserved=2600 * GPU_TV // 4, escrow=bond)
    assert desk.balances(FEE_ACCOUNT) == Balances(available=buyer_fee)
    # a balance event for each account that moved, the fee account being internal
    assert {e.account for e in of_type(events, BalanceChanged)} == {ALICE, BOB}


def test_the_window_settles_at_its_end_paying_the_maker_seller_in_full() -> None:
    desk = market_with_seller()
    desk.rest(BOB, GPU_SPOT, SELL, 3, 2600)
    desk.place(ALICE, GPU_SPOT, BUY, 3, 2600)
    premium, bond = 2600 * 3 * GPU_TV, 2600 * 3 * GPU_TV // 4
    window_end = DEC_1 + 2 * HOUR
    assert of_type(desk.timer(window_end - 1), DeliverySettled) == []
    events = desk.timer(window_end)
    seller_fee = premium * 0 // 10_000  # Bob was the maker
    assert one(events, DeliverySettled) == DeliverySettled(
        1, delivered=3, required=3, seller_paid=premium - seller_fee, seller_fee=seller_fee,
        buyer_refund=0, buyer_compensation=0, bond_released=bond)
    assert desk.balances(BOB) == Balances(available=SELLER_FUNDS + premium)
    assert desk.balances(ALICE) == \
        Balances(available=BUYER_FUNDS - premium - premium * 5 // 10_000)
    assert desk.ex.deliveries == {}
    assert desk.ex.sold == {}
    assert of_type(desk.timer(window_end + HOUR), DeliverySettled) == []


def test_a_taker_seller_pays_the_taker_fee_on_the_premium_at_delivery() -> None:
    desk = market_with_seller()
    desk.rest(ALICE, GPU_SPOT, BUY, 2, 2550)  # Alice is the maker: her fee is 0
    events = desk.place(BOB, GPU_SPOT, SELL, 2, 2500)
    premium = 2550 * 2 * GPU_TV
    bond = 2550 * 2 * GPU_TV // 4  # on the bid Bob sold into, above his own limit
    assert (one(events, Trade).maker_fee, one(events, Trade).taker_fee) == (0, 0)
    assert one(events, DeliveryOpened).bond == bond
    # Alice's lock included the taker fee; as maker she is charged 0 and gets it back
    assert desk.balances(ALICE) == Balances(available=BUYER_FUNDS - premium, escrow=premium)
    settled = one(desk.timer(DEC_1 + 2 * HOUR), DeliverySettled)
    seller_fee = premium * 5 // 10_000
    assert (settled.seller_paid, settled.seller_fee, settled.bond_released) == \
        (premium - seller_fee, seller_fee, bond)
    assert seller_fee == 2_550
    assert desk.balances(BOB) == Balances(available=SELLER_FUNDS + premium - seller_fee)
    assert desk.balances(FEE_ACCOUNT) == Balances(available=seller_fee)


def test_rack_load_delivers_over_the_next_utc_day() -> None:
    desk = market_with_seller()
    desk.deposit(ALICE, BUYER_FUNDS)
    desk.rest(BOB, RACK_SPOT, SELL, 5, 510)
    opened = one(desk.place(ALICE, RACK_SPOT, BUY, 5, 510), DeliveryOpened)
    premium = 510 * 5 * RACK_TV  # 5.10 USDC per kW-day x 5 kW
    bond = -(-premium * 2_500 // 10_000)
    assert opened == DeliveryOpened(1, RACK_SPOT, 1, BOB, ALICE, 5,
                                    window_start=utc_ns(2026, 12, 2),
                                    window_end=utc_ns(2026, 12, 3), premium=premium, bond=bond)
    assert of_type(desk.timer(utc_ns(2026, 12, 2, 23, 59, 59)), DeliverySettled) == []
    settled = one(desk.timer(utc_ns(2026, 12, 3)), DeliverySettled)
    assert settled.seller_paid == premium and settled.bond_released == bond
    assert desk.balances(BOB) == Balances(available=SELLER_FUNDS + premium)


def test_windows_follow_the_fill_time_and_settle_in_window_order() -> None:
    desk = market_with_seller()
    desk.deposit(CAROL, BUYER_FUNDS)
    desk.rest(BOB, GPU_SPOT, SELL, 5, 2600)
    first = one(desk.place(ALICE, GPU_SPOT, BUY, 1, 2600), DeliveryOpened)
    desk.at(DEC_1 + HOUR - 1)  # the last nanosecond of 00:00-01:00
    second = one(desk.place(CAROL, GPU_SPOT, BUY, 1, 2600), DeliveryOpened)
    desk.at(DEC_1 + HOUR)  # 01:00 exactly: the next whole hour is 02:00
    third = one(desk.place(ALICE, GPU_SPOT, BUY, 2, 2600), DeliveryOpened)
    assert [(d.delivery_id, d.window_start) for d in (first, second, third)] == \
        [(1, DEC_1 + HOUR), (2, DEC_1 + HOUR), (3, DEC_1 + 2 * HOUR)]
    assert third.window_end == DEC_1 + 3 * HOUR
    # one late timer settles everything due, in window order
    settled = of_type(desk.timer(DEC_1 + 5 * HOUR), DeliverySettled)
    assert [s.delivery_id for s in settled] == [1, 2, 3]
    one_bond = 2600 * GPU_TV // 4  # Bob's fifth lot still rests
    assert desk.balances(BOB) == Balances(available=SELLER_FUNDS + 4 * 2600 * GPU_TV - one_bond,
                                          reserved=one_bond)


def test_capacity_frees_once_the_window_has_passed() -> None:
    desk = market_with_seller(capacity=2)
    desk.rest(BOB, GPU_SPOT, SELL, 2, 2600)
    desk.place(ALICE, GPU_SPOT, BUY, 2, 2600)  # sold 2 for 01:00-02:00
    assert desk.ex.sold == {(BOB, "GPU.H100", DEC_1 + HOUR): 2}
    refused = desk.place(BOB, GPU_SPOT, SELL, 1, 2600)
    assert one(refused, OrderRejected).reason == Reason.CAPACITY_EXCEEDED
    desk.at(DEC_1 + HOUR)  # orders now deliver 02:00-03:00, where nothing is sold yet
    assert of_type(desk.place(BOB, GPU_SPOT, SELL, 2, 2600), OrderAccepted)
    desk.timer(DEC_1 + 2 * HOUR)
    assert desk.ex.sold == {}
    assert desk.ex.open_sells == {(BOB, GPU_SPOT): 2}


def test_partial_fills_open_one_delivery_per_fill() -> None:
    desk = market_with_seller()
    desk.capacity(CAROL, "GPU.H100", 10)
    desk.deposit(CAROL, SELLER_FUNDS)
    desk.rest(BOB, GPU_SPOT, SELL, 1, 2600)
    desk.rest(CAROL, GPU_SPOT, SELL, 2, 2610)
    events = desk.place(ALICE, GPU_SPOT, BUY, 5, 2620)
    opened = of_type(events, DeliveryOpened)
    assert [(d.seller, d.qty, d.premium) for d in opened] == \
        [(BOB, 1, 2600 * GPU_TV), (CAROL, 2, 2 * 2610 * GPU_TV)]
    # 2 lots rest; the lock on them stays at Alice's limit
    rest_lock = 2 * 2620 * GPU_TV + 2 * 2620 * GPU_TV * 5 // 10_000
    paid = 2600 * GPU_TV + 2 * 2610 * GPU_TV
    fees = 2600 * GPU_TV * 5 // 10_000 + 2 * 2610 * GPU_TV * 5 // 10_000
    assert desk.balances(ALICE) == Balances(available=BUYER_FUNDS - rest_lock - paid - fees,
                                            reserved=rest_lock, escrow=paid)
    # the exchange knows two live sells less and its own buy order
    assert [(o.side, o.remaining) for o in desk.ex.orders.values()] == [(Side.BUY, 2)]


def test_a_partly_delivered_window_pays_the_seller_its_share_and_compensates_the_buyer() -> None:
    desk = market_with_seller()
    desk.rest(BOB, GPU_SPOT, SELL, 4, 2600)
    desk.place(ALICE, GPU_SPOT, BUY, 4, 2600)
    premium, bond = 2600 * 4 * GPU_TV, 2600 * 4 * GPU_TV // 4
    assert desk.apply(SettleDelivery(1, 9, 12)) == [  # the window has not even begun
        CommandRejected("settle_delivery", "", 1, Reason.DELIVERY_NOT_DUE)]
    desk.at(DEC_1 + 2 * HOUR)
    # 9 of 12 node-epochs proven: three quarters delivered
    events = desk.apply(SettleDelivery(1, 9, 12))
    earned = premium * 9 // 12
    compensation = bond * 3 // 12
    assert one(events, DeliverySettled) == DeliverySettled(
        1, delivered=9, required=12, seller_paid=earned, seller_fee=0,
        buyer_refund=premium - earned, buyer_compensation=compensation,
        bond_released=bond - compensation)
    assert desk.balances(BOB) == Balances(available=SELLER_FUNDS + earned - compensation)
    assert desk.balances(ALICE) == Balances(
        available=BUYER_FUNDS - premium * 5 // 10_000 - earned + compensation)
    # settled once: the window's end passes quietly, and a second settlement is refused
    assert of_type(desk.timer(), DeliverySettled) == []
    assert desk.apply(SettleDelivery(1, 12, 12)) == [
        CommandRejected("settle_delivery", "", 1, Reason.UNKNOWN_DELIVERY)]


def test_a_delivered_fraction_outside_zero_to_one_is_refused() -> None:
    desk = market_with_seller()
    desk.rest(BOB, GPU_SPOT, SELL, 1, 2600)
    desk.place(ALICE, GPU_SPOT, BUY, 1, 2600)
    for delivered, required in ((13, 12), (-1, 12), (0, 0)):
        assert desk.apply(SettleDelivery(1, delivered, required)) == [
            CommandRejected("settle_delivery", "", 1, Reason.INVALID_AMOUNT)]
    assert len(desk.ex.deliveries) == 1


def test_the_clock_is_due_exactly_when_a_window_closes_or_a_future_halts() -> None:
    desk = market_with_seller()
    window_end = DEC_1 + 2 * HOUR
    assert not desk.ex.timer_due(window_end)  # nothing sold yet
    desk.rest(BOB, GPU_SPOT, SELL, 3, 2600)
    desk.place(ALICE, GPU_SPOT, BUY, 3, 2600)
    assert not desk.ex.timer_due(window_end - 1)
    assert desk.ex.timer_due(window_end)
    desk.timer(window_end)
    assert not desk.ex.timer_due(window_end + 1)
    future = min((m for m in desk.ex.markets.values() if not m.spot),
                 key=lambda m: m.last_trade_ns)
    assert not desk.ex.timer_due(future.last_trade_ns - 1)
    assert desk.ex.timer_due(future.last_trade_ns)
    desk.timer(future.last_trade_ns)
    assert future.halted and not desk.ex.timer_due(future.month_end_ns - 1)
    # it settles on the mean of its month's fixes: not due while one is missing
    expiry = future.instrument.expiry
    assert expiry is not None
    days = calendar.monthrange(expiry.year, expiry.month)[1]
    for day in range(1, days):
        desk.fix(future.instrument.underlying, expiry.year * 10000 + expiry.month * 100 + day,
                 2_500_000)
    assert not desk.ex.timer_due(future.month_end_ns + HOUR)
    desk.fix(future.instrument.underlying, expiry.year * 10000 + expiry.month * 100 + days,
             2_500_000)
    assert desk.ex.timer_due(future.month_end_ns)
    desk.timer(future.month_end_ns)
    assert future.settled and not desk.ex.timer_due(future.month_end_ns + 1)
