"""Book scenarios, written once and run on every implementation: the matching rules by example.

Each test states the exact events a command must emit. The builders here are shared by the
other ``test_book_*`` scenario modules.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.book import OrderBook, state_hash
from engine.messages import (
    Accepted,
    BookLevel,
    Cancelled,
    CancelReason,
    Command,
    ExpireOrders,
    Fill,
    NewOrder,
    OrderType,
    Rejected,
    Side,
    TimeInForce,
)
from tests.books import BookFactory

B = Side.BUY
S = Side.SELL
GTD = TimeInForce.GTD
IOC = TimeInForce.IOC
FOK = TimeInForce.FOK


@pytest.fixture
def book(make_book: BookFactory) -> OrderBook:
    """An empty book with the price band [100, 120]."""
    return make_book(100, 120)


def buy(
    order_id: int, price: int, qty: int, account: int = 1, ts: int = 1, **options: Any
) -> NewOrder:
    """A buy order; ``options`` are the other `NewOrder` fields."""
    return NewOrder(ts, order_id, account, B, price, qty, **options)


def sell(
    order_id: int, price: int, qty: int, account: int = 1, ts: int = 1, **options: Any
) -> NewOrder:
    """A sell order; ``options`` are the other `NewOrder` fields."""
    return NewOrder(ts, order_id, account, S, price, qty, **options)


def market(order: NewOrder, tif: TimeInForce = IOC) -> NewOrder:
    """``order`` as a market order."""
    return NewOrder(
        order.ts,
        order.order_id,
        order.account,
        order.side,
        order.price,
        order.qty,
        order_type=OrderType.MARKET,
        tif=tif,
        stp=order.stp,
    )


def accepted(order: NewOrder) -> Accepted:
    """The `Accepted` event of ``order``."""
    return Accepted(
        order.order_id, order.account, order.side, order.order_type, order.price, order.qty
    )


def cancelled(order: NewOrder, reason: CancelReason, qty: int, remaining: int = 0) -> Cancelled:
    """``qty`` of ``order`` cancelled, ``remaining`` left open."""
    return Cancelled(order.order_id, order.account, reason, qty, remaining)


def fill(trade_id: int, maker: NewOrder, taker: NewOrder, qty: int, left: tuple[int, int]) -> Fill:
    """A trade of ``qty`` at the maker's price; ``left`` is (maker, taker) remaining after it."""
    return Fill(
        trade_id,
        maker.price,
        qty,
        taker.side,
        maker.order_id,
        taker.order_id,
        maker.account,
        taker.account,
        *left,
    )


def setup(book: OrderBook, *commands: Command) -> None:
    """Apply ``commands``, none of which may be rejected."""
    for command in commands:
        events = book.apply(command)
        assert not any(isinstance(event, Rejected) for event in events), (command, events)


# --- limit orders and the book's queries ------------------------------------------------------


def test_empty_book(book: OrderBook) -> None:
    assert (book.min_price, book.max_price) == (100, 120)
    assert book.best_bid() is None
    assert book.best_ask() is None
    assert book.depth(B, 5) == []
    assert book.depth(S, 5) == []
    state = book.state()
    assert (state.resting, state.stops, state.last_price, state.next_trade_id) == ([], [], 0, 1)


def test_limit_orders_rest_and_aggregate_by_level(book: OrderBook) -> None:
    first, second, ask = buy(1, 105, 5), buy(2, 105, 3, account=2), sell(3, 107, 4)
    assert book.apply(first) == [accepted(first), BookLevel(B, 105, 5)]
    assert book.apply(second) == [accepted(second), BookLevel(B, 105, 8)]
    assert book.apply(ask) == [accepted(ask), BookLevel(S, 107, 4)]
    assert (book.best_bid(), book.best_ask()) == (105, 107)
    assert book.depth(B, 5) == [(105, 8)]
    assert book.depth(S, 5) == [(107, 4)]
    assert [order[0] for order in book.state().resting] == [1, 2, 3]


def test_depth_lists_best_levels_first(book: OrderBook) -> None:
    setup(
        book,
        buy(1, 101, 1),
        buy(2, 103, 2),
        buy(3, 102, 3),
        buy(4, 103, 4),
        sell(5, 110, 5),
        sell(6, 108, 6),
        sell(7, 109, 7),
    )
    assert book.depth(B, 2) == [(103, 6), (102, 3)]
    assert book.depth(B, 10) == [(103, 6), (102, 3), (101, 1)]
    assert book.depth(S, 3) == [(108, 6), (109, 7), (110, 5)]
    assert book.depth(S, 0) == []
    assert (book.best_bid(), book.best_ask()) == (103, 108)


def test_partial_fill_leaves_the_maker_resting(book: OrderBook) -> None:
    maker, taker = sell(1, 101, 5), buy(2, 101, 2, account=2)
    setup(book, maker)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, maker, taker, 2, (3, 0)),
        BookLevel(S, 101, 3),
    ]
    assert book.depth(S, 1) == [(101, 3)]


def test_taker_sweeps_several_levels_then_rests(book: OrderBook) -> None:
    s1, s2, s3, s4 = sell(1, 101, 2), sell(2, 102, 3), sell(3, 102, 1, account=3), sell(4, 104, 5)
    taker = buy(5, 103, 10, account=2)
    setup(book, s1, s2, s3, s4)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, s1, taker, 2, (0, 8)),
        BookLevel(S, 101, 0),
        fill(2, s2, taker, 3, (0, 5)),
        fill(3, s3, taker, 1, (0, 4)),
        BookLevel(S, 102, 0),
        BookLevel(B, 103, 4),
    ]
    assert (book.best_bid(), book.best_ask()) == (103, 104)
    assert book.depth(S, 5) == [(104, 5)]
    assert book.depth(B, 5) == [(103, 4)]


def test_better_price_beats_earlier_time(book: OrderBook) -> None:
    early, better, taker = sell(1, 103, 1), sell(2, 102, 1), buy(3, 103, 2, account=2)
    setup(book, early, better)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, better, taker, 1, (0, 1)),
        BookLevel(S, 102, 0),
        fill(2, early, taker, 1, (0, 0)),
        BookLevel(S, 103, 0),
    ]


def test_earlier_order_fills_first_within_a_level(book: OrderBook) -> None:
    first, second, taker = sell(1, 102, 2), sell(2, 102, 2, account=3), buy(3, 102, 3, account=2)
    setup(book, first, second)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, first, taker, 2, (0, 1)),
        fill(2, second, taker, 1, (1, 0)),
        BookLevel(S, 102, 1),
    ]


def test_trade_ids_count_up_from_one_across_commands(book: OrderBook) -> None:
    setup(book, sell(1, 101, 1), sell(2, 102, 1), sell(3, 103, 1))
    trade_ids = []
    for order_id in (4, 5):
        events = book.apply(buy(order_id, 103, 2 if order_id == 4 else 1, account=2))
        trade_ids += [event.trade_id for event in events if isinstance(event, Fill)]
    assert trade_ids == [1, 2, 3]
    assert book.state().next_trade_id == 4
    assert book.state().last_price == 103


# --- IOC, FOK, post-only, market ----------------------------------------------------------


def test_ioc_fills_what_it_can_and_cancels_the_rest(book: OrderBook) -> None:
    maker, taker = sell(1, 102, 2), buy(2, 103, 5, account=2, tif=IOC)
    setup(book, maker)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, maker, taker, 2, (0, 3)),
        BookLevel(S, 102, 0),
        cancelled(taker, CancelReason.IOC_REMAINDER, 3),
    ]
    assert book.state().resting == []


def test_ioc_that_does_not_cross_is_cancelled_whole(book: OrderBook) -> None:
    setup(book, sell(1, 102, 2))
    before = state_hash(book)
    taker = buy(2, 101, 5, account=2, tif=IOC)
    assert book.apply(taker) == [accepted(taker), cancelled(taker, CancelReason.IOC_REMAINDER, 5)]
    assert state_hash(book) == before


def test_fok_fills_in_full_across_levels(book: OrderBook) -> None:
    s1, s2, taker = sell(1, 101, 2), sell(2, 102, 3), buy(3, 102, 4, account=2, tif=FOK)
    setup(book, s1, s2)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, s1, taker, 2, (0, 2)),
        BookLevel(S, 101, 0),
        fill(2, s2, taker, 2, (1, 0)),
        BookLevel(S, 102, 1),
    ]


@pytest.mark.parametrize(
    ("price", "qty"),
    [(102, 6), (101, 3)],
    ids=["not-enough-quantity", "not-enough-within-limit"],
)
def test_fok_that_cannot_fill_in_full_is_cancelled_whole(
    book: OrderBook, price: int, qty: int
) -> None:
    setup(book, sell(1, 101, 2), sell(2, 102, 3))
    before = state_hash(book)
    taker = buy(3, price, qty, account=2, tif=FOK)
    assert book.apply(taker) == [accepted(taker), cancelled(taker, CancelReason.FOK, qty)]
    assert state_hash(book) == before


def test_fok_counts_the_hidden_quantity_of_icebergs(book: OrderBook) -> None:
    iceberg, taker = sell(1, 101, 6, display_qty=2), buy(2, 101, 5, account=2, tif=FOK)
    setup(book, iceberg)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, iceberg, taker, 2, (4, 3)),
        fill(2, iceberg, taker, 2, (2, 1)),
        fill(3, iceberg, taker, 1, (1, 0)),
        BookLevel(S, 101, 1),
    ]


@pytest.mark.parametrize(
    "makers",
    [
        # Own order in the second level the check walks.
        [sell(1, 101, 2), sell(2, 102, 1, account=2), sell(3, 102, 5, account=3)],
        # Own order at the back of a level whose orders ahead would suffice.
        [sell(1, 101, 5), sell(2, 101, 1, account=2)],
    ],
    ids=["own-order-in-a-deeper-level", "own-order-behind-enough-quantity"],
)
def test_fok_fails_on_a_crossing_level_holding_an_own_order(
    book: OrderBook, makers: list[NewOrder]
) -> None:
    setup(book, *makers)
    taker = buy(9, 102, 4, account=2, tif=FOK)
    assert book.apply(taker) == [accepted(taker), cancelled(taker, CancelReason.FOK, 4)]


def test_fok_ignores_own_orders_beyond_the_levels_it_needs(book: OrderBook) -> None:
    other, own = sell(1, 101, 5), sell(2, 102, 1, account=2)
    taker = buy(3, 102, 3, account=2, tif=FOK)
    setup(book, other, own)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, other, taker, 3, (2, 0)),
        BookLevel(S, 101, 2),
    ]


def test_post_only_rests_when_it_does_not_cross(book: OrderBook) -> None:
    setup(book, sell(1, 102, 1))
    order = buy(2, 101, 5, account=2, post_only=True)
    assert book.apply(order) == [accepted(order), BookLevel(B, 101, 5)]


@pytest.mark.parametrize("price", [102, 104])
def test_post_only_that_would_cross_is_cancelled_whole(book: OrderBook, price: int) -> None:
    setup(book, sell(1, 102, 1))
    before = state_hash(book)
    order = buy(2, price, 5, account=2, post_only=True)
    assert book.apply(order) == [accepted(order), cancelled(order, CancelReason.POST_ONLY, 5)]
    assert state_hash(book) == before


def test_market_order_on_an_empty_book_is_cancelled(book: OrderBook) -> None:
    order = market(buy(1, 0, 5))
    assert book.apply(order) == [accepted(order), cancelled(order, CancelReason.IOC_REMAINDER, 5)]
    fok = market(sell(2, 0, 5), tif=FOK)
    assert book.apply(fok) == [accepted(fok), cancelled(fok, CancelReason.FOK, 5)]


def test_market_buy_trades_up_to_the_top_of_the_band(book: OrderBook) -> None:
    low, top = sell(1, 101, 1), sell(2, 120, 1)
    taker = market(buy(3, 0, 3, account=2))
    setup(book, low, top)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, low, taker, 1, (0, 2)),
        BookLevel(S, 101, 0),
        fill(2, top, taker, 1, (0, 1)),
        BookLevel(S, 120, 0),
        cancelled(taker, CancelReason.IOC_REMAINDER, 1),
    ]


def test_market_sell_trades_down_to_the_bottom_of_the_band(book: OrderBook) -> None:
    bottom, high = buy(1, 100, 1), buy(2, 110, 1)
    # The price of a market order is ignored, even outside the band.
    taker = market(sell(3, 999, 2, account=2), tif=FOK)
    setup(book, bottom, high)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, high, taker, 1, (0, 1)),
        BookLevel(B, 110, 0),
        fill(2, bottom, taker, 1, (0, 0)),
        BookLevel(B, 100, 0),
    ]


# --- GTD ----------------------------------------------------------------------------------


def test_gtd_order_is_live_at_its_expire_ts_and_expires_at_the_next_command(
    book: OrderBook,
) -> None:
    order = buy(1, 105, 5, ts=1, tif=GTD, expire_ts=10)
    at_expiry = sell(2, 105, 2, account=2, ts=10)
    later = sell(3, 110, 1, account=2, ts=11)
    setup(book, order)
    assert book.apply(at_expiry) == [
        accepted(at_expiry),
        fill(1, order, at_expiry, 2, (3, 0)),
        BookLevel(B, 105, 3),
    ]
    assert book.apply(later) == [
        cancelled(order, CancelReason.EXPIRED, 3),
        BookLevel(B, 105, 0),
        accepted(later),
        BookLevel(S, 110, 1),
    ]


def test_gtd_entered_with_expire_ts_equal_to_ts_rests(book: OrderBook) -> None:
    order = buy(1, 105, 1, ts=5, tif=GTD, expire_ts=5)
    assert book.apply(order) == [accepted(order), BookLevel(B, 105, 1)]
    assert book.apply(ExpireOrders(5)) == []
    assert book.apply(ExpireOrders(6)) == [
        cancelled(order, CancelReason.EXPIRED, 1),
        BookLevel(B, 105, 0),
    ]
    assert book.state().resting == []


def test_expiry_timer_cancels_in_expire_ts_then_order_id_order(book: OrderBook) -> None:
    keeps = buy(1, 101, 1, tif=GTD, expire_ts=20)
    late = buy(2, 102, 1, tif=GTD, expire_ts=12)
    fourth = sell(4, 111, 1, tif=GTD, expire_ts=10)
    third = buy(3, 103, 1, tif=GTD, expire_ts=10)
    pending_stop = sell(
        5, 101, 1, order_type=OrderType.STOP_LIMIT, stop_price=102, tif=GTD, expire_ts=11
    )
    setup(book, keeps, late, fourth, third, pending_stop)
    assert book.apply(ExpireOrders(13)) == [
        cancelled(third, CancelReason.EXPIRED, 1),
        BookLevel(B, 103, 0),
        cancelled(fourth, CancelReason.EXPIRED, 1),
        BookLevel(S, 111, 0),
        cancelled(pending_stop, CancelReason.EXPIRED, 1),
        cancelled(late, CancelReason.EXPIRED, 1),
        BookLevel(B, 102, 0),
    ]
    assert [order[0] for order in book.state().resting] == [1]


def test_filled_gtd_order_leaves_nothing_to_expire(book: OrderBook) -> None:
    order, taker = sell(1, 105, 2, tif=GTD, expire_ts=5), buy(2, 105, 2, account=2, ts=3)
    setup(book, order, taker)
    assert book.apply(ExpireOrders(100)) == []


# --- icebergs -----------------------------------------------------------------------------


def test_iceberg_shows_only_its_display_quantity(book: OrderBook) -> None:
    iceberg = sell(1, 105, 10, display_qty=3)
    assert book.apply(iceberg) == [accepted(iceberg), BookLevel(S, 105, 3)]
    assert book.depth(S, 1) == [(105, 3)]
    assert book.state().resting == [(1, 1, S, 105, 10, 3, 3, TimeInForce.GTC, 0, 0, False)]


def test_iceberg_refresh_goes_to_the_back_of_its_level(book: OrderBook) -> None:
    iceberg, other = sell(1, 105, 10, display_qty=3), sell(2, 105, 2, account=3)
    first, second = buy(3, 105, 3, account=2), buy(4, 105, 3, account=2)
    setup(book, iceberg, other)
    # The level shows 2 + a fresh slice of 3: unchanged, so no BookLevel.
    assert book.apply(first) == [accepted(first), fill(1, iceberg, first, 3, (7, 0))]
    assert [order[0] for order in book.state().resting] == [2, 1]
    assert book.apply(second) == [
        accepted(second),
        fill(2, other, second, 2, (0, 1)),
        fill(3, iceberg, second, 1, (6, 0)),
        BookLevel(S, 105, 2),
    ]
    assert book.state().resting == [(1, 1, S, 105, 6, 2, 3, TimeInForce.GTC, 0, 0, False)]


def test_iceberg_refreshes_within_one_sweep(book: OrderBook) -> None:
    iceberg, other = sell(1, 105, 5, display_qty=2), sell(2, 105, 1, account=3)
    taker = buy(3, 106, 5, account=2)
    setup(book, iceberg, other)
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, iceberg, taker, 2, (3, 3)),
        fill(2, other, taker, 1, (0, 2)),
        fill(3, iceberg, taker, 2, (1, 0)),
        BookLevel(S, 105, 1),
    ]
    assert book.state().resting == [(1, 1, S, 105, 1, 1, 2, TimeInForce.GTC, 0, 0, False)]
