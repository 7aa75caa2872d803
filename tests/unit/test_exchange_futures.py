"""Futures: positions, fees, clearing cuts, variation margin, liquidation, insurance.

GPU.H100.F2612 (December 2026): 3 720 000 micro-USDC per tick-lot (0.005 USDC x 744 hours),
band 400..600 ticks around the reference 500, initial margin 20 %, maintenance 13.33 %,
maker fee 0, taker 5 bp. Index fixes are micro-USDC per GPU-hour: one tick is 5 000 of them.
"""

from __future__ import annotations

import msgspec
import pytest

from engine.commands import CreditDeposit, SettleDelivery
from engine.events import (
    ClearingCompleted,
    CommandRejected,
    ExchangeEvent,
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
    WithdrawalRequested,
)
from engine.ledger import FEE_ACCOUNT, INSURANCE_FUND, Balances
from engine.messages import OrderType, TimeInForce
from tests.exchange_helpers import (
    ALICE,
    BOB,
    BUY,
    CAROL,
    DAVE,
    GPU_FUT,
    GPU_FUT_NEXT,
    GPU_SPOT,
    NS,
    SELL,
    START,
    Desk,
    instrument,
    new_exchange,
    of_type,
    one,
)

FUT = instrument(GPU_FUT)
TV = FUT.micro_usdc_per_tick_lot
RICH = 10**13


def test_the_contract_numbers_these_tests_rely_on() -> None:
    assert TV == 3_720_000
    assert (FUT.min_price_ticks, FUT.reference_price_ticks, FUT.max_price_ticks) == \
        (400, 500, 600)
    assert (FUT.initial_margin_bp, FUT.maintenance_margin_bp) == (2_000, 1_333)
    assert (FUT.maker_fee_bp, FUT.taker_fee_bp) == (0, 5)


def taker_fee(price: int, qty: int) -> int:
    return price * qty * TV * 5 // 10_000


def initial_margin(lots: int, mark: int) -> int:
    return -(-lots * mark * TV * 2_000 // 10_000)


def maintenance_margin(lots: int, mark: int) -> int:
    return -(-lots * mark * TV * 1_333 // 10_000)


def funded(*accounts: str) -> Desk:
    desk = Desk()
    for who in accounts:
        desk.deposit(who, RICH)
    return desk


def trade(desk: Desk, buyer: str, seller: str, qty: int, price: int, *,
          maker: str | None = None, symbol: str = GPU_FUT) -> list[ExchangeEvent]:
    """``buyer`` buys ``qty`` from ``seller``; the maker (default the seller) rests first."""
    if (maker or seller) == seller:
        desk.rest(seller, symbol, SELL, qty, price)
        events = desk.place(buyer, symbol, BUY, qty, price)
    else:
        desk.rest(buyer, symbol, BUY, qty, price)
        events = desk.place(seller, symbol, SELL, qty, price)
    assert one(events, Trade).qty == qty
    return events


def positions(events: list[ExchangeEvent], who: str) -> list[tuple[int, int, int]]:
    return [(p.qty, p.entry_value, p.realized_pnl)
            for p in of_type(events, PositionChanged) if p.account == who]


# --- positions and fees ---------------------------------------------------------------------


def test_positions_keep_entry_value_and_realized_pnl_through_increase_reduce_and_flip() -> None:
    desk = funded(ALICE, BOB)
    steps = [
        trade(desk, ALICE, BOB, 2, 500),
        trade(desk, ALICE, BOB, 1, 510),
        trade(desk, BOB, ALICE, 2, 520, maker=BOB),
        trade(desk, BOB, ALICE, 3, 490, maker=BOB),
    ]
    # reducing 2 of 3 lots removes 1510 x 2 / 3 = 1006 (truncated) of the entry value
    # closing at 520: (520 x 2 - 1006) ticks; flipping closes the last lot (504) at 490
    alice = [(2, 1000, 0), (3, 1510, 0), (1, 504, 34 * TV), (-2, -2 * 490, (34 - 14) * TV)]
    bob = [(-2, -1000, 0), (-3, -1510, 0), (-1, -504, -34 * TV), (2, 2 * 490, -(34 - 14) * TV)]
    assert [positions(events, ALICE) for events in steps] == [[p] for p in alice]
    assert [positions(events, BOB) for events in steps] == [[p] for p in bob]
    fees = taker_fee(500, 2) + taker_fee(510, 1) + taker_fee(520, 2) + taker_fee(490, 3)
    assert sum(one(events, Trade).taker_fee for events in steps) == fees
    assert desk.balances(FEE_ACCOUNT) == Balances(available=fees)


def test_fees_are_charged_to_both_sides_by_their_role() -> None:
    with_maker_fee = msgspec.structs.replace(FUT, maker_fee_bp=2)
    desk = Desk(new_exchange(instruments=[with_maker_fee]))
    desk.deposit(ALICE, RICH)
    desk.deposit(BOB, RICH)
    desk.rest(BOB, GPU_FUT, SELL, 2, 500)
    found = one(desk.place(ALICE, GPU_FUT, BUY, 2, 500), Trade)
    notional = 500 * 2 * TV
    maker_fee, fee = notional * 2 // 10_000, notional * 5 // 10_000
    assert (found.maker_fee, found.taker_fee) == (maker_fee, fee) == (744_000, 1_860_000)
    assert desk.balances(FEE_ACCOUNT) == Balances(available=maker_fee + fee)
    im = initial_margin(2, 500)
    assert desk.balances(BOB) == Balances(available=RICH - im - maker_fee, margin=im)
    assert desk.balances(ALICE) == Balances(available=RICH - im - fee, margin=im)


@pytest.mark.parametrize("order_type", [OrderType.LIMIT, OrderType.MARKET],
                         ids=["limit", "market"])
def test_a_sell_that_trades_above_its_limit_cannot_take_available_below_zero(
        order_type: OrderType) -> None:
    # The ledger promises that available goes below zero only at a clearing cut. A taker sell
    # trades at the bid, above its limit, and pays the fee there: 1 116 000 at 600. Alice has
    # margin and the fee on her limit, no more.
    limit = 500 if order_type == OrderType.LIMIT else 400  # a market sell holds at the bottom
    desk = funded(BOB)
    desk.deposit(ALICE, taker_fee(limit, 1) + initial_margin(1, 500))
    desk.rest(BOB, GPU_FUT, BUY, 1, 600)
    tif = TimeInForce.IOC if order_type == OrderType.MARKET else TimeInForce.GTC
    desk.place(ALICE, GPU_FUT, SELL, 1, 500 if order_type == OrderType.LIMIT else 0,
               order_type=order_type, tif=tif)
    # either the order is refused or it leaves Alice's available at zero or above
    assert desk.balances(ALICE).available >= 0, desk.balances(ALICE)


# --- marks ----------------------------------------------------------------------------------


def mark_of(events: list[ExchangeEvent], symbol: str = GPU_FUT) -> tuple[int, str]:
    found = [m for m in of_type(events, MarkPrice) if m.symbol == symbol]
    assert len(found) == 1
    return found[0].price, found[0].source


def test_a_cut_marks_every_live_future_and_counts_itself() -> None:
    desk = funded(ALICE)
    events = desk.cut()
    futures = [i.symbol for i in desk.ex.markets.values() if i.instrument.expiry is not None]
    assert [m.symbol for m in of_type(events, MarkPrice)] == sorted(futures)
    assert len(futures) == 60
    assert events[-1] == ClearingCompleted(1)
    assert desk.cut()[-1] == ClearingCompleted(2)


def test_the_mark_is_the_mid_of_the_book() -> None:
    desk = funded(CAROL)
    desk.rest(CAROL, GPU_FUT, BUY, 1, 495)
    desk.rest(CAROL, GPU_FUT, SELL, 1, 512)
    assert mark_of(desk.cut()) == ((495 + 512) // 2, "mid")
    assert desk.ex.markets[GPU_FUT].mark == 503


def test_without_both_sides_the_mark_is_the_last_trade() -> None:
    desk = funded(ALICE, BOB, CAROL)
    trade(desk, ALICE, BOB, 1, 520)
    desk.rest(CAROL, GPU_FUT, BUY, 1, 480)
    desk.fix("GPU.H100", 20261201, 2_400_000)  # the last trade comes first
    assert mark_of(desk.cut()) == (520, "last_trade")


@pytest.mark.parametrize(("fix", "mark"), [
    (2_512_499, 502),  # 502.4998 ticks
    (2_512_500, 503),  # 502.5 rounds half up
    (2_500_000, 500),
    (4_000_000, 600),  # 800 ticks, clamped to the band
    (1_000_000, 400),  # 200 ticks, clamped to the band
])
def test_without_a_book_or_trades_the_mark_is_the_latest_index_fix(fix: int,
                                                                   mark: int) -> None:
    desk = funded(ALICE)
    desk.fix("GPU.H100", 20261202, fix)
    desk.fix("GPU.H100", 20261201, 2_000_000)  # recorded later, but an earlier day
    desk.fix("GPU.H200", 20261203, 3_000_000)  # another underlying
    assert mark_of(desk.cut()) == (mark, "index")


def test_with_nothing_to_go_by_the_mark_stays_where_it_was() -> None:
    desk = funded(CAROL)
    assert mark_of(desk.cut()) == (500, "previous")  # the reference price
    desk.rest(CAROL, GPU_FUT, BUY, 1, 495)
    order_id = desk.rest(CAROL, GPU_FUT, SELL, 1, 512)
    assert mark_of(desk.cut()) == (503, "mid")
    desk.cancel(CAROL, GPU_FUT, order_id)
    assert mark_of(desk.cut()) == (503, "previous")


def test_the_mark_ignores_quotes_whose_gtd_expiry_has_passed() -> None:
    # CAROL's bid expired a minute before the cut: it is no longer a quote anyone can hit.
    desk = funded(CAROL, DAVE)
    desk.rest(CAROL, GPU_FUT, BUY, 1, 590, tif=TimeInForce.GTD, expire_ts=START + 60 * NS)
    desk.rest(DAVE, GPU_FUT, SELL, 1, 600)
    assert mark_of(desk.cut(START + 120 * NS)) == (500, "previous")


# --- variation margin -----------------------------------------------------------------------


def test_variation_margin_is_zero_sum_and_margin_follows_the_new_mark() -> None:
    desk = funded(ALICE, BOB, CAROL)
    trade(desk, ALICE, BOB, 2, 500)
    desk.rest(CAROL, GPU_FUT, BUY, 1, 505)
    desk.rest(CAROL, GPU_FUT, SELL, 1, 515)
    events = desk.cut()
    assert mark_of(events) == (510, "mid")
    moved = {v.account: v.amount for v in of_type(events, VariationMargin)}
    assert moved == {ALICE: 10 * 2 * TV, BOB: -10 * 2 * TV}
    assert sum(moved.values()) == 0
    im = initial_margin(2, 510)
    assert im == 758_880_000
    assert desk.balances(ALICE) == \
        Balances(available=RICH - taker_fee(500, 2) - im + 10 * 2 * TV, margin=im)
    assert desk.balances(BOB) == Balances(available=RICH - im - 10 * 2 * TV, margin=im)
    # Carol's two orders net to one lot either way: margin on one lot at the new mark
    assert desk.balances(CAROL).reserved == \
        taker_fee(505, 1) + taker_fee(600, 1) + initial_margin(1, 510)  # sells: the band top
    assert desk.position(ALICE, GPU_FUT).unsettled(510) == 0
    # nothing moved since: the next cut moves no money
    assert of_type(desk.cut(), VariationMargin) == []


def test_cuts_settle_trades_made_between_them() -> None:
    desk = funded(ALICE, BOB, CAROL)
    trade(desk, ALICE, BOB, 2, 500)
    trade(desk, BOB, ALICE, 1, 530, maker=BOB)  # Alice sells 1 back higher
    events = desk.cut()  # mark: the last trade, 530
    assert mark_of(events) == (530, "last_trade")
    moved = {v.account: v.amount for v in of_type(events, VariationMargin)}
    # Alice: long 1 at the mark 530, bought 2 at 500 and sold 1 at 530
    assert moved == {ALICE: (530 * 1 - (1000 - 530)) * TV, BOB: -(530 * 1 - (1000 - 530)) * TV}


# --- liquidation and insurance --------------------------------------------------------------


def test_free_collateral_counts_losses_not_yet_settled() -> None:
    desk = funded(BOB, CAROL)
    desk.deposit(ALICE, 2_000_000_000)
    trade(desk, ALICE, BOB, 2, 600)  # bought 100 ticks over the mark
    available = 2_000_000_000 - initial_margin(2, 500) - taker_fee(600, 2)
    assert desk.balances(ALICE).available == available == 1_253_768_000
    free = available - 100 * 2 * TV
    assert desk.ex.free_collateral(ALICE) == free == 509_768_000
    assert desk.withdraw(ALICE, free + 1) == \
        [CommandRejected("request_withdrawal", ALICE, 1, Reason.INSUFFICIENT_FUNDS)]
    lots = free // 2_500_000 + 1  # spot lots at 2.500 USDC that available covers, free not
    assert one(desk.place(ALICE, GPU_SPOT, BUY, lots, 2500), OrderRejected).reason == \
        Reason.INSUFFICIENT_FUNDS
    assert of_type(desk.withdraw(ALICE, free), WithdrawalRequested)
    # gains not yet settled do not count
    assert desk.withdraw(BOB, desk.balances(BOB).available + 1) == \
        [CommandRejected("request_withdrawal", BOB, 3, Reason.INSUFFICIENT_FUNDS)]
    # once settled the loss has left available and nothing more is free
    desk.rest(CAROL, GPU_FUT, BUY, 1, 495)
    desk.rest(CAROL, GPU_FUT, SELL, 1, 505)
    desk.cut()
    assert desk.balances(ALICE) == Balances(available=0, margin=initial_margin(2, 500))
    assert desk.ex.free_collateral(ALICE) == 0


def test_a_gain_in_one_future_does_not_free_a_loss_in_another() -> None:
    desk = funded(BOB)
    desk.deposit(ALICE, 2_000_000_000)
    trade(desk, ALICE, BOB, 1, 600)  # December: 100 ticks over its mark of 500
    trade(desk, ALICE, BOB, 1, 400, symbol=GPU_FUT_NEXT)  # January: 100 ticks under it
    tick_value_next = instrument(GPU_FUT_NEXT).micro_usdc_per_tick_lot
    assert desk.ex.free_collateral(ALICE) == \
        desk.balances(ALICE).available - 100 * 1 * TV  # the January gain frees nothing
    assert tick_value_next == 744 * 5_000  # January has 744 hours, like December


def breach(desk: Desk, buffer: int) -> None:
    """Alice goes long 2 at 500 with ``buffer`` to spare; Carol quotes 440 / 460 around it."""
    desk.deposit(ALICE, taker_fee(500, 2) + initial_margin(2, 500) + buffer)
    trade(desk, ALICE, BOB, 2, 500)
    desk.rest(CAROL, GPU_FUT, BUY, 2, 440)
    desk.rest(CAROL, GPU_FUT, SELL, 1, 460)


def test_an_account_below_initial_margin_may_still_reduce_its_position() -> None:
    # The ledger: available "may go below zero only through clearing ...; such an account can
    # only reduce its risk until it is topped up or liquidated". Alice, long 2 from 500, is
    # marked at 470: above maintenance, below initial margin, available negative.
    desk = funded(BOB, CAROL)
    desk.deposit(ALICE, taker_fee(500, 2) + initial_margin(2, 500))
    trade(desk, ALICE, BOB, 2, 500)
    desk.rest(CAROL, GPU_FUT, BUY, 2, 465)
    desk.rest(CAROL, GPU_FUT, SELL, 2, 475)
    events = desk.cut()
    assert mark_of(events) == (470, "mid")
    assert of_type(events, Liquidation) == []
    equity = initial_margin(2, 500) - 30 * 2 * TV
    assert equity >= maintenance_margin(2, 470)
    assert desk.balances(ALICE) == Balances(available=equity - initial_margin(2, 470),
                                            margin=initial_margin(2, 470))
    assert desk.balances(ALICE).available < 0
    # more risk is refused
    assert one(desk.place(ALICE, GPU_FUT, BUY, 1, 470), OrderRejected).reason == \
        Reason.INSUFFICIENT_MARGIN
    # less risk is not: selling the position back to Carol's bid
    events = desk.place(ALICE, GPU_FUT, SELL, 2, 465)
    assert of_type(events, OrderRejected) == [], events
    assert desk.position(ALICE, GPU_FUT).qty == 0


def test_a_maintenance_breach_cancels_the_orders_and_sells_the_position() -> None:
    desk = funded(BOB, CAROL)
    breach(desk, 10_000_000)
    spot_order = desk.rest(ALICE, GPU_SPOT, BUY, 1, 2400)
    fut_order = desk.rest(ALICE, GPU_FUT, SELL, 1, 590)
    events = desk.cut()
    assert mark_of(events) == (450, "mid")
    equity = 10_000_000 + initial_margin(2, 500) - 50 * 2 * TV
    maintenance = maintenance_margin(2, 450)
    assert (equity, maintenance) == (382_000_000, 446_288_400)
    assert one(events, Liquidation) == Liquidation(ALICE, equity, maintenance)
    cancelled = [(c.order_id, c.symbol, c.reason) for c in of_type(events, OrderCancelled)]
    assert cancelled == [(fut_order, GPU_FUT, Reason.LIQUIDATION),
                         (spot_order, GPU_SPOT, Reason.LIQUIDATION)]
    ioc = one(events, OrderAccepted)
    assert (ioc.account, ioc.symbol, ioc.side, ioc.order_type, ioc.tif, ioc.qty,
            ioc.client_order_id) == (ALICE, GPU_FUT, SELL, OrderType.MARKET,
                                     TimeInForce.IOC, 2, "liquidation")
    sold = one(events, Trade)
    assert (sold.price, sold.qty, sold.maker_account, sold.taker_account) == \
        (440, 2, CAROL, ALICE)
    assert desk.position(ALICE, GPU_FUT).qty == 0
    assert desk.position(CAROL, GPU_FUT).qty == 2
    assert of_type(events, InsuranceCover) == []
    assert desk.balances(ALICE) == Balances(available=equity - taker_fee(440, 2))
    assert {o.account for o in desk.ex.orders.values()} == {CAROL}
    assert of_type(events, ClearingCompleted) == [ClearingCompleted(1)]


def test_above_maintenance_nothing_is_liquidated() -> None:
    desk = funded(BOB, CAROL)
    breach(desk, 80_000_000)  # equity 452 000 000 >= maintenance 446 288 400
    events = desk.cut()
    assert of_type(events, Liquidation) == []
    assert desk.position(ALICE, GPU_FUT).qty == 2


@pytest.mark.parametrize("fund", [1_000_000_000, 0])
def test_negative_equity_is_topped_up_by_the_insurance_fund(fund: int) -> None:
    desk = funded(BOB, CAROL)
    if fund:
        desk.apply(CreditDeposit(99, INSURANCE_FUND, fund))
    desk.deposit(ALICE, taker_fee(600, 2) + initial_margin(2, 500))
    trade(desk, ALICE, BOB, 2, 600)
    desk.rest(CAROL, GPU_FUT, BUY, 2, 400)
    desk.rest(CAROL, GPU_FUT, SELL, 1, 401)
    events = desk.cut()
    assert mark_of(events) == (400, "mid")
    loss = (400 - 600) * 2 * TV  # 1 488 000 000 against 744 000 000 of margin
    moved = {v.account: v.amount for v in of_type(events, VariationMargin)}
    assert moved == {ALICE: loss, BOB: -loss}
    equity = initial_margin(2, 500) + loss
    assert one(events, Liquidation) == \
        Liquidation(ALICE, equity, maintenance_margin(2, 400))
    shortfall = -equity + taker_fee(400, 2)  # the liquidation sale's fee makes it worse
    assert shortfall == 745_488_000
    assert one(events, InsuranceCover) == \
        InsuranceCover(ALICE, shortfall, fund - shortfall)
    assert desk.balances(ALICE) == Balances()
    assert desk.balances(INSURANCE_FUND) == Balances(available=fund - shortfall)


@pytest.mark.parametrize("delivered", [4, 0])
def test_the_fund_counts_a_sellers_bonds_before_paying(delivered: int) -> None:
    desk = funded(BOB, CAROL)
    desk.capacity(ALICE, "GPU.H100", 4)
    spot_tv = instrument(GPU_SPOT).micro_usdc_per_tick_lot
    bond = 2500 * 4 * spot_tv // 4
    desk.deposit(ALICE, bond + taker_fee(600, 2) + initial_margin(2, 500))
    desk.rest(ALICE, GPU_SPOT, SELL, 4, 2500)
    desk.place(CAROL, GPU_SPOT, BUY, 4, 2500)  # Alice's bond goes to escrow for a delivery
    trade(desk, ALICE, BOB, 2, 600)
    desk.rest(CAROL, GPU_FUT, BUY, 2, 400)
    desk.rest(CAROL, GPU_FUT, SELL, 1, 401)
    events = desk.cut()
    shortfall = 745_488_000  # as in the test above, futures alone
    assert one(events, InsuranceCover).amount == shortfall - bond  # the bond comes back
    assert desk.balances(ALICE).available == -bond
    desk.at(desk.ex.deliveries[1].window_end)
    events = desk.apply(SettleDelivery(1, delivered, 4))
    premium = 2500 * 4 * spot_tv
    if delivered:  # the bond and the premium came: the debt is paid, nothing more to cover
        assert of_type(events, InsuranceCover) == []
        assert desk.balances(ALICE) == Balances(available=premium)  # a maker: no seller fee
    else:  # the bond went to the buyer: the fund pays what it had counted on
        assert one(events, InsuranceCover).amount == bond
        assert desk.balances(ALICE) == Balances()


def test_a_liquidation_does_not_relabel_other_accounts_expired_orders() -> None:
    # Dave's GTD order expired before the cut. The liquidation's mass cancels reach every
    # book, which first expires it; it must be reported as expired, not as liquidated.
    desk = funded(BOB, CAROL, DAVE)
    breach(desk, 10_000_000)
    daves = desk.rest(DAVE, GPU_FUT_NEXT, BUY, 1, 450, tif=TimeInForce.GTD,
                      expire_ts=desk.ts + 60 * NS)
    events = desk.cut(desk.ts + 120 * NS)
    assert one(events, Liquidation).account == ALICE
    dave_cancels = [c for c in of_type(events, OrderCancelled) if c.account == DAVE]
    assert dave_cancels == [OrderCancelled(daves, DAVE, GPU_FUT_NEXT, Reason.EXPIRED, 1, 0)]
