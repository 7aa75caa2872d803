"""Order entry on the exchange: what each order holds, what is refused and why.

Expected amounts are worked out here from the contract numbers (CONTRACTS.md defaults):
GPU.H100.SPOT ticks are 0.001 USDC on 1 GPU-hour (1 000 micro-USDC per tick-lot), premium
locked 100 %, bond 25 %, taker fee 5 bp, maker 0; GPU.H100.F2612 ticks are 0.005 USDC on
744 GPU-hours (3 720 000 micro-USDC per tick-lot), band 400..600, initial margin 20 % at
the mark (the reference price, 500 ticks, before the first cut); a futures order holds the
taker fee at its limit, a sell at the top of the band (it may trade up to there). Fees round
down, holdings round up.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from engine.commands import AmendOrder, CancelAll, CancelOrder, PlaceOrder
from engine.events import (
    BalanceChanged,
    BookUpdate,
    CommandRejected,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderRejected,
    Reason,
    Trade,
)
from engine.exchange import EXPIRIES_SLACK, Exchange
from engine.exchange_state import decode_state, encode_state
from engine.ledger import FEE_ACCOUNT, INSURANCE_FUND, Balances
from engine.messages import MAX_QTY, OrderType, Side, TimeInForce
from tests.exchange_helpers import (
    ALICE,
    BOB,
    BUY,
    DEC_1,
    GPU_FUT,
    GPU_SPOT,
    HOUR,
    NS,
    SELL,
    Desk,
    instrument,
    new_exchange,
    of_type,
    one,
)

SPOT = instrument(GPU_SPOT)
FUT = instrument(GPU_FUT)
SPOT_TV = SPOT.micro_usdc_per_tick_lot
FUT_TV = FUT.micro_usdc_per_tick_lot
LIMIT, MARKET = OrderType.LIMIT, OrderType.MARKET
GTC, IOC, GTD = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.GTD
RICH = 10**13


def test_the_contract_numbers_these_tests_rely_on() -> None:
    assert (SPOT.reference_price_ticks, SPOT.min_price_ticks, SPOT.max_price_ticks) == \
        (2500, 2125, 2875)
    assert SPOT_TV == 1_000  # 0.001 USDC x 1 GPU-hour
    assert (SPOT.buyer_premium_lock_bp, SPOT.seller_bond_bp) == (10_000, 2_500)
    assert (SPOT.maker_fee_bp, SPOT.taker_fee_bp) == (0, 5)
    assert (FUT.reference_price_ticks, FUT.min_price_ticks, FUT.max_price_ticks) == \
        (500, 400, 600)
    assert FUT_TV == 3_720_000  # 0.005 USDC x 744 hours in December
    assert (FUT.initial_margin_bp, FUT.maintenance_margin_bp) == (2_000, 1_333)
    assert (FUT.maker_fee_bp, FUT.taker_fee_bp) == (0, 5)


def funded(*accounts: str, amount: int = RICH) -> Desk:
    desk = Desk()
    for who in accounts:
        desk.deposit(who, amount)
    return desk


# --- spot buys ------------------------------------------------------------------------------


def test_spot_buy_locks_premium_and_taker_fee_at_its_limit() -> None:
    desk = funded(ALICE, amount=10_000_000)
    events = desk.place(ALICE, GPU_SPOT, BUY, 1, 2501)
    notional = 2501 * 1 * SPOT_TV  # 2 501 000
    taker_fee = notional * 5 // 10_000  # 1 250.5 rounds down to 1 250
    lock = notional + taker_fee
    assert lock == 2_502_250
    assert events == [
        OrderAccepted(1, ALICE, GPU_SPOT, "", BUY, LIMIT, GTC, 2501, 1, 0),
        BookUpdate(GPU_SPOT, BUY, 2501, 1),
        BalanceChanged(ALICE, 10_000_000 - lock, lock, 0, 0),
    ]


@pytest.mark.parametrize("spare", [0, -1])
def test_spot_market_buy_locks_at_the_top_of_the_band(spare: int) -> None:
    notional = 2875 * 3 * SPOT_TV  # the band's top, 2.875 USDC
    lock = notional + notional * 5 // 10_000  # 8 625 000 + 4 312
    desk = funded(ALICE, amount=lock + spare)
    events = desk.place(ALICE, GPU_SPOT, BUY, 3, order_type=MARKET, tif=IOC,
                        client_order_id="m")
    if spare < 0:
        assert events == [OrderRejected(0, ALICE, GPU_SPOT, "m", Reason.INSUFFICIENT_FUNDS)]
    else:
        # nothing to buy: accepted, the rest cancelled, the lock given back
        assert one(events, OrderCancelled) == \
            OrderCancelled(1, ALICE, GPU_SPOT, Reason.IOC_REMAINDER, 3, 0)
    assert desk.balances(ALICE) == Balances(available=lock + spare)


def test_spot_buy_without_funds_is_rejected_and_changes_nothing() -> None:
    desk = funded(ALICE, amount=2_501_249)  # one short of 2 500 000 + 1 250
    events = desk.place(ALICE, GPU_SPOT, BUY, 1, 2500, client_order_id="c1")
    assert events == [OrderRejected(0, ALICE, GPU_SPOT, "c1", Reason.INSUFFICIENT_FUNDS)]
    assert desk.balances(ALICE) == Balances(available=2_501_249)
    assert desk.ex.orders == {}
    assert desk.ex.next_order_id == 1


def test_a_market_buy_fills_below_its_lock_and_gives_the_rest_back() -> None:
    desk = funded(ALICE, BOB)
    desk.capacity(BOB, "GPU.H100", 5)
    desk.rest(BOB, GPU_SPOT, SELL, 1, 2500)
    events = desk.place(ALICE, GPU_SPOT, BUY, 3, order_type=MARKET, tif=IOC)
    premium = 2500 * 1 * SPOT_TV
    fee = premium * 5 // 10_000
    assert one(events, Trade).taker_fee == fee == 1_250
    assert desk.balances(ALICE) == Balances(available=RICH - premium - fee, escrow=premium)


# --- spot sells -----------------------------------------------------------------------------


def test_spot_sell_locks_a_quarter_of_its_limit_notional_as_bond() -> None:
    desk = funded(BOB, amount=10_000_000)
    desk.capacity(BOB, "GPU.H100", 10)
    events = desk.place(BOB, GPU_SPOT, SELL, 3, 2600)
    bond = -(-2600 * 3 * SPOT_TV * 2_500 // 10_000)  # 7 800 000 / 4
    assert bond == 1_950_000
    assert one(events, BalanceChanged) == BalanceChanged(BOB, 10_000_000 - bond, bond, 0, 0)


def test_spot_market_sell_bonds_at_the_best_bid_it_sells_to() -> None:
    desk = funded(BOB, amount=10_000_000)
    desk.capacity(BOB, "GPU.H100", 10)
    desk.deposit(ALICE, RICH)
    desk.rest(ALICE, GPU_SPOT, BUY, 1, 2700)
    desk.place(BOB, GPU_SPOT, SELL, 1, order_type=MARKET, tif=IOC)
    bond = -(-2700 * 1 * SPOT_TV * 2_500 // 10_000)  # 25 % of what the sell traded for
    assert desk.balances(BOB) == Balances(available=10_000_000 - bond, escrow=bond)


def test_a_spot_stop_sell_bonds_at_the_top_of_the_band() -> None:
    desk = funded(BOB, amount=10_000_000)
    desk.capacity(BOB, "GPU.H100", 10)
    desk.place(BOB, GPU_SPOT, SELL, 2, 2400, order_type=OrderType.STOP_LIMIT, stop_price=2450)
    bond = -(-2875 * 2 * SPOT_TV * 2_500 // 10_000)  # it may trigger into any bid
    assert desk.balances(BOB) == Balances(available=10_000_000 - bond, reserved=bond)


def test_spot_bond_rounds_up_and_fee_rounds_down() -> None:
    # A spot of 0.000001 USDC ticks: one tick-lot is one micro-USDC, so rounding shows.
    fine = msgspec.structs.replace(SPOT, price_precision=6)
    assert fine.micro_usdc_per_tick_lot == 1
    desk = Desk(new_exchange(instruments=[fine]))
    desk.deposit(ALICE, 10_000)
    desk.deposit(BOB, 10_000)
    desk.capacity(BOB, "GPU.H100", 1)
    desk.place(BOB, GPU_SPOT, SELL, 1, 2501)
    assert desk.balances(BOB).reserved == 626  # 2501 / 4 = 625.25, held rounded up
    desk.place(ALICE, GPU_SPOT, BUY, 1, 2501)
    assert desk.balances(ALICE) == Balances(available=10_000 - 2501 - 1, escrow=2501)
    assert desk.balances(FEE_ACCOUNT).available == 1  # 2501 x 5 bp = 1.25, charged 1


def test_spot_sell_needs_capacity() -> None:
    desk = funded(BOB)
    events = desk.place(BOB, GPU_SPOT, SELL, 1, 2600, client_order_id="s")
    assert events == [OrderRejected(0, BOB, GPU_SPOT, "s", Reason.CAPACITY_EXCEEDED)]
    desk.capacity(BOB, "GPU.H200", 5)  # another class does not count
    assert one(desk.place(BOB, GPU_SPOT, SELL, 1, 2600), OrderRejected).reason == \
        Reason.CAPACITY_EXCEEDED
    desk.capacity(BOB, "GPU.H100", 1)
    assert of_type(desk.place(BOB, GPU_SPOT, SELL, 1, 2600), OrderAccepted)


def test_capacity_counts_open_sells_and_what_is_sold_for_the_next_window() -> None:
    desk = funded(ALICE, BOB)
    desk.capacity(BOB, "GPU.H100", 5)
    desk.rest(BOB, GPU_SPOT, SELL, 3, 2600)
    assert one(desk.place(BOB, GPU_SPOT, SELL, 3, 2600), OrderRejected).reason == \
        Reason.CAPACITY_EXCEEDED  # 3 open + 3 > 5
    desk.rest(BOB, GPU_SPOT, SELL, 2, 2610)  # 5 open
    desk.place(ALICE, GPU_SPOT, BUY, 4, 2650)  # 4 sold for 01:00-02:00, 1 still open
    assert desk.ex.open_sells == {(BOB, GPU_SPOT): 1}
    assert one(desk.place(BOB, GPU_SPOT, SELL, 1, 2600), OrderRejected).reason == \
        Reason.CAPACITY_EXCEEDED  # 1 open + 4 sold + 1 > 5
    # a sell placed once that window has begun delivers in the next one
    desk.at(DEC_1 + HOUR)
    assert of_type(desk.place(BOB, GPU_SPOT, SELL, 4, 2600), OrderAccepted)
    assert one(desk.place(BOB, GPU_SPOT, SELL, 1, 2600), OrderRejected).reason == \
        Reason.CAPACITY_EXCEEDED


# --- futures --------------------------------------------------------------------------------


def fee_lock(price: int, qty: int, side: Side = BUY) -> int:
    """The taker fee a futures order holds: a buy's on its limit, a sell's on the band top."""
    worst = price if side == BUY else 600
    return worst * qty * FUT_TV * 5 // 10_000


def initial_margin(lots: int, mark: int = 500) -> int:
    return -(-lots * mark * FUT_TV * 2_000 // 10_000)


@pytest.mark.parametrize("spare", [0, -1])
def test_futures_order_holds_its_fee_and_initial_margin_at_the_mark(spare: int) -> None:
    need = 510 * 2 * FUT_TV * 5 // 10_000 + 2 * 500 * FUT_TV * 2_000 // 10_000
    assert need == 1_897_200 + 744_000_000
    desk = funded(ALICE, amount=need + spare)
    events = desk.place(ALICE, GPU_FUT, BUY, 2, 510, client_order_id="f")
    if spare < 0:
        assert events == [OrderRejected(0, ALICE, GPU_FUT, "f", Reason.INSUFFICIENT_MARGIN)]
        assert desk.balances(ALICE) == Balances(available=need - 1)
    else:
        assert of_type(events, OrderAccepted)
        assert desk.balances(ALICE) == Balances(available=0, reserved=need)


def long_two(desk: Desk) -> None:
    """Alice buys 2 lots from Bob at the mark (500): no unsettled PnL."""
    desk.rest(BOB, GPU_FUT, SELL, 2, 500)
    desk.place(ALICE, GPU_FUT, BUY, 2, 500)


@pytest.mark.parametrize("spare", [0, -1])
def test_a_sell_against_a_long_position_needs_only_its_fee(spare: int) -> None:
    sell_fee = fee_lock(520, 2, SELL)
    assert sell_fee == 2_232_000  # on 600, the highest price the sell can trade at
    buy_cost = fee_lock(500, 2) + initial_margin(2)  # the fee charged equals its lock here
    desk = funded(BOB)
    desk.deposit(ALICE, buy_cost + sell_fee + spare)
    long_two(desk)
    assert desk.balances(ALICE) == \
        Balances(available=sell_fee + spare, margin=initial_margin(2))
    events = desk.place(ALICE, GPU_FUT, SELL, 2, 520, client_order_id="r")
    if spare < 0:
        assert events == [OrderRejected(0, ALICE, GPU_FUT, "r", Reason.INSUFFICIENT_MARGIN)]
    else:
        assert desk.balances(ALICE) == \
            Balances(available=0, reserved=sell_fee, margin=initial_margin(2))


def test_margin_is_held_on_the_worse_side_of_position_and_orders() -> None:
    desk = funded(ALICE, BOB)
    long_two(desk)
    margin = initial_margin(2)
    # long 2, selling 5: worst case short 3 -> one lot more than the position holds
    desk.rest(ALICE, GPU_FUT, SELL, 5, 500)
    reserved = fee_lock(500, 5, SELL) + initial_margin(3) - margin
    assert desk.balances(ALICE).reserved == reserved == 5_580_000 + 372_000_000
    # buying 1 as well: worst case long 3, no worse than short 3
    desk.rest(ALICE, GPU_FUT, BUY, 1, 450)
    reserved += fee_lock(450, 1)
    assert desk.balances(ALICE).reserved == reserved
    # buying 2 more: worst case long 5
    desk.rest(ALICE, GPU_FUT, BUY, 2, 450)
    reserved += fee_lock(450, 2) + initial_margin(5) - initial_margin(3)
    assert desk.balances(ALICE).reserved == reserved
    assert desk.balances(ALICE).margin == margin
    desk.cancel_all(ALICE)
    assert desk.balances(ALICE) == Balances(
        available=RICH - fee_lock(500, 2) - margin, margin=margin)


# --- cancel and amend -----------------------------------------------------------------------


@pytest.mark.parametrize(("symbol", "side", "price"), [
    (GPU_SPOT, BUY, 2499), (GPU_SPOT, SELL, 2601), (GPU_FUT, BUY, 505), (GPU_FUT, SELL, 495),
])
def test_cancel_releases_exactly_what_the_order_held(symbol: str, side: Side,
                                                     price: int) -> None:
    desk = funded(ALICE)
    desk.capacity(ALICE, "GPU.H100", 10)
    order_id = desk.rest(ALICE, symbol, side, 3, price)
    assert desk.balances(ALICE).reserved > 0
    events = desk.cancel(ALICE, symbol, order_id)
    assert one(events, OrderCancelled) == \
        OrderCancelled(order_id, ALICE, symbol, Reason.USER, 3, 0)
    assert one(events, BalanceChanged) == BalanceChanged(ALICE, RICH, 0, 0, 0)
    assert desk.ex.orders == {}
    assert desk.ex.open_sells == {}


def test_spot_amend_up_needs_funds_and_amend_down_releases() -> None:
    lock = 2500 * SPOT_TV + 2500 * SPOT_TV * 5 // 10_000  # 2 500 000 + 1 250
    desk = funded(ALICE, amount=lock)
    order_id = desk.rest(ALICE, GPU_SPOT, BUY, 1, 2500)
    assert desk.balances(ALICE) == Balances(available=0, reserved=lock)
    assert desk.amend(ALICE, GPU_SPOT, order_id, 2500, 2) == \
        [OrderRejected(order_id, ALICE, GPU_SPOT, "", Reason.INSUFFICIENT_FUNDS)]
    assert desk.amend(ALICE, GPU_SPOT, order_id, 2501, 1) == \
        [OrderRejected(order_id, ALICE, GPU_SPOT, "", Reason.INSUFFICIENT_FUNDS)]
    events = desk.amend(ALICE, GPU_SPOT, order_id, 2400, 1)
    lower = 2400 * SPOT_TV + 2400 * SPOT_TV * 5 // 10_000  # 2 400 000 + 1 200
    assert one(events, OrderAmended) == OrderAmended(order_id, ALICE, GPU_SPOT, 2400, 1)
    assert one(events, BalanceChanged) == BalanceChanged(ALICE, lock - lower, lower, 0, 0)
    # back up to where the funds just reach
    desk.amend(ALICE, GPU_SPOT, order_id, 2500, 1)
    assert desk.balances(ALICE) == Balances(available=0, reserved=lock)


def test_futures_amend_up_needs_margin_and_amend_down_releases() -> None:
    need = fee_lock(500, 1) + initial_margin(1)  # 930 000 + 372 000 000
    desk = funded(ALICE, amount=need)
    order_id = desk.rest(ALICE, GPU_FUT, BUY, 1, 500)
    assert desk.amend(ALICE, GPU_FUT, order_id, 500, 2) == \
        [OrderRejected(order_id, ALICE, GPU_FUT, "", Reason.INSUFFICIENT_MARGIN)]
    desk.amend(ALICE, GPU_FUT, order_id, 450, 1)  # the fee lock shrinks, margin is at the mark
    assert desk.balances(ALICE) == Balances(
        available=fee_lock(500, 1) - fee_lock(450, 1),
        reserved=fee_lock(450, 1) + initial_margin(1))
    desk.deposit(ALICE, need)
    desk.amend(ALICE, GPU_FUT, order_id, 450, 2)
    assert desk.balances(ALICE).reserved == fee_lock(450, 2) + initial_margin(2)
    desk.amend(ALICE, GPU_FUT, order_id, 450, 1)
    assert desk.balances(ALICE).reserved == fee_lock(450, 1) + initial_margin(1)


def test_amending_a_spot_sell_up_needs_capacity() -> None:
    desk = funded(BOB)
    desk.capacity(BOB, "GPU.H100", 2)
    order_id = desk.rest(BOB, GPU_SPOT, SELL, 2, 2600)
    assert desk.amend(BOB, GPU_SPOT, order_id, 2600, 3) == \
        [OrderRejected(order_id, BOB, GPU_SPOT, "", Reason.CAPACITY_EXCEEDED)]
    assert of_type(desk.amend(BOB, GPU_SPOT, order_id, 2650, 2), OrderAmended)
    assert of_type(desk.amend(BOB, GPU_SPOT, order_id, 2650, 1), OrderAmended)
    assert desk.ex.open_sells == {(BOB, GPU_SPOT): 1}
    bond = -(-2650 * 1 * SPOT_TV * 2_500 // 10_000)
    assert desk.balances(BOB) == Balances(available=RICH - bond, reserved=bond)


# --- refusals -------------------------------------------------------------------------------

PLACE_REFUSALS: list[tuple[dict[str, Any], Reason]] = [
    ({"symbol": "GPU.X1.SPOT"}, Reason.UNKNOWN_SYMBOL),
    ({"symbol": "GPU.H100.F2611"}, Reason.UNKNOWN_SYMBOL),  # expired before listing
    ({"account": ALICE.upper().replace("0X", "0x")}, Reason.INVALID_ACCOUNT),
    ({"account": ALICE[:-1]}, Reason.INVALID_ACCOUNT),
    ({"account": "alice"}, Reason.INVALID_ACCOUNT),
    ({"account": FEE_ACCOUNT}, Reason.INVALID_ACCOUNT),
    ({"account": INSURANCE_FUND}, Reason.INVALID_ACCOUNT),
    ({"qty": 0}, Reason.INVALID_QUANTITY),
    ({"qty": -2}, Reason.INVALID_QUANTITY),
    ({"price": 0}, Reason.INVALID_PRICE),
    ({"price": -2500}, Reason.INVALID_PRICE),
    ({"price": 2124}, Reason.PRICE_OUT_OF_BAND),
    ({"price": 2876}, Reason.PRICE_OUT_OF_BAND),
    ({"order_type": MARKET}, Reason.INVALID_ORDER),  # a market order cannot rest (GTC)
    ({"tif": GTD}, Reason.INVALID_ORDER),  # GTD without an expiry
    ({"tif": GTD, "expire_ts": 1}, Reason.INVALID_EXPIRY),
    ({"display_qty": 3}, Reason.INVALID_QUANTITY),
    ({"post_only": True, "tif": IOC}, Reason.INVALID_ORDER),
    ({"order_type": OrderType.STOP_LIMIT, "stop_price": 0}, Reason.INVALID_PRICE),
]


@pytest.mark.parametrize(("change", "reason"), PLACE_REFUSALS)
def test_refused_orders_say_why_and_change_nothing(change: dict[str, Any],
                                                   reason: Reason) -> None:
    desk = funded(ALICE)
    before = desk.balances(ALICE)
    order = msgspec.structs.replace(
        PlaceOrder(ALICE, GPU_SPOT, BUY, 2, 2500, client_order_id="x"), **change)
    events = desk.apply(order)
    assert events == [OrderRejected(0, order.account, order.symbol, "x", reason)]
    assert desk.balances(ALICE) == before
    assert desk.ex.orders == {}


@pytest.mark.parametrize(("price", "qty", "reason"), [
    (0, 1, Reason.INVALID_PRICE),
    (2876, 1, Reason.PRICE_OUT_OF_BAND),
    (2500, 0, Reason.INVALID_QUANTITY),
    (2500, -1, Reason.INVALID_QUANTITY),
])
def test_refused_amends_say_why_and_change_nothing(price: int, qty: int,
                                                   reason: Reason) -> None:
    desk = funded(ALICE)
    order_id = desk.rest(ALICE, GPU_SPOT, BUY, 2, 2500)
    before = desk.balances(ALICE)
    assert desk.amend(ALICE, GPU_SPOT, order_id, price, qty) == \
        [OrderRejected(order_id, ALICE, GPU_SPOT, "", reason)]
    assert desk.balances(ALICE) == before


def test_post_only_amend_that_would_cross_and_stop_amend_are_refused() -> None:
    desk = funded(ALICE, BOB)
    desk.capacity(BOB, "GPU.H100", 5)
    desk.rest(BOB, GPU_SPOT, SELL, 1, 2550)
    maker = desk.rest(ALICE, GPU_SPOT, BUY, 1, 2500, post_only=True)
    assert desk.amend(ALICE, GPU_SPOT, maker, 2550, 1) == \
        [OrderRejected(maker, ALICE, GPU_SPOT, "", Reason.WOULD_CROSS)]
    stop = desk.rest(ALICE, GPU_SPOT, BUY, 1, 2600, order_type=OrderType.STOP_LIMIT,
                     stop_price=2600)
    assert desk.amend(ALICE, GPU_SPOT, stop, 2610, 1) == \
        [OrderRejected(stop, ALICE, GPU_SPOT, "", Reason.NOT_AMENDABLE)]


def test_orders_of_another_account_are_unknown() -> None:
    desk = funded(ALICE, BOB)
    order_id = desk.rest(ALICE, GPU_SPOT, BUY, 1, 2500)
    held = desk.balances(ALICE)
    unknown = [OrderRejected(order_id, BOB, GPU_SPOT, "", Reason.UNKNOWN_ORDER)]
    assert desk.cancel(BOB, GPU_SPOT, order_id) == unknown
    assert desk.amend(BOB, GPU_SPOT, order_id, 2400, 1) == unknown
    assert desk.apply(CancelOrder(ALICE, GPU_FUT, order_id)) == \
        [OrderRejected(order_id, ALICE, GPU_FUT, "", Reason.UNKNOWN_ORDER)]
    assert desk.apply(AmendOrder(ALICE, GPU_SPOT, 99, 2400, 1)) == \
        [OrderRejected(99, ALICE, GPU_SPOT, "", Reason.UNKNOWN_ORDER)]
    assert desk.apply(CancelOrder("nobody", GPU_SPOT, order_id)) == \
        [OrderRejected(order_id, "nobody", GPU_SPOT, "", Reason.UNKNOWN_ORDER)]
    assert desk.ex.orders[order_id].remaining == 1
    assert desk.balances(ALICE) == held


def test_cancel_all_by_symbol_and_side() -> None:
    desk = funded(ALICE, BOB)
    desk.capacity(ALICE, "GPU.H100", 5)
    spot_buy = desk.rest(ALICE, GPU_SPOT, BUY, 1, 2400)
    spot_sell = desk.rest(ALICE, GPU_SPOT, SELL, 1, 2600)
    fut_buy = desk.rest(ALICE, GPU_FUT, BUY, 1, 490)
    fut_sell = desk.rest(ALICE, GPU_FUT, SELL, 1, 510)
    bobs = desk.rest(BOB, GPU_SPOT, BUY, 1, 2400)

    def cancelled(events: list[Any]) -> list[tuple[int, Reason]]:
        return [(e.order_id, e.reason) for e in of_type(events, OrderCancelled)]

    mass = Reason.MASS_CANCEL
    assert cancelled(desk.cancel_all(ALICE, GPU_SPOT, BUY)) == [(spot_buy, mass)]
    # every symbol, in symbol order (GPU.H100.F2612 before GPU.H100.SPOT)
    assert cancelled(desk.cancel_all(ALICE, None, SELL)) == [(fut_sell, mass), (spot_sell, mass)]
    assert cancelled(desk.cancel_all(ALICE)) == [(fut_buy, mass)]
    assert cancelled(desk.cancel_all(ALICE)) == []
    assert desk.balances(ALICE) == Balances(available=RICH)
    assert sorted(desk.ex.orders) == [bobs]


def test_cancel_all_on_an_unknown_symbol_is_refused() -> None:
    desk = funded(ALICE)
    assert desk.apply(CancelAll(ALICE, "GPU.X1.SPOT")) == \
        [CommandRejected("cancel_all", ALICE, 0, Reason.UNKNOWN_SYMBOL)]


def test_cancel_all_from_an_invalid_account_is_refused() -> None:
    desk = funded(ALICE)
    assert desk.apply(CancelAll("not-an-address")) == [
        CommandRejected("cancel_all", "not-an-address", 0, Reason.INVALID_ACCOUNT)]
    assert desk.apply(CancelAll(ALICE, "GPU.NOPE.SPOT")) == [
        CommandRejected("cancel_all", ALICE, 0, Reason.UNKNOWN_SYMBOL)]


@pytest.mark.parametrize("field", ["price", "qty", "display_qty", "stop_price", "expire_ts"])
def test_integers_beyond_int64_are_refused_not_crashed_on(field: str) -> None:
    desk = funded(ALICE)
    order = msgspec.structs.replace(PlaceOrder(ALICE, GPU_FUT, BUY, 1, 500),
                                    **{field: 1 << 63})
    assert [type(e) for e in desk.apply(order)] == [OrderRejected]
    resting = desk.rest(ALICE, GPU_FUT, BUY, 1, 500)
    assert one(desk.apply(AmendOrder(ALICE, GPU_FUT, resting, 500, 1 << 64)),
               OrderRejected).reason == Reason.INVALID_ORDER
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode(order), type=PlaceOrder)


def test_quantities_beyond_the_book_limit_are_refused() -> None:
    desk = funded(ALICE)
    events = desk.apply(PlaceOrder(ALICE, GPU_FUT, BUY, MAX_QTY + 1, 500))
    assert one(events, OrderRejected).reason in (Reason.INVALID_QUANTITY,
                                                 Reason.INSUFFICIENT_MARGIN)


def test_the_clock_is_due_when_a_resting_gtd_order_expires_also_after_a_restore() -> None:
    desk = Desk()
    desk.deposit(ALICE, 10_000_000)
    expiry = desk.ts + HOUR
    kept = desk.rest(ALICE, GPU_SPOT, BUY, 1, 2400, tif=GTD, expire_ts=expiry)
    cancelled = desk.rest(ALICE, GPU_SPOT, BUY, 1, 2390, tif=GTD, expire_ts=expiry - 60 * NS)
    desk.cancel(ALICE, GPU_SPOT, cancelled)  # its expiry no longer makes the clock due
    assert not desk.ex.timer_due(expiry - 1)
    assert not desk.ex.timer_due(expiry)  # a book expires orders earlier than now
    restored = Exchange.restore(decode_state(encode_state(desk.ex.state())))
    for exchange in (desk.ex, restored):
        assert exchange.timer_due(expiry + 1)
    events = desk.timer(expiry + 1)
    assert one(events, OrderCancelled).order_id == kept
    assert not desk.ex.timer_due(expiry + 2)


def test_expiries_of_cancelled_gtd_orders_do_not_pile_up() -> None:
    desk = Desk()
    desk.deposit(ALICE, 10_000_000_000)
    early = desk.ts + HOUR
    desk.rest(ALICE, GPU_SPOT, BUY, 1, 2400, tif=GTD, expire_ts=early)
    for n in range(3_000):  # far-dated GTD orders placed and cancelled at once
        order_id = desk.rest(ALICE, GPU_SPOT, BUY, 1, 2300, tif=GTD,
                             expire_ts=early + (n + 1) * HOUR)
        desk.cancel(ALICE, GPU_SPOT, order_id)
    assert len(desk.ex.orders) == 1
    assert len(desk.ex._expiries) <= 2 * len(desk.ex.orders) + EXPIRIES_SLACK
    assert desk.ex.timer_due(early + 1)
