"""Book scenarios for amends, cancels, mass cancels and rejections, run on every implementation."""

from __future__ import annotations

import pytest

from engine.book import OrderBook, state_hash
from engine.messages import (
    Amend,
    Amended,
    BookLevel,
    Cancel,
    CancelReason,
    Command,
    Event,
    Fill,
    MassCancel,
    NewOrder,
    OrderType,
    Rejected,
    RejectReason,
    TimeInForce,
)
from tests.unit.test_book_scenarios import (
    FOK,
    GTD,
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

LIMIT, MARKET = OrderType.LIMIT, OrderType.MARKET
STOP_LIMIT, STOP_MARKET = OrderType.STOP_LIMIT, OrderType.STOP_MARKET
GTC = TimeInForce.GTC


# --- amend --------------------------------------------------------------------------------


def test_amend_down_at_the_same_price_keeps_priority(book: OrderBook) -> None:
    first, second = sell(1, 105, 5), sell(2, 105, 5, account=3)
    taker = buy(3, 105, 4, account=2)
    setup(book, first, second)
    assert book.apply(Amend(2, 1, 1, 105, 3)) == [Amended(1, 1, 105, 3), BookLevel(S, 105, 8)]
    assert book.apply(taker) == [
        accepted(taker),
        fill(1, first, taker, 3, (0, 1)),
        fill(2, second, taker, 1, (4, 0)),
        BookLevel(S, 105, 4),
    ]


def test_amend_to_the_same_quantity_changes_nothing_shown(book: OrderBook) -> None:
    # No BookLevel when the level's shown quantity is unchanged, as the reference book does
    # (engine.book's "one for every order that is amended in place" could be read otherwise).
    setup(book, sell(1, 105, 5), sell(2, 105, 5, account=3))
    before = state_hash(book)
    assert book.apply(Amend(2, 1, 1, 105, 5)) == [Amended(1, 1, 105, 5)]
    assert state_hash(book) == before


def test_amend_of_an_iceberg_in_place(book: OrderBook) -> None:
    setup(book, sell(1, 105, 10, display_qty=4))
    # Only the hidden part shrinks: the level shows the same.
    assert book.apply(Amend(2, 1, 1, 105, 6)) == [Amended(1, 1, 105, 6)]
    assert book.apply(Amend(3, 1, 1, 105, 2)) == [Amended(1, 1, 105, 2), BookLevel(S, 105, 2)]
    assert book.state().resting == [(1, 1, S, 105, 2, 2, 4, GTC, 0, 0, False)]


@pytest.mark.parametrize(
    ("amend", "amend_events", "fill_order"),
    [
        (
            Amend(2, 1, 1, 105, 4),
            [Amended(1, 1, 105, 4), BookLevel(S, 105, 3), BookLevel(S, 105, 7)],
            [4, 2, 1],
        ),
        (
            Amend(2, 1, 1, 104, 3),
            [Amended(1, 1, 104, 3), BookLevel(S, 105, 3), BookLevel(S, 104, 6)],
            [4, 1, 2],
        ),
    ],
    ids=["quantity-up", "price-change"],
)
def test_amend_up_or_to_another_price_loses_priority(
    book: OrderBook, amend: Amend, amend_events: list[Event], fill_order: list[int]
) -> None:
    setup(book, sell(1, 105, 3), sell(2, 105, 3, account=3), sell(4, 104, 3, account=3))
    assert book.apply(amend) == amend_events
    events = book.apply(buy(5, 105, 10, account=2))
    assert [event.maker_order_id for event in events if isinstance(event, Fill)] == fill_order


def test_amend_that_crosses_trades(book: OrderBook) -> None:
    bid, ask = buy(1, 104, 5), sell(2, 106, 2, account=2)
    setup(book, bid, ask)
    assert book.apply(Amend(2, 1, 1, 106, 5)) == [
        Amended(1, 1, 106, 5),
        BookLevel(B, 104, 0),
        fill(1, ask, bid, 2, (0, 3)),
        BookLevel(S, 106, 0),
        BookLevel(B, 106, 3),
    ]
    assert book.state().resting == [(1, 1, B, 106, 3, 3, 0, GTC, 0, 0, False)]


def test_post_only_amend_that_would_cross_is_rejected(book: OrderBook) -> None:
    setup(book, buy(1, 104, 2, post_only=True), sell(2, 106, 1, account=2))
    before = state_hash(book)
    assert book.apply(Amend(2, 1, 1, 106, 2)) == [Rejected(1, 1, RejectReason.WOULD_CROSS)]
    assert state_hash(book) == before
    assert book.apply(Amend(3, 1, 1, 105, 2)) == [
        Amended(1, 1, 105, 2),
        BookLevel(B, 104, 0),
        BookLevel(B, 105, 2),
    ]


# --- cancel -------------------------------------------------------------------------------


def test_cancel_reports_the_open_quantity(book: OrderBook) -> None:
    order, behind = buy(1, 105, 5), buy(2, 105, 3, account=2)
    setup(book, order, behind, sell(3, 105, 2, account=3))
    assert book.apply(Cancel(2, 1, 1)) == [
        cancelled(order, CancelReason.USER, 3),
        BookLevel(B, 105, 3),
    ]
    assert book.apply(Cancel(3, 1, 1)) == [Rejected(1, 1, RejectReason.UNKNOWN_ORDER)]


def test_cancel_of_a_pending_stop_has_no_book_level(book: OrderBook) -> None:
    stop = sell(1, 0, 2, order_type=STOP_MARKET, tif=IOC, stop_price=104)
    setup(book, stop)
    assert book.apply(Cancel(2, 1, 1)) == [cancelled(stop, CancelReason.USER, 2)]
    assert book.state().stops == []


def test_mass_cancel_walks_the_accounts_orders_by_id(book: OrderBook) -> None:
    b5, s3 = buy(5, 101, 1), sell(3, 110, 2)
    stop7 = buy(7, 112, 3, order_type=STOP_LIMIT, stop_price=115)
    b4, other = buy(4, 102, 4), buy(6, 103, 1, account=2)
    setup(book, b5, s3, stop7, b4, other)
    assert book.apply(MassCancel(2, 1, side=B)) == [
        cancelled(b4, CancelReason.MASS_CANCEL, 4),
        BookLevel(B, 102, 0),
        cancelled(b5, CancelReason.MASS_CANCEL, 1),
        BookLevel(B, 101, 0),
        cancelled(stop7, CancelReason.MASS_CANCEL, 3),
    ]
    assert book.apply(MassCancel(3, 1)) == [
        cancelled(s3, CancelReason.MASS_CANCEL, 2),
        BookLevel(S, 110, 0),
    ]
    assert [order[0] for order in book.state().resting] == [6]
    # Nothing left to cancel: no events (and no rejection).
    assert book.apply(MassCancel(4, 1)) == []


# --- rejections ---------------------------------------------------------------------------

REJECTED_COMMANDS: dict[str, tuple[Command, RejectReason]] = {
    "duplicate-of-resting": (buy(1, 104, 1), RejectReason.DUPLICATE_ORDER_ID),
    "duplicate-of-pending-stop": (sell(2, 110, 1, account=2), RejectReason.DUPLICATE_ORDER_ID),
    "zero-qty": (buy(9, 104, 0), RejectReason.INVALID_QUANTITY),
    "negative-qty": (buy(9, 104, -1), RejectReason.INVALID_QUANTITY),
    "display-over-qty": (buy(9, 104, 5, display_qty=6), RejectReason.INVALID_QUANTITY),
    "negative-display": (buy(9, 104, 5, display_qty=-1), RejectReason.INVALID_QUANTITY),
    "zero-price": (buy(9, 0, 5), RejectReason.INVALID_PRICE),
    "negative-price": (buy(9, -5, 5), RejectReason.INVALID_PRICE),
    "zero-stop-price": (
        sell(9, 104, 5, order_type=STOP_LIMIT, stop_price=0),
        RejectReason.INVALID_PRICE,
    ),
    "below-band": (buy(9, 99, 5), RejectReason.PRICE_OUT_OF_BAND),
    "above-band": (sell(9, 121, 5), RejectReason.PRICE_OUT_OF_BAND),
    "stop-price-above-band": (
        buy(9, 0, 5, order_type=STOP_MARKET, tif=IOC, stop_price=121),
        RejectReason.PRICE_OUT_OF_BAND,
    ),
    "stop-price-below-band": (
        sell(9, 104, 5, order_type=STOP_LIMIT, stop_price=99),
        RejectReason.PRICE_OUT_OF_BAND,
    ),
    "market-gtc": (buy(9, 0, 5, order_type=MARKET), RejectReason.INVALID_ORDER),
    "market-gtd": (
        buy(9, 0, 5, order_type=MARKET, tif=GTD, expire_ts=5),
        RejectReason.INVALID_ORDER,
    ),
    "stop-market-gtc": (
        buy(9, 0, 5, order_type=STOP_MARKET, stop_price=110),
        RejectReason.INVALID_ORDER,
    ),
    "post-only-ioc": (buy(9, 104, 5, tif=IOC, post_only=True), RejectReason.INVALID_ORDER),
    "post-only-fok": (buy(9, 104, 5, tif=FOK, post_only=True), RejectReason.INVALID_ORDER),
    "post-only-market": (
        buy(9, 0, 5, order_type=MARKET, tif=IOC, post_only=True),
        RejectReason.INVALID_ORDER,
    ),
    "iceberg-ioc": (buy(9, 104, 5, tif=IOC, display_qty=1), RejectReason.INVALID_ORDER),
    "stop-post-only": (
        buy(9, 104, 5, order_type=STOP_LIMIT, stop_price=110, post_only=True),
        RejectReason.INVALID_ORDER,
    ),
    "stop-iceberg": (
        buy(9, 104, 5, order_type=STOP_LIMIT, stop_price=110, display_qty=1),
        RejectReason.INVALID_ORDER,
    ),
    "gtd-without-expire-ts": (buy(9, 104, 5, tif=GTD), RejectReason.INVALID_ORDER),
    "expire-ts-without-gtd": (buy(9, 104, 5, expire_ts=50), RejectReason.INVALID_ORDER),
    "zero-order-id": (buy(0, 104, 5), RejectReason.INVALID_ORDER),
    "negative-order-id": (buy(-1, 104, 5), RejectReason.INVALID_ORDER),
    "expire-ts-before-ts": (
        buy(9, 104, 5, ts=10, tif=GTD, expire_ts=9),
        RejectReason.INVALID_EXPIRY,
    ),
    "stop-expire-ts-before-ts": (
        sell(9, 110, 5, ts=10, order_type=STOP_LIMIT, stop_price=102, tif=GTD, expire_ts=9),
        RejectReason.INVALID_EXPIRY,
    ),
    "cancel-unknown": (Cancel(1, 99, 1), RejectReason.UNKNOWN_ORDER),
    "cancel-other-accounts": (Cancel(1, 1, 2), RejectReason.UNKNOWN_ORDER),
    "cancel-zero-id": (Cancel(1, 0, 1), RejectReason.UNKNOWN_ORDER),
    "amend-unknown": (Amend(1, 99, 1, 104, 1), RejectReason.UNKNOWN_ORDER),
    "amend-other-accounts": (Amend(1, 1, 2, 104, 1), RejectReason.UNKNOWN_ORDER),
    "amend-pending-stop": (Amend(1, 2, 2, 110, 1), RejectReason.NOT_AMENDABLE),
    "amend-zero-qty": (Amend(1, 1, 1, 105, 0), RejectReason.INVALID_QUANTITY),
    "amend-zero-price": (Amend(1, 1, 1, 0, 5), RejectReason.INVALID_PRICE),
    "amend-above-band": (Amend(1, 1, 1, 121, 5), RejectReason.PRICE_OUT_OF_BAND),
}


@pytest.mark.parametrize(
    ("command", "reason"), REJECTED_COMMANDS.values(), ids=REJECTED_COMMANDS.keys()
)
def test_rejected_commands_change_nothing(
    book: OrderBook, command: Command, reason: RejectReason
) -> None:
    # A resting order 1 (account 1) and a pending stop 2 (account 2).
    setup(book, buy(1, 105, 5), sell(2, 104, 1, account=2, order_type=STOP_LIMIT, stop_price=103))
    before = state_hash(book)
    account = command.account if isinstance(command, NewOrder | Cancel | Amend) else 0
    order_id = command.order_id if isinstance(command, NewOrder | Cancel | Amend) else 0
    assert book.apply(command) == [Rejected(order_id, account, reason)]
    assert state_hash(book) == before
