"""The quoting logic of `cmx mm`, without sockets: a small in-test exchange answers its
requests (in any order, with fills) and the quotes are checked after every step."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date

import pytest

from engine.instruments import Instrument
from engine.registry import Registry
from gateway.market_maker import (
    BUY,
    SELL,
    Cancel,
    Execution,
    MassCancel,
    Place,
    QuoteAction,
    QuoteParams,
    Quoter,
    Replace,
)

SYMBOL = "GPU.H100.F2701"


@pytest.fixture(scope="module")
def spec() -> Instrument:
    return Registry.load(listing_date=date(2026, 11, 30)).get(SYMBOL)


@dataclass
class Resting:
    side: str
    price: int
    leaves: int
    cum: int = 0


@dataclass
class Venue:
    """Answers a quoter's requests as the exchange would, when told to."""

    quoter: Quoter
    inflight: list[QuoteAction] = field(default_factory=list)
    orders: dict[str, Resting] = field(default_factory=dict)  # current ClOrdID -> order

    def take(self, actions: list[QuoteAction]) -> None:
        self.inflight.extend(actions)
        self.check()

    def check(self) -> None:
        """The invariants that must hold at every moment."""
        low, high = self.quoter.band
        bids, asks = self.quoter.prices(BUY), self.quoter.prices(SELL)
        assert not bids or not asks or max(bids) < min(asks), (bids, asks)
        resting_bids = [o.price for o in self.orders.values() if o.side == BUY]
        resting_asks = [o.price for o in self.orders.values() if o.side == SELL]
        assert not resting_bids or not resting_asks or max(resting_bids) < min(resting_asks)
        assert all(low <= price <= high for price in resting_bids + resting_asks)

    def answer(self, index: int = 0) -> None:
        """The exchange handles the request at ``index`` of those in flight."""
        action = self.inflight.pop(index)
        quoter = self.quoter
        if isinstance(action, Place):
            self.orders[action.cl_ord_id] = Resting(action.side, action.price, action.qty)
            self.take(quoter.on_execution(Execution(
                action.cl_ord_id, "", "0", "0", action.side, action.price, 0, action.qty, 0)))
        elif isinstance(action, Replace):
            order = self.orders.get(action.orig_cl_ord_id)
            if order is None or action.qty <= order.cum:  # as the exchange refuses it
                self.take(quoter.on_cancel_reject(action.cl_ord_id, order_gone=order is None))
                return
            del self.orders[action.orig_cl_ord_id]
            order.price, order.leaves = action.price, action.qty - order.cum
            self.orders[action.cl_ord_id] = order
            self.take(quoter.on_execution(Execution(
                action.cl_ord_id, action.orig_cl_ord_id, "5", "1" if order.cum else "0",
                order.side, order.price, 0, order.leaves, order.cum)))
        elif isinstance(action, Cancel):
            order = self.orders.pop(action.orig_cl_ord_id, None)
            if order is None:
                self.take(quoter.on_cancel_reject(action.cl_ord_id, order_gone=True))
                return
            self.take(quoter.on_execution(Execution(
                action.cl_ord_id, action.orig_cl_ord_id, "4", "4", order.side, order.price,
                0, 0, order.cum)))
        else:
            self.orders.clear()

    def answer_all(self) -> None:
        while self.inflight:
            self.answer()

    def fill(self, cl_ord_id: str, qty: int) -> None:
        """A taker trades ``qty`` against a resting order."""
        order = self.orders[cl_ord_id]
        order.leaves -= qty
        order.cum += qty
        if not order.leaves:
            del self.orders[cl_ord_id]
        self.take(self.quoter.on_execution(Execution(
            cl_ord_id, "", "F", "1" if order.leaves else "2", order.side, order.price, qty,
            order.leaves, order.cum)))


def started(params: QuoteParams, spec: Instrument, reference: int | None = None) -> Venue:
    quoter = Quoter(params, spec.price_band(), reference or spec.reference_price_ticks)
    venue = Venue(quoter)
    venue.take(quoter.quote())
    venue.answer_all()
    return venue


def book(venue: Venue, side: str) -> list[int]:
    return sorted(o.price for o in venue.orders.values() if o.side == side)


def test_quotes_levels_each_side_around_the_reference(spec: Instrument) -> None:
    venue = started(QuoteParams(levels=3, size=2, spread_ticks=4), spec)
    reference = spec.reference_price_ticks
    assert book(venue, BUY) == [reference - 4, reference - 3, reference - 2]
    assert book(venue, SELL) == [reference + 2, reference + 3, reference + 4]
    assert all(o.leaves == 2 for o in venue.orders.values())
    assert venue.quoter.quote() == []  # nothing to change


def test_inventory_skews_quotes_against_the_position(spec: Instrument) -> None:
    params = QuoteParams(levels=2, size=1, spread_ticks=4, max_position=4, skew_ticks=4)
    venue = started(params, spec)
    flat_bid, flat_ask = max(book(venue, BUY)), min(book(venue, SELL))
    best_bid = next(name for name, o in venue.orders.items() if o.price == flat_bid)
    venue.fill(best_bid, 1)  # bought one: long
    venue.answer_all()
    assert venue.quoter.position == 1
    assert venue.quoter.skew() == -1
    assert max(book(venue, BUY)) == flat_bid - 1 and min(book(venue, SELL)) == flat_ask - 1

    for _ in range(2):  # sold twice: short one
        best_ask = min(venue.orders.items(),
                       key=lambda item: item[1].price if item[1].side == SELL else 1 << 62)[0]
        venue.fill(best_ask, 1)
        venue.answer_all()
    assert venue.quoter.position == -1
    assert max(book(venue, BUY)) == flat_bid + 1 and min(book(venue, SELL)) == flat_ask + 1


def test_no_bids_beyond_the_maximum_position(spec: Instrument) -> None:
    params = QuoteParams(levels=3, size=2, spread_ticks=2, max_position=5, skew_ticks=0)
    venue = started(params, spec)
    assert sum(o.leaves for o in venue.orders.values() if o.side == BUY) == 5
    bids = sorted((o.price, name) for name, o in venue.orders.items() if o.side == BUY)
    for _, name in bids:
        venue.fill(name, venue.orders[name].leaves)
        venue.answer_all()
    assert venue.quoter.position == 5
    assert book(venue, BUY) == []
    assert sum(o.leaves for o in venue.orders.values() if o.side == SELL) == 6  # 3 x 2


def test_a_reference_move_replaces_and_never_crosses(spec: Instrument) -> None:
    venue = started(QuoteParams(levels=3, size=1, spread_ticks=2), spec)
    names = set(venue.orders)
    up = venue.quoter.reference + 10  # far beyond the asks: bids must wait for them
    venue.take(venue.quoter.on_reference(up))
    replaces = [a for a in venue.inflight if isinstance(a, Replace)]
    assert replaces and len(replaces) == len(venue.inflight)
    assert {a.side for a in replaces} == {SELL}
    venue.answer_all()
    assert book(venue, BUY) == [up - 3, up - 2, up - 1]
    assert book(venue, SELL) == [up + 1, up + 2, up + 3]
    assert not names & set(venue.orders)  # every order was replaced, none placed anew
    assert len(venue.orders) == 6


@pytest.mark.parametrize("reference_at", ["low", "high"])
def test_quotes_stay_inside_the_band_and_on_the_tick(spec: Instrument,
                                                     reference_at: str) -> None:
    low, high = spec.price_band()
    reference = low + 1 if reference_at == "low" else high - 1
    venue = started(QuoteParams(levels=5, size=1, spread_ticks=4), spec, reference)
    prices = book(venue, BUY) + book(venue, SELL)
    assert prices and all(low <= p <= high for p in prices)
    assert len(prices) < 10  # levels outside the band are not quoted
    for price in prices:
        text = spec.ticks_to_price(price)
        assert spec.price_to_ticks(text) == price
        spec.check_price_in_band(price)


def test_shutdown_cancels_everything_and_stops_quoting(spec: Instrument) -> None:
    venue = started(QuoteParams(), spec)
    assert venue.quoter.shutdown() == [MassCancel()]
    some = next(iter(venue.orders))
    assert venue.quoter.on_reference(venue.quoter.reference + 3) == []
    venue.fill(some, 1)
    assert venue.inflight == []


def test_a_refused_order_waits_for_the_timer(spec: Instrument) -> None:
    quoter = Quoter(QuoteParams(levels=1), spec.price_band(), spec.reference_price_ticks)
    actions = quoter.quote()
    bid = next(a for a in actions if isinstance(a, Place) and a.side == BUY)
    refused = Execution(bid.cl_ord_id, "", "8", "8", "")
    assert quoter.on_execution(refused) == []  # not sent again at once
    again = quoter.on_timer()
    assert [(a.side, a.price) for a in again if isinstance(a, Place)] == [(BUY, bid.price)]


@pytest.mark.parametrize("seed", range(20))
def test_random_answers_fills_and_moves_never_cross(spec: Instrument, seed: int) -> None:
    rng = random.Random(seed)
    params = QuoteParams(levels=rng.randint(1, 4), size=rng.randint(1, 3),
                         spread_ticks=rng.randint(1, 6), step_ticks=rng.randint(1, 3),
                         max_position=rng.randint(2, 8), skew_ticks=rng.randint(0, 8))
    venue = started(params, spec)
    low, high = spec.price_band()
    for _ in range(300):
        roll = rng.random()
        if roll < 0.5 and venue.inflight:
            venue.answer(rng.randrange(len(venue.inflight)))
        elif roll < 0.7 and venue.orders:
            name = rng.choice(sorted(venue.orders))
            venue.fill(name, rng.randint(1, venue.orders[name].leaves))
        elif roll < 0.85:
            step = rng.randint(-5, 5)
            venue.take(venue.quoter.on_reference(
                min(high - 1, max(low + 1, venue.quoter.reference + step))))
        else:
            venue.take(venue.quoter.on_timer())
        assert abs(venue.quoter.position) <= params.max_position
    venue.answer_all()
    venue.take(venue.quoter.on_timer())
    venue.answer_all()
    assert venue.quoter.quote() == []  # settled on the desired quotes
    wanted = venue.quoter.desired()
    assert sorted((o.side, o.price, o.leaves) for o in venue.orders.values()) == \
        sorted((side, price, qty) for (side, _), (price, qty) in wanted.items())
