"""Properties every order book keeps over random command sequences.

Each property runs on every implementation through the ``make_book`` fixture, except the last,
which feeds one sequence to all of them at once and demands the same events and states.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings

from engine.book import BookState, OrderBook, PendingStop, RestingOrder, state_hash
from engine.messages import (
    Accepted,
    Amend,
    Amended,
    BookLevel,
    Cancel,
    Cancelled,
    CancelReason,
    Command,
    Event,
    Fill,
    MassCancel,
    NewOrder,
    OrderType,
    SelfTradePrevention,
    Side,
    TimeInForce,
    Triggered,
)
from tests.books import BOOKS, BookFactory
from tests.property.strategies import MAX_PRICE, MIN_PRICE, command_sequences

STP = SelfTradePrevention
MARKET_TYPES = (OrderType.MARKET, OrderType.STOP_MARKET)
STOP_TYPES = (OrderType.STOP_LIMIT, OrderType.STOP_MARKET)

book_settings = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # make_book is a constructor
)


def run(
    make_book: BookFactory, commands: list[Command]
) -> Iterator[tuple[Command, list[Event], OrderBook]]:
    """Apply ``commands`` to a fresh book, yielding each command, its events and the book after."""
    book = make_book(MIN_PRICE, MAX_PRICE)
    for command in commands:
        yield command, book.apply(command), book


def opposite(side: Side) -> Side:
    return Side.SELL if side == Side.BUY else Side.BUY


# --- properties checked on the book's queries ---------------------------------------------


@book_settings
@given(commands=command_sequences())
def test_book_is_never_crossed(make_book: BookFactory, commands: list[Command]) -> None:
    for _, _, book in run(make_book, commands):
        bid, ask = book.best_bid(), book.best_ask()
        assert bid is None or ask is None or bid < ask


def levels_of(resting: list[RestingOrder], side: Side) -> list[tuple[int, int]]:
    """(price, total shown) per level of ``side``, in the order the state lists them."""
    levels: list[tuple[int, int]] = []
    for order in resting:
        if order[2] != side:
            continue
        price, shown = order[3], order[5]
        if levels and levels[-1][0] == price:
            levels[-1] = (price, levels[-1][1] + shown)
        else:
            assert price not in (level[0] for level in levels), "a level's orders are not together"
            levels.append((price, shown))
    return levels


@book_settings
@given(commands=command_sequences())
def test_depth_is_the_shown_quantity_of_the_resting_orders(
    make_book: BookFactory, commands: list[Command]
) -> None:
    for _, _, book in run(make_book, commands):
        resting = book.state().resting
        sides = [order[2] for order in resting]
        assert sides == sorted(sides), "bids are listed before asks"
        for side, best in ((Side.BUY, book.best_bid()), (Side.SELL, book.best_ask())):
            levels = levels_of(resting, side)
            prices = [price for price, _ in levels]
            assert prices == sorted(prices, reverse=side == Side.BUY), "levels best first"
            assert book.depth(side, len(levels) + 1) == levels
            assert book.depth(side, 2) == levels[:2]
            assert best == (prices[0] if prices else None)


@book_settings
@given(commands=command_sequences())
def test_live_orders_are_well_formed(make_book: BookFactory, commands: list[Command]) -> None:
    for _, _, book in run(make_book, commands):
        state = book.state()
        for _, _, _, price, remaining, shown, display_qty, tif, *_ in state.resting:
            assert 0 < shown <= remaining
            assert (shown <= display_qty) if display_qty else (shown == remaining)
            assert MIN_PRICE <= price <= MAX_PRICE
            assert tif in (TimeInForce.GTC, TimeInForce.GTD)
        for stop in state.stops:
            assert stop[6] > 0
            side, stop_price = Side(stop[2]), stop[5]
            assert not triggers(side, stop_price, state.last_price), "a stop should have triggered"
        ids = [order[0] for order in state.resting] + [stop[0] for stop in state.stops]
        assert len(ids) == len(set(ids))


def triggers(side: Side, stop_price: int, last_price: int) -> bool:
    """Whether the last trade price (0: no trade yet) has reached a stop's trigger."""
    if not last_price:
        return False
    return last_price >= stop_price if side == Side.BUY else last_price <= stop_price


@book_settings
@given(commands=command_sequences())
def test_trade_ids_count_up_by_one(make_book: BookFactory, commands: list[Command]) -> None:
    fills: list[Fill] = []
    for _, events, book in run(make_book, commands):
        fills += [event for event in events if isinstance(event, Fill)]
        state = book.state()
        assert [fill.trade_id for fill in fills] == list(range(1, len(fills) + 1))
        assert state.next_trade_id == len(fills) + 1
        assert state.last_price == (fills[-1].price if fills else 0)


# --- an accounting of every order's quantity and price, from the events -------------------


@dataclass
class OrderTally:
    """One live order as the events tell it: its open quantity since entry or the last amend."""

    side: Side
    price: int
    market: bool
    open_qty: int
    done: int = 0  # filled or cancelled since

    @property
    def remaining(self) -> int:
        return self.open_qty - self.done


@dataclass
class Ledger:
    """Books every Accepted, Amended, Fill and Cancelled against the order it concerns."""

    orders: dict[int, OrderTally] = field(default_factory=dict)

    def record(self, event: Event) -> None:
        if isinstance(event, Accepted):
            market = event.order_type in MARKET_TYPES
            self.orders[event.order_id] = OrderTally(event.side, event.price, market, event.qty)
        elif isinstance(event, Amended):
            order = self.orders[event.order_id]
            order.price, order.open_qty, order.done = event.price, event.qty, 0
        elif isinstance(event, Fill):
            for order_id, remaining in (
                (event.maker_order_id, event.maker_remaining),
                (event.taker_order_id, event.taker_remaining),
            ):
                self.orders[order_id].done += event.qty
                assert self.orders[order_id].remaining == remaining, event
        elif isinstance(event, Cancelled):
            self.orders[event.order_id].done += event.qty
            assert self.orders[event.order_id].remaining == event.remaining, event

    def settle(self, state: BookState) -> None:
        """Check the open quantities against ``state``; forget orders that are gone."""
        live = {order[0]: order[4] for order in state.resting}
        live |= {stop[0]: stop[6] for stop in state.stops}
        assert set(live) <= set(self.orders), "an order is live without an Accepted"
        for order_id, order in list(self.orders.items()):
            assert order.remaining == live.get(order_id, 0), (order_id, order)
            if order_id not in live:
                del self.orders[order_id]


@book_settings
@given(commands=command_sequences())
def test_fills_and_cancels_conserve_quantity(
    make_book: BookFactory, commands: list[Command]
) -> None:
    ledger = Ledger()
    for _, events, book in run(make_book, commands):
        for event in events:
            ledger.record(event)
        ledger.settle(book.state())


@book_settings
@given(commands=command_sequences())
def test_fills_are_at_the_makers_price_within_the_takers_limit(
    make_book: BookFactory, commands: list[Command]
) -> None:
    ledger = Ledger()
    for _, events, book in run(make_book, commands):
        for event in events:
            if isinstance(event, Fill):
                maker = ledger.orders[event.maker_order_id]
                taker = ledger.orders[event.taker_order_id]
                assert event.maker_account != event.taker_account, "a self-trade"
                assert event.aggressor_side == taker.side == opposite(maker.side)
                assert not maker.market
                assert event.price == maker.price
                if not taker.market:
                    buying = taker.side == Side.BUY
                    assert event.price <= taker.price if buying else event.price >= taker.price
                assert event.qty > 0
            ledger.record(event)
        ledger.settle(book.state())


# --- a replay of the events onto FIFO queues ----------------------------------------------


@dataclass
class Live:
    """A live order in the replay."""

    order: NewOrder
    price: int
    remaining: int
    shown: int = 0

    @property
    def side(self) -> Side:
        return self.order.side

    def slice_size(self) -> int:
        display = self.order.display_qty
        return min(display, self.remaining) if display else self.remaining

    def limit(self) -> int:
        """The worst price the order may trade at: its own, or the band's edge for a market."""
        if self.order.order_type not in MARKET_TYPES:
            return self.price
        return MAX_PRICE if self.side == Side.BUY else MIN_PRICE


class QueueReplay:
    """Replays a book's events onto price levels kept as FIFO queues of order ids.

    Fills and self-trade cancels must take the front order of the best opposite level, a taker's
    rest or an iceberg's refresh joins the back, and after every command the replayed queues,
    stops and counters must equal the book's state.
    """

    def __init__(self) -> None:
        self.orders: dict[int, Live] = {}
        self.levels: dict[tuple[Side, int], list[int]] = {}
        self.stops: list[int] = []
        self.last_price = 0
        self.next_trade_id = 1
        self.taker: Live | None = None
        self.unlinked: tuple[Side, int] | None = None  # the level whose BookLevel comes next
        self.decrement: int | None = None  # what a DECREMENT took off the maker, due off the taker
        self.mass_cancelled = 0  # the last order id of the running mass cancel
        self.fok_fillable: bool | None = None  # the FOK taker's check, as the rules have it

    def apply(self, command: Command, events: list[Event]) -> None:
        due = sorted(
            (live.order.expire_ts, order_id)
            for order_id, live in self.orders.items()
            if live.order.tif == TimeInForce.GTD and live.order.expire_ts < command.ts
        )
        self.mass_cancelled = 0
        expired: list[int] = []
        expiring = True  # before the command's own events
        for event in events:
            if isinstance(event, Cancelled) and event.reason == CancelReason.EXPIRED:
                assert expiring, "expiries come before the command's own events"
                expired.append(event.order_id)
            elif not (isinstance(event, BookLevel) and self.unlinked is not None):
                expiring = False
            self.event(command, event)
        assert expired == [order_id for _, order_id in due]
        assert self.taker is None, "the taker neither rested, filled nor was cancelled"
        assert self.unlinked is None
        assert not any(self.triggers(order_id) for order_id in self.stops)

    def state(self) -> BookState:
        resting: list[RestingOrder] = []
        for side in Side:
            prices = sorted((p for s, p in self.levels if s == side), reverse=side == Side.BUY)
            for price in prices:
                for order_id in self.levels[side, price]:
                    live = self.orders[order_id]
                    o = live.order
                    resting.append(
                        (
                            order_id,
                            o.account,
                            o.side,
                            price,
                            live.remaining,
                            live.shown,
                            o.display_qty,
                            o.tif,
                            o.expire_ts,
                            o.stp,
                            o.post_only,
                        )
                    )
        stops: list[PendingStop] = []
        for order_id in self.stops:
            o = self.orders[order_id].order
            stops.append(
                (
                    order_id,
                    o.account,
                    o.side,
                    o.order_type,
                    o.price,
                    o.stop_price,
                    self.orders[order_id].remaining,
                    o.tif,
                    o.expire_ts,
                    o.stp,
                )
            )
        return BookState(resting, stops, self.last_price, self.next_trade_id)

    # --- one event ----------------------------------------------------------------------------

    def event(self, command: Command, event: Event) -> None:
        if isinstance(event, Accepted):
            assert isinstance(command, NewOrder) and command.order_id == event.order_id
            live = Live(command, command.price, command.qty)
            self.orders[event.order_id] = live
            if command.order_type in STOP_TYPES:
                self.stops.append(event.order_id)
            else:
                self.take_over(live)
        elif isinstance(event, Triggered):
            holding = [order_id for order_id in self.stops if self.triggers(order_id)]
            assert holding[:1] == [event.order_id], "the earliest-entered stop triggers first"
            self.stops.remove(event.order_id)
            self.take_over(self.orders[event.order_id])
            assert event.stop_price == self.orders[event.order_id].order.stop_price
        elif isinstance(event, Amended):
            self.amended(command, event)
        elif isinstance(event, Fill):
            self.fill(event)
        elif isinstance(event, Cancelled):
            self.cancelled(command, event)
        elif isinstance(event, BookLevel):
            self.book_level(event)

    def amended(self, command: Command, event: Amended) -> None:
        assert isinstance(command, Amend) and command.order_id == event.order_id
        live = self.orders[event.order_id]
        assert event.order_id in self.levels[live.side, live.price]
        if event.price == live.price and event.qty <= live.remaining:
            live.remaining = event.qty
            live.shown = min(live.shown, event.qty)
            return
        self.unlink(live)
        live.price, live.remaining = event.price, event.qty
        self.take_over(live)

    def fill(self, event: Fill) -> None:
        taker = self.taker
        assert taker is not None and taker.order.order_id == event.taker_order_id
        assert not taker.order.post_only, "a post-only order took liquidity"
        assert self.fok_fillable is not False, "a FOK that cannot fill traded"
        maker = self.front(taker, event.price)
        assert maker.order.order_id == event.maker_order_id, "fills take the front order"
        assert event.qty == min(maker.shown, taker.remaining)
        assert event.trade_id == self.next_trade_id
        self.next_trade_id += 1
        self.last_price = event.price
        taker.remaining -= event.qty
        self.take(maker, event.qty)
        assert (event.maker_remaining, event.taker_remaining) == (maker.remaining, taker.remaining)
        if not taker.remaining:
            del self.orders[event.taker_order_id]
            self.taker = None

    def cancelled(self, command: Command, event: Cancelled) -> None:
        live = self.orders[event.order_id]
        taker = self.taker
        if taker is not None and live is taker:
            if event.reason == CancelReason.STP and taker.order.stp == STP.DECREMENT:
                assert event.qty == self.decrement
                self.decrement = None
                taker.remaining -= event.qty
            else:
                self.taker_cancel_is_due(event.reason)
                assert event.qty == taker.remaining
                taker.remaining = 0
            assert event.remaining == taker.remaining
            if not taker.remaining:
                del self.orders[event.order_id]
                self.taker = None
        elif event.reason == CancelReason.STP:
            assert taker is not None and taker.order.account == live.order.account
            assert self.front(taker, live.price) is live, "self-trade prevention meets the front"
            if taker.order.stp == STP.DECREMENT:
                assert event.qty == min(live.shown, taker.remaining)
                self.decrement = event.qty
                self.take(live, event.qty)
            else:
                assert taker.order.stp in (STP.CANCEL_OLDEST, STP.CANCEL_BOTH)
                assert event.qty == live.remaining
                live.remaining = live.shown  # it goes whole: nothing hidden is left to refresh
                self.take(live, live.shown)
            assert event.remaining == live.remaining
        else:
            self.dropped(command, event, live)

    def taker_cancel_is_due(self, reason: CancelReason) -> None:
        """Check why the rest of the taker is cancelled, against the book as replayed."""
        taker = self.taker
        assert taker is not None
        if reason == CancelReason.IOC_REMAINDER:
            assert taker.order.tif in (TimeInForce.IOC, TimeInForce.FOK)
            assert not self.crossing(taker), "an IOC remainder could still trade"
        elif reason == CancelReason.POST_ONLY:
            assert taker.order.post_only and self.crossing(taker)
        elif reason == CancelReason.STP:
            assert taker.order.stp in (STP.CANCEL_NEWEST, STP.CANCEL_BOTH)
            if taker.order.stp == STP.CANCEL_NEWEST:
                price = self.crossing(taker)
                assert price is not None
                assert self.front(taker, price).order.account == taker.order.account
        else:
            assert reason == CancelReason.FOK and self.fok_fillable is False

    def dropped(self, command: Command, event: Cancelled, live: Live) -> None:
        """A whole live order cancelled by its owner, a mass cancel or its expiry."""
        order = live.order
        if event.reason == CancelReason.USER:
            assert isinstance(command, Cancel) and command.order_id == order.order_id
        elif event.reason == CancelReason.MASS_CANCEL:
            assert isinstance(command, MassCancel) and command.account == order.account
            assert command.side in (None, order.side)
            assert order.order_id > self.mass_cancelled, "mass cancel goes by order id"
            self.mass_cancelled = order.order_id
        else:
            assert event.reason == CancelReason.EXPIRED
        assert (event.qty, event.remaining) == (live.remaining, 0)
        if order.order_id in self.stops:
            self.stops.remove(order.order_id)
        else:
            self.unlink(live)
        del self.orders[order.order_id]

    def book_level(self, event: BookLevel) -> None:
        taker = self.taker
        key = (event.side, event.price)
        if self.unlinked is not None:
            assert key == self.unlinked, "a removed order's level is reported at once"
            self.unlinked = None
        elif taker is not None and key == (taker.side, taker.price):
            assert taker.order.order_type not in MARKET_TYPES
            assert taker.order.tif in (TimeInForce.GTC, TimeInForce.GTD)
            taker.shown = taker.slice_size()
            self.levels.setdefault(key, []).append(taker.order.order_id)
            self.taker = None
        assert event.qty == sum(self.orders[i].shown for i in self.levels.get(key, []))

    # --- queue handling -----------------------------------------------------------------------

    def take_over(self, taker: Live) -> None:
        """``taker`` starts matching; check a FOK against the book first, as the rules do."""
        self.taker = taker
        self.fok_fillable = None
        if taker.order.tif != TimeInForce.FOK:
            return
        # Walk the crossing levels best first; an own order in a level fails it.
        side = opposite(taker.side)
        limit = taker.limit()
        prices = sorted((p for s, p in self.levels if s == side), reverse=side == Side.BUY)
        available = 0
        self.fok_fillable = False
        for price in prices:
            if (price > limit) if taker.side == Side.BUY else (price < limit):
                break
            level = [self.orders[order_id] for order_id in self.levels[side, price]]
            if any(maker.order.account == taker.order.account for maker in level):
                break
            available += sum(maker.remaining for maker in level)
            if available >= taker.remaining:
                self.fok_fillable = True
                break

    def triggers(self, order_id: int) -> bool:
        live = self.orders[order_id]
        return triggers(live.side, live.order.stop_price, self.last_price)

    def best(self, side: Side) -> int | None:
        prices = [p for s, p in self.levels if s == side]
        if not prices:
            return None
        return max(prices) if side == Side.BUY else min(prices)

    def crossing(self, taker: Live) -> int | None:
        """The best opposite price ``taker`` may trade at, if any."""
        best = self.best(opposite(taker.side))
        if best is None:
            return None
        limit = taker.limit()
        return best if (best <= limit if taker.side == Side.BUY else best >= limit) else None

    def front(self, taker: Live, price: int) -> Live:
        """The front order of the best level opposite ``taker``, which must be at ``price``."""
        side = opposite(taker.side)
        assert price == self.best(side), "not the best level"
        return self.orders[self.levels[side, price][0]]

    def take(self, maker: Live, qty: int) -> None:
        """Take ``qty`` off the front order ``maker``: refresh an iceberg to the back, or remove."""
        key = (maker.side, maker.price)
        maker.shown -= qty
        maker.remaining -= qty
        if maker.shown:
            return
        queue = self.levels[key]
        queue.pop(0)
        if maker.remaining:
            maker.shown = maker.slice_size()
            queue.append(maker.order.order_id)
        else:
            del self.orders[maker.order.order_id]
            if not queue:
                del self.levels[key]

    def unlink(self, live: Live) -> None:
        key = (live.side, live.price)
        self.levels[key].remove(live.order.order_id)
        if not self.levels[key]:
            del self.levels[key]
        self.unlinked = key


@book_settings
@given(commands=command_sequences())
def test_levels_are_fifo_and_the_events_replay_to_the_state(
    make_book: BookFactory, commands: list[Command]
) -> None:
    replay = QueueReplay()
    for command, events, book in run(make_book, commands):
        replay.apply(command, events)
        assert replay.state() == book.state()


@book_settings
@given(commands=command_sequences())
def test_book_level_events_keep_a_depth_feed_current(
    make_book: BookFactory, commands: list[Command]
) -> None:
    feed: dict[tuple[Side, int], int] = {}
    for _, events, book in run(make_book, commands):
        for event in events:
            if isinstance(event, BookLevel):
                feed[event.side, event.price] = event.qty
        for side in Side:
            levels = sorted(
                ((price, qty) for (s, price), qty in feed.items() if s == side and qty),
                reverse=side == Side.BUY,
            )
            assert levels == book.depth(side, len(feed) + 1)


# --- determinism and agreement ------------------------------------------------------------


@book_settings
@given(commands=command_sequences())
def test_a_book_is_deterministic(make_book: BookFactory, commands: list[Command]) -> None:
    twin = make_book(MIN_PRICE, MAX_PRICE)
    for command, events, book in run(make_book, commands):
        assert twin.apply(command) == events
        assert state_hash(twin) == state_hash(book)


@settings(max_examples=300, deadline=None)
@given(commands=command_sequences())
def test_all_books_agree(commands: list[Command]) -> None:
    (first, make_first), *others = BOOKS.items()
    baseline = make_first(MIN_PRICE, MAX_PRICE)
    books = {name: factory(MIN_PRICE, MAX_PRICE) for name, factory in others}
    for position, command in enumerate(commands):
        expected = baseline.apply(command)
        for name, book in books.items():
            where = f"{name} vs {first} at command {position}: {command}"
            assert book.apply(command) == expected, where
            assert state_hash(book) == state_hash(baseline), where
