"""What the exchange promises over random command streams (see `exchange_strategies`).

* Money is conserved after every command, fees only flow in, positions and variation margin
  sum to zero across accounts, no future trades past its last trade time, and every bucket
  holds exactly what it is for:
  reserved the order locks and order margin, margin the position margin, escrow the premiums
  and bonds of open deliveries. No account is left with negative equity, counting its bonds
  in escrow (the insurance fund tops it up), and accounts that never touched a future never
  go negative at all.
* ``available`` goes below zero only through clearing (cuts and final settlement); a
  command that is not clearing never takes an account from zero or above to below zero.
* The same journal gives byte-identical events and the same state hash, on a fresh exchange,
  on one restored from a snapshot at any point, and with the reference order book.
"""

from __future__ import annotations

from collections import defaultdict

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.commands import ClearingCut, Sequenced, Timer
from engine.cython_book import CythonBook
from engine.events import ExchangeEvent, Trade, VariationMargin
from engine.exchange import Exchange
from engine.exchange_state import decode_state, encode_state
from engine.ledger import FEE_ACCOUNT, SYSTEM_ACCOUNTS
from engine.market import BookFactory
from engine.messages import Side
from engine.reference_book import ReferenceBook
from tests.property.exchange_strategies import INSTRUMENTS, Stream, stamp, streams

exchange_settings = settings(max_examples=200, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


def fresh(book_factory: BookFactory = CythonBook) -> Exchange:
    return Exchange(INSTRUMENTS, book_factory)


def held(amount: int, bp: int) -> int:
    return -(-amount * bp // 10_000)


def check_holdings(ex: Exchange) -> None:
    """Every bucket and every open quantity agrees with the orders, positions and deliveries
    behind it."""
    reserved: dict[str, int] = defaultdict(int)
    margin: dict[str, int] = defaultdict(int)
    escrow: dict[str, int] = defaultdict(int)
    open_sells: dict[tuple[str, str], int] = defaultdict(int)
    for market in ex.markets.values():
        spec, symbol = market.instrument, market.symbol
        tv = spec.micro_usdc_per_tick_lot
        orders = [o for o in ex.orders.values() if o.symbol == symbol]
        book = market.book.state()
        in_book = {r[0]: r[4] for r in book.resting} | {s[0]: s[6] for s in book.stops}
        assert in_book == {o.order_id: o.remaining for o in orders}, symbol
        for order in orders:
            notional = order.limit * order.remaining * tv
            if market.spot and order.side == Side.BUY:
                lock = notional + notional * spec.taker_fee_bp // 10_000
            elif market.spot:
                lock = held(notional, spec.seller_bond_bp)
                open_sells[(order.account, symbol)] += order.remaining
            else:  # the taker fee; a sell may trade up to the top of the band
                price = order.limit if order.side == Side.BUY else market.max_price
                lock = price * order.remaining * tv * spec.taker_fee_bp // 10_000
            assert order.lock == lock, order
            reserved[order.account] += lock
        for who, position in market.positions.items():
            buys = sum(o.remaining for o in orders if o.account == who and o.side == Side.BUY)
            sells = sum(o.remaining for o in orders if o.account == who and o.side == Side.SELL)
            assert (position.open_buys, position.open_sells) == (buys, sells), (who, symbol)
            worst = max(abs(position.qty + buys), abs(position.qty - sells))
            on_position = held(abs(position.qty) * market.mark * tv, spec.initial_margin_bp)
            on_orders = held(worst * market.mark * tv, spec.initial_margin_bp) - on_position
            assert (position.held_position, position.held_orders) == (on_position, on_orders)
            reserved[who] += on_orders
            margin[who] += on_position
    sold: dict[tuple[str, str, int], int] = defaultdict(int)
    for delivery in ex.deliveries.values():
        escrow[delivery.buyer] += delivery.premium
        escrow[delivery.seller] += delivery.bond
        sold[(delivery.seller, delivery.underlying, delivery.window_start)] += delivery.qty
    for who, b in ex.ledger.accounts.items():
        assert (b.reserved, b.margin, b.escrow) == (reserved[who], margin[who], escrow[who]), who
    assert ex.open_sells == dict(open_sells)
    assert ex.sold == dict(sold)


def traded_futures(ex: Exchange) -> set[str]:
    """Accounts that have had an order or a position in a future."""
    return {who for m in ex.markets.values() if not m.spot for who in m.positions}


def check_zero_sum(ex: Exchange, events: list[ExchangeEvent]) -> None:
    """Every position has a counterparty, and marking moves as much money in as out."""
    for market in ex.markets.values():
        if not market.spot:
            positions = market.positions.values()
            assert sum(p.qty for p in positions) == 0, market.symbol
            assert sum(p.open_value for p in positions) == 0, market.symbol
    moved: dict[str, int] = defaultdict(int)
    for event in events:
        if isinstance(event, VariationMargin):
            moved[event.symbol] += event.amount
    assert not any(moved.values()), moved


@exchange_settings
@given(stream=streams())
def test_money_is_conserved_and_every_bucket_holds_what_it_is_for(stream: Stream) -> None:
    ex = fresh()
    fees = 0
    for stamped in stamp(stream, ex):
        events = ex.apply(stamped)
        ledger = ex.ledger
        assert ledger.conserved(), stamped
        check_holdings(ex)
        check_zero_sum(ex, events)
        for trade in (e for e in events if isinstance(e, Trade)):
            expiry = ex.markets[trade.symbol].instrument.expiry
            assert expiry is None or stamped.ts < expiry.last_trade_ns, (trade, stamped)
        assert ledger.balances(FEE_ACCOUNT).available >= fees  # fees are only ever paid in
        fees = ledger.balances(FEE_ACCOUNT).available
        futures = traded_futures(ex)
        bonds: dict[str, int] = defaultdict(int)
        for delivery in ex.deliveries.values():
            bonds[delivery.seller] += delivery.bond
        for who, b in ledger.accounts.items():
            if who in SYSTEM_ACCOUNTS:
                continue
            # the insurance fund tops up whoever is left with negative equity, counting the
            # bonds in escrow that will come back to a seller
            assert b.available + b.reserved + b.margin + bonds[who] >= 0, (who, b, stamped)
            if who not in futures:
                assert min(b.available, b.reserved, b.margin, b.escrow) >= 0, (who, b, stamped)


@exchange_settings
@given(stream=streams())
def test_available_goes_below_zero_only_through_clearing(stream: Stream) -> None:
    ex = fresh()
    for stamped in stamp(stream, ex):
        before = {who: b.available for who, b in ex.ledger.accounts.items()}
        ex.apply(stamped)
        if isinstance(stamped.command, ClearingCut | Timer):  # cuts and final settlement
            continue
        # (an account already below zero may still lock fees on orders that reduce its risk)
        for who, b in ex.ledger.accounts.items():
            if before.get(who, 0) >= 0:
                assert b.available >= 0, (who, before.get(who, 0), b, stamped)


def record(stream: Stream) -> tuple[list[Sequenced], list[bytes], str]:
    """Run ``stream`` on a fresh exchange: its journal, encoded events and final state hash."""
    ex = fresh()
    journal: list[Sequenced] = []
    events: list[bytes] = []
    for stamped in stamp(stream, ex):
        journal.append(stamped)
        events.append(msgspec.msgpack.encode(ex.apply(stamped)))
    return journal, events, ex.state_hash()


def replay(ex: Exchange, journal: list[Sequenced]) -> list[bytes]:
    return [msgspec.msgpack.encode(ex.apply(stamped)) for stamped in journal]


@exchange_settings
@given(stream=streams())
def test_the_same_journal_gives_the_same_bytes(stream: Stream) -> None:
    journal, events, final_hash = record(stream)
    twin = fresh()
    assert replay(twin, journal) == events
    assert twin.state_hash() == final_hash


@exchange_settings
@given(stream=streams(), data=st.data())
def test_a_restored_exchange_continues_identically(stream: Stream, data: st.DataObject) -> None:
    journal, events, final_hash = record(stream)
    cut = data.draw(st.integers(0, len(journal)), label="cut")
    books: list[BookFactory] = [CythonBook, ReferenceBook]
    book = data.draw(st.sampled_from(books), label="restored book")
    saved = fresh()
    replay(saved, journal[:cut])
    restored = Exchange.restore(decode_state(encode_state(saved.state())), book)
    assert restored.state_hash() == saved.state_hash()
    assert replay(restored, journal[cut:]) == events[cut:]
    assert restored.state_hash() == final_hash


@exchange_settings
@given(stream=streams())
def test_the_reference_book_gives_the_same_exchange(stream: Stream) -> None:
    journal, events, final_hash = record(stream)
    reference = fresh(ReferenceBook)
    for stamped, expected in zip(journal, events, strict=True):
        assert msgspec.msgpack.encode(reference.apply(stamped)) == expected, stamped
    assert reference.state_hash() == final_hash
