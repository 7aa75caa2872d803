"""Book scenarios for stop orders and self-trade prevention, run on every implementation."""

from __future__ import annotations

from engine.book import OrderBook
from engine.messages import (
    BookLevel,
    CancelReason,
    NewOrder,
    OrderType,
    SelfTradePrevention,
    TimeInForce,
    Triggered,
)
from tests.unit.test_book_scenarios import (
    FOK,
    IOC,
    B,
    S,
    accepted,
    book,
    buy,
    cancelled,
    fill,
    sell,
    setup,
)

__all__ = ["book"]  # the fixture, re-exported for the tests here

STP = SelfTradePrevention


def stop_market(order: NewOrder, stop_price: int, tif: TimeInForce = IOC) -> NewOrder:
    """``order`` as a stop-market order."""
    return NewOrder(
        order.ts,
        order.order_id,
        order.account,
        order.side,
        order.price,
        order.qty,
        order_type=OrderType.STOP_MARKET,
        tif=tif,
        stop_price=stop_price,
    )


def stop_limit(order: NewOrder, stop_price: int) -> NewOrder:
    """``order`` (with its limit price and time in force) as a stop-limit order."""
    return NewOrder(
        order.ts,
        order.order_id,
        order.account,
        order.side,
        order.price,
        order.qty,
        order_type=OrderType.STOP_LIMIT,
        tif=order.tif,
        stop_price=stop_price,
        expire_ts=order.expire_ts,
    )


def trade_at(book: OrderBook, price: int, first_id: int) -> None:
    """Make one trade at ``price`` between accounts 8 and 9, leaving the book as it was."""
    setup(book, sell(first_id, price, 1, account=8), buy(first_id + 1, price, 1, account=9))
    assert book.state().last_price == price


# --- stops --------------------------------------------------------------------------------


def test_stop_waits_outside_the_book(book: OrderBook) -> None:
    stop = stop_market(buy(1, 0, 2, account=3), stop_price=105)
    assert book.apply(stop) == [accepted(stop)]
    assert (book.best_bid(), book.best_ask()) == (None, None)
    assert book.state().stops == [(1, 3, B, OrderType.STOP_MARKET, 0, 105, 2, IOC, 0, 0)]


def test_sell_stop_does_not_trigger_before_the_first_trade(book: OrderBook) -> None:
    stop = stop_market(sell(1, 0, 2, account=3), stop_price=110)
    assert book.apply(stop) == [accepted(stop)]
    assert len(book.state().stops) == 1


def test_stop_market_triggers_on_the_last_trade_price(book: OrderBook) -> None:
    stop = stop_market(buy(1, 0, 2, account=3), stop_price=105)
    s2, s3 = sell(2, 105, 1), sell(3, 106, 5)
    taker = buy(4, 105, 1, account=2)
    setup(book, stop, s2, s3)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, s2, taker, 1, (0, 0)),
        BookLevel(S, 105, 0),
        Triggered(1, 3, 105),
        fill(2, s3, stop, 2, (3, 0)),
        BookLevel(S, 106, 3),
    ]
    assert book.state().stops == []


def test_stop_limit_triggers_and_rests_its_remainder(book: OrderBook) -> None:
    stop = stop_limit(sell(1, 103, 4, account=3), stop_price=104)
    b2, b3 = buy(2, 104, 1), buy(3, 103, 2)
    taker = sell(4, 104, 1, account=2)
    setup(book, stop, b2, b3)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, b2, taker, 1, (0, 0)),
        BookLevel(B, 104, 0),
        Triggered(1, 3, 104),
        fill(2, b3, stop, 2, (0, 2)),
        BookLevel(B, 103, 0),
        BookLevel(S, 103, 2),
    ]
    assert book.state().resting == [(1, 3, S, 103, 2, 2, 0, TimeInForce.GTC, 0, 0, False)]


def test_stop_does_not_trigger_short_of_its_stop_price(book: OrderBook) -> None:
    stop = stop_market(buy(1, 0, 2, account=3), stop_price=106)
    setup(book, stop)
    trade_at(book, 105, first_id=2)
    assert len(book.state().stops) == 1


def test_stop_whose_condition_holds_on_entry_triggers_at_once(book: OrderBook) -> None:
    ask = sell(1, 107, 3)
    setup(book, ask)
    trade_at(book, 105, first_id=2)
    stop = stop_limit(buy(4, 107, 1, account=3), stop_price=105)
    assert book.apply(stop) == [
        accepted(stop),
        Triggered(4, 3, 105),
        fill(2, ask, stop, 1, (2, 0)),
        BookLevel(S, 107, 2),
    ]


def test_triggered_stop_fok_that_cannot_fill_is_cancelled(book: OrderBook) -> None:
    trade_at(book, 105, first_id=1)
    stop = stop_market(sell(3, 0, 2, account=3), stop_price=106, tif=FOK)
    assert book.apply(stop) == [
        accepted(stop),
        Triggered(3, 3, 106),
        cancelled(stop, CancelReason.FOK, 2),
    ]


def test_a_triggered_stops_trades_trigger_the_next_stop(book: OrderBook) -> None:
    s1, s2, s3 = sell(1, 105, 1), sell(2, 106, 1), sell(3, 107, 1)
    first = stop_market(buy(4, 0, 1, account=3), stop_price=105)
    second = stop_market(buy(5, 0, 1, account=3), stop_price=106)
    taker = buy(6, 105, 1, account=2)
    setup(book, s1, s2, s3, second, first)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, s1, taker, 1, (0, 0)),
        BookLevel(S, 105, 0),
        Triggered(4, 3, 105),
        fill(2, s2, first, 1, (0, 0)),
        BookLevel(S, 106, 0),
        Triggered(5, 3, 106),
        fill(3, s3, second, 1, (0, 0)),
        BookLevel(S, 107, 0),
    ]


def test_earliest_entered_stop_triggers_first(book: OrderBook) -> None:
    s1, s2, s3 = sell(1, 105, 1), sell(2, 106, 1), sell(3, 107, 1)
    # Entered first, though it has the higher id and the higher stop price.
    early = stop_market(buy(9, 0, 1, account=3), stop_price=105)
    late = stop_market(buy(8, 0, 1, account=4), stop_price=103)
    taker = buy(6, 105, 1, account=2)
    setup(book, s1, s2, s3, early, late)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, s1, taker, 1, (0, 0)),
        BookLevel(S, 105, 0),
        Triggered(9, 3, 105),
        fill(2, s2, early, 1, (0, 0)),
        BookLevel(S, 106, 0),
        Triggered(8, 4, 103),
        fill(3, s3, late, 1, (0, 0)),
        BookLevel(S, 107, 0),
    ]


# --- self-trade prevention ----------------------------------------------------------------


def test_stp_cancel_newest_cancels_the_rest_of_the_taker(book: OrderBook) -> None:
    other, own = sell(1, 104, 2, account=2), sell(2, 105, 5, stp=STP.CANCEL_OLDEST)
    taker = buy(3, 105, 6, stp=STP.CANCEL_NEWEST)
    setup(book, other, own)
    # The taker's mode applies, not the resting order's; the untouched level gets no BookLevel.
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, other, taker, 2, (0, 4)),
        BookLevel(S, 104, 0),
        cancelled(taker, CancelReason.STP, 4),
    ]
    assert book.depth(S, 5) == [(105, 5)]
    assert book.depth(B, 5) == []


def test_stp_cancel_oldest_cancels_the_resting_order_and_goes_on(book: OrderBook) -> None:
    own, other = sell(1, 105, 2), sell(2, 105, 3, account=2)
    taker = buy(3, 105, 4, stp=STP.CANCEL_OLDEST)
    setup(book, own, other)
    assert book.apply(taker) == [
        accepted(taker),
        cancelled(own, CancelReason.STP, 2),
        fill(1, other, taker, 3, (0, 1)),
        BookLevel(S, 105, 0),
        BookLevel(B, 105, 1),
    ]


def test_stp_cancel_both(book: OrderBook) -> None:
    own, other = sell(1, 105, 2), sell(2, 105, 3, account=2)
    taker = buy(3, 105, 4, stp=STP.CANCEL_BOTH)
    setup(book, own, other)
    assert book.apply(taker) == [
        accepted(taker),
        cancelled(own, CancelReason.STP, 2),
        cancelled(taker, CancelReason.STP, 4),
        BookLevel(S, 105, 3),
    ]


def test_stp_decrement_then_trade_with_another_account(book: OrderBook) -> None:
    own, other = sell(1, 105, 2), sell(2, 105, 3, account=2)
    taker = buy(3, 105, 4, stp=STP.DECREMENT)
    setup(book, own, other)
    assert book.apply(taker) == [
        accepted(taker),
        cancelled(own, CancelReason.STP, 2, remaining=0),
        cancelled(taker, CancelReason.STP, 2, remaining=2),
        fill(1, other, taker, 2, (1, 0)),
        BookLevel(S, 105, 1),
    ]
    assert book.state().next_trade_id == 2


def test_stp_decrement_that_exhausts_the_taker(book: OrderBook) -> None:
    own = sell(1, 105, 5)
    taker = buy(2, 105, 3, stp=STP.DECREMENT)
    setup(book, own)
    assert book.apply(taker) == [
        accepted(taker),
        cancelled(own, CancelReason.STP, 3, remaining=2),
        cancelled(taker, CancelReason.STP, 3, remaining=0),
        BookLevel(S, 105, 2),
    ]
    assert book.state().last_price == 0
    assert book.state().resting == [(1, 1, S, 105, 2, 2, 0, TimeInForce.GTC, 0, 0, False)]


def test_stp_decrement_that_exhausts_the_maker_lets_the_taker_rest(book: OrderBook) -> None:
    own = sell(1, 105, 2)
    taker = buy(2, 105, 5, stp=STP.DECREMENT)
    setup(book, own)
    assert book.apply(taker) == [
        accepted(taker),
        cancelled(own, CancelReason.STP, 2, remaining=0),
        cancelled(taker, CancelReason.STP, 2, remaining=3),
        BookLevel(S, 105, 0),
        BookLevel(B, 105, 3),
    ]


def test_stp_decrement_of_an_iceberg_refreshes_it_to_the_back(book: OrderBook) -> None:
    iceberg, other = sell(1, 105, 10, display_qty=3), sell(2, 105, 2, account=2)
    taker = buy(3, 105, 5, stp=STP.DECREMENT)
    setup(book, iceberg, other)
    assert book.apply(taker) == [
        accepted(taker),
        cancelled(iceberg, CancelReason.STP, 3, remaining=7),
        cancelled(taker, CancelReason.STP, 3, remaining=2),
        fill(1, other, taker, 2, (0, 0)),
        BookLevel(S, 105, 3),
    ]
    assert book.state().resting == [(1, 1, S, 105, 7, 3, 3, TimeInForce.GTC, 0, 0, False)]


def test_stp_applies_to_a_triggered_stop(book: OrderBook) -> None:
    own, other = sell(1, 106, 1, account=3), sell(2, 106, 2)
    stop = stop_market(buy(3, 0, 2, account=3), stop_price=105)
    maker, taker = sell(4, 105, 1, account=2), buy(5, 105, 1, account=4)
    setup(book, own, other, stop, maker)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, maker, taker, 1, (0, 0)),
        BookLevel(S, 105, 0),
        Triggered(3, 3, 105),
        cancelled(stop, CancelReason.STP, 2),
    ]
    assert book.depth(S, 5) == [(106, 3)]
