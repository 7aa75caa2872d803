"""Delivery settlement, by itself and over random streams of nodes, epochs and trades.

* The payout of a delivery for ``delivered / required`` of it is exact to the micro-USDC for
  any sizes, fee rate and fraction: premium and bond are split without a micro-USDC made or
  lost, the seller's share is ``floor(premium x f)``, the buyer's compensation
  ``floor(bond x (1 - f))``, and every share moves the right way as ``f`` grows.
* Streams of node registrations and deregistrations, epochs with attestations (some
  repeated, some for unknown nodes or epochs), spot trades on GPU-hours and rack-load,
  settlement commands, set capacities and timers keep the ledger conserved; escrow holds
  exactly the premiums and bonds of open deliveries; no node carries more lots of a window
  than it has units; attested deliveries settle once their window and its grace are over,
  for at most what was required; old epochs are forgotten. The same journal replays to the
  same events and state hash, also on an exchange restored from a snapshot anywhere in it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import NamedTuple, TypeVar

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.commands import (
    AttestationAccepted,
    CreditDeposit,
    DeregisterNode,
    ExchangeCommand,
    OpenEpoch,
    PlaceOrder,
    RegisterNode,
    Sequenced,
    SetCapacity,
    SettleDelivery,
    Timer,
)
from engine.delivery import Delivery, payout
from engine.events import DeliveryOpened, DeliverySettled, EpochOpened, ExchangeEvent
from engine.exchange import Exchange
from engine.exchange_state import decode_state, encode_state
from engine.messages import Side, TimeInForce
from engine.uptime import ATTESTED_EPOCHS
from tests.exchange_helpers import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    DAY,
    GPU_SPOT,
    HOUR,
    NS,
    RACK_SPOT,
    REGISTRY,
    START,
    account,
)

# --- the payout arithmetic -------------------------------------------------------------------

_MONEY = st.integers(0, 10**15)


def _delivery(premium: int, bond: int, fee_bp: int) -> Delivery:
    return Delivery(1, GPU_SPOT, "GPU.H100", 1, BOB, ALICE, 1, 0, HOUR, premium, bond, fee_bp)


@st.composite
def _fractions(draw: st.DrawFn) -> tuple[int, int, int]:
    """(low, high, required): two delivered counts, low <= high <= required."""
    required = draw(st.integers(1, 10**7))
    low = draw(st.integers(0, required))
    return low, draw(st.integers(low, required)), required


@settings(max_examples=500)
@given(premium=_MONEY, bond=_MONEY, fee_bp=st.integers(0, 10_000), fractions=_fractions())
def test_the_payout_is_exact_conserved_and_monotone_in_the_delivered_fraction(
        premium: int, bond: int, fee_bp: int, fractions: tuple[int, int, int]) -> None:
    low, high, required = fractions
    delivery = _delivery(premium, bond, fee_bp)
    splits = [payout(delivery, delivered, required) for delivered in (low, high)]
    for delivered, split in zip((low, high), splits, strict=True):
        earned = split.seller_paid + split.seller_fee
        assert earned == premium * delivered // required
        assert split.seller_fee == earned * fee_bp // 10_000
        assert split.buyer_compensation == bond * (required - delivered) // required
        assert earned + split.buyer_refund == premium
        assert split.buyer_compensation + split.bond_released == bond
        assert min(msgspec.structs.astuple(split)) >= 0
        # only the fraction matters, not how it is written
        assert payout(delivery, delivered * 3, required * 3) == split
    less, more = splits
    assert less.seller_paid <= more.seller_paid
    assert less.seller_fee <= more.seller_fee
    assert less.bond_released <= more.bond_released
    assert less.buyer_refund >= more.buyer_refund
    assert less.buyer_compensation >= more.buyer_compensation


@given(premium=_MONEY, bond=_MONEY, fee_bp=st.integers(0, 10_000))
def test_nothing_and_everything_delivered_are_the_ends(premium: int, bond: int,
                                                      fee_bp: int) -> None:
    delivery = _delivery(premium, bond, fee_bp)
    none = payout(delivery, 0, 12)
    assert (none.seller_paid, none.seller_fee, none.buyer_refund, none.buyer_compensation,
            none.bond_released) == (0, 0, premium, bond, 0)
    full = payout(delivery, 12, 12)
    fee = premium * fee_bp // 10_000
    assert (full.seller_paid, full.seller_fee, full.buyer_refund, full.buyer_compensation,
            full.bond_released) == (premium - fee, fee, 0, 0, bond)


# --- streams ---------------------------------------------------------------------------------

INSTRUMENTS = (REGISTRY[GPU_SPOT], REGISTRY[RACK_SPOT])
PROVIDERS = (BOB, CAROL)
BUYERS = (ALICE, DAVE)
NODES = tuple(account(0x90DE_0000 + n) for n in range(1, 6))
EPOCH = 5 * 60 * NS
MAX_CATCH_UP = 40
"""Epochs the clock opens at most when time jumps; the rest are never opened (an outage)."""


class Toggle(NamedTuple):
    """A node (index into `NODES`) goes down if it was up, or up if it was down."""

    node: int


class OddEpoch(NamedTuple):
    """Open an epoch off the clock's grid: ``skip`` numbers after the last, starting now."""

    skip: int
    length: int


class Attest(NamedTuple):
    """A node attests an epoch ``back`` epochs before the last opened (maybe forgotten or
    attested already)."""

    node: int
    back: int


class Deregister(NamedTuple):
    """Deregister a node, effective ``after`` ns from now."""

    node: int
    after: int


Action = ExchangeCommand | Toggle | OddEpoch | Attest | Deregister


class Step(NamedTuple):
    """Move the clock ``dt`` ns (opening the epochs that start on the way), then act."""

    dt: int
    action: Action


T = TypeVar("T")


def _w(*choices: tuple[T, int]) -> st.SearchStrategy[T]:
    """One of the values, in proportion to its weight; shrinks towards the first."""
    return st.sampled_from([value for value, weight in choices for _ in range(weight)])


_DT = _w((0, 6), (60 * NS, 4), (EPOCH, 8), (20 * 60 * NS, 4), (HOUR, 3), (2 * HOUR, 1),
         (DAY, 1))
_NODE = st.integers(0, len(NODES) - 1)
_UNDERLYING = _w(("GPU.H100", 4), ("RACK.KW", 2), ("GPU.X1", 1))


def _price(symbol: str, side: Side, offset: int) -> int:
    """``offset`` ticks from the reference price, up for a sell and down for a buy."""
    return REGISTRY[symbol].reference_price_ticks + (offset if side == Side.SELL else -offset)


@st.composite
def _trade(draw: st.DrawFn) -> list[Step]:
    """A provider's sell and, mostly, a buyer's buy that crosses it."""
    symbol = draw(_w((GPU_SPOT, 3), (RACK_SPOT, 1)))
    qty = draw(_w((1, 4), (2, 3), (4, 2), (7, 1)))
    sell = PlaceOrder(draw(st.sampled_from(PROVIDERS)), symbol, Side.SELL, qty,
                      _price(symbol, Side.SELL, draw(st.integers(-2, 2))))
    steps = [Step(draw(_DT), sell)]
    if draw(_w((True, 3), (False, 1))):
        tif = draw(_w((TimeInForce.GTC, 2), (TimeInForce.IOC, 1)))
        buy = PlaceOrder(draw(st.sampled_from(BUYERS)), symbol, Side.BUY,
                         draw(_w((qty, 3), (1, 1), (qty + 2, 1))),
                         _price(symbol, Side.BUY, -draw(st.integers(0, 3))), tif=tif)
        steps.append(Step(draw(_w((0, 3), (EPOCH, 1))), buy))
    return steps


def _one(strategy: st.SearchStrategy[Action]) -> st.SearchStrategy[list[Step]]:
    return st.builds(lambda dt, action: [Step(dt, action)], _DT, strategy)


_CHUNKS = _w(
    (_trade(), 10),
    (_one(st.builds(Toggle, _NODE)), 4),
    (_one(st.just(Timer())), 4),
    (_one(st.builds(RegisterNode, st.sampled_from(NODES), _w((BOB, 3), (CAROL, 2), ("0x", 1)),
                    _UNDERLYING, _w((4, 3), (1, 2), (2, 2), (0, 1)))), 2),
    (_one(st.builds(Deregister, _NODE, _w((HOUR, 2), (0, 1), (3 * HOUR, 1), (-HOUR, 1)))), 1),
    (_one(st.builds(Attest, _NODE, _w((0, 2), (1, 2), (ATTESTED_EPOCHS + 1, 1)))), 1),
    (_one(st.builds(OddEpoch, _w((1, 2), (0, 1), (-1, 1)), _w((EPOCH, 2), (0, 1)))), 1),
    (_one(st.builds(SettleDelivery, st.integers(1, 8), st.integers(0, 4), st.just(4))), 1),
    (_one(st.builds(SetCapacity, st.sampled_from(PROVIDERS), _UNDERLYING,
                    _w((6, 2), (0, 1)))), 1),
)


@st.composite
def streams(draw: st.DrawFn) -> list[Step]:
    """Funded buyers and providers, some nodes, then a mix of everything above; then
    time runs on, and a last timer comes once everything is due."""
    steps = [Step(0, CreditDeposit(n + 1, who, 10**12))
             for n, who in enumerate((*BUYERS, *PROVIDERS))]
    steps.append(Step(0, SetCapacity(CAROL, "GPU.H100", 6)))  # Carol starts without nodes
    steps += [Step(0, RegisterNode(NODES[0], BOB, "GPU.H100", 4)),
              Step(0, RegisterNode(NODES[1], BOB, "GPU.H100", 2)),
              Step(0, RegisterNode(NODES[2], BOB, "RACK.KW", 5))]
    for chunk in draw(st.lists(_CHUNKS.flatmap(lambda chunk: chunk), min_size=10,
                               max_size=60)):
        steps += chunk
    steps += [Step(EPOCH, Timer())] * 30  # the windows sold last run their course
    steps.append(Step(3 * DAY, Timer()))
    return steps


def _attestation(node: str, epoch: int) -> AttestationAccepted:
    return AttestationAccepted(node, epoch, epoch, f"0x{epoch % (1 << 200):064x}")


def _beacon(epoch: int) -> str:
    return f"0x{epoch % (1 << 200):064x}"


def stamp(steps: list[Step], ex: Exchange) -> Iterator[Sequenced]:
    """The stream's commands, stamped after ``ex``'s last; apply each before the next.

    As the clock passes the start of an epoch (every `EPOCH` from `START`'s midnight) the
    bridge opens it and the nodes that are up (the first three at first) attest it.
    """
    ts = START
    midnight = START - START % DAY
    up = {0, 1, 2}
    for step in steps:
        first = (ts - midnight) // EPOCH + 1
        ts += step.dt
        last = (ts - midnight) // EPOCH
        for number in range(max(first, last - MAX_CATCH_UP + 1), last + 1):
            start = midnight + number * EPOCH
            yield Sequenced(ex.last_seq + 1, start, OpenEpoch(number, _beacon(number), start,
                                                              EPOCH))
            for node in sorted(up):
                yield Sequenced(ex.last_seq + 1, start, _attestation(NODES[node], number))
        action = step.action
        opened = ex.uptime.last_epoch()
        latest = opened.epoch if opened is not None else 0
        command: ExchangeCommand
        if isinstance(action, Toggle):
            up ^= {action.node}
            continue
        if isinstance(action, OddEpoch):
            command = OpenEpoch(latest + action.skip, _beacon(latest + action.skip), ts,
                                action.length)
        elif isinstance(action, Attest):
            command = _attestation(NODES[action.node], latest - action.back)
        elif isinstance(action, Deregister):
            command = DeregisterNode(NODES[action.node], ts + action.after)
        else:
            command = action
        yield Sequenced(ex.last_seq + 1, ts, command)


def fresh() -> Exchange:
    return Exchange(INSTRUMENTS)


def check(ex: Exchange, stamped: Sequenced, events: list[ExchangeEvent]) -> None:
    """Everything that must hold after every command."""
    assert ex.ledger.conserved(), stamped
    escrow: dict[str, int] = defaultdict(int)
    allocated: dict[tuple[str, int], int] = defaultdict(int)
    for delivery in ex.deliveries.values():
        escrow[delivery.buyer] += delivery.premium
        escrow[delivery.seller] += delivery.bond
        for node, units in delivery.allocation or ():
            allocated[(node, delivery.window_start)] += units
        assert sum(units for _, units in delivery.allocation or ()) <= delivery.qty
    for who, balances in ex.ledger.accounts.items():
        assert balances.escrow == escrow[who], who
        assert min(balances.available, balances.reserved, balances.escrow) >= 0, who
    uptime = ex.uptime
    assert uptime.allocated == dict(allocated)
    for (node, _), units in allocated.items():
        assert units <= uptime.nodes[node].units
    numbers = list(uptime.epochs)
    assert numbers == sorted(numbers)
    assert {epoch for _, epoch in uptime.attested} <= set(numbers)
    if any(isinstance(event, EpochOpened) for event in events):
        # kept: the last few, and those an open attested delivery or a later sale may need
        keep_from = min([d.window_start for d in ex.deliveries.values()
                         if d.allocation is not None] + [stamped.ts + 1])
        for number in numbers[:-ATTESTED_EPOCHS]:
            assert uptime.epochs[number].start_ts >= keep_from, number


_settings = settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_settings
@given(steps=streams())
def test_streams_keep_money_conserved_and_settle_attested_deliveries_in_time(
        steps: list[Step]) -> None:
    ex = fresh()
    window_ends: dict[int, int] = {}  # of the attested deliveries
    for stamped in stamp(steps, ex):
        events = ex.apply(stamped)
        for event in events:
            if isinstance(event, DeliveryOpened) and \
                    ex.deliveries[event.delivery_id].allocation is not None:
                window_ends[event.delivery_id] = event.window_end
            elif isinstance(event, DeliverySettled):
                assert 0 <= event.delivered <= event.required
                if event.delivery_id in window_ends:  # waited for the grace after the window
                    assert stamped.ts >= window_ends[event.delivery_id] + ex.uptime.grace()
        check(ex, stamped, events)
    assert ex.deliveries == {} and ex.sold == {} and ex.uptime.allocated == {}
    assert all(b.escrow == 0 for b in ex.ledger.accounts.values())


def _record(steps: list[Step]) -> tuple[list[Sequenced], list[bytes], str]:
    ex = fresh()
    journal: list[Sequenced] = []
    events: list[bytes] = []
    for stamped in stamp(steps, ex):
        journal.append(stamped)
        events.append(msgspec.msgpack.encode(ex.apply(stamped)))
    return journal, events, ex.state_hash()


@_settings
@given(steps=streams(), data=st.data())
def test_streams_replay_and_restore_to_the_same_events_and_state_hash(
        steps: list[Step], data: st.DataObject) -> None:
    journal, events, final_hash = _record(steps)
    twin = fresh()
    assert [msgspec.msgpack.encode(twin.apply(s)) for s in journal] == events
    assert twin.state_hash() == final_hash
    cut = data.draw(st.integers(0, len(journal)), label="cut")
    saved = fresh()
    for stamped in journal[:cut]:
        saved.apply(stamped)
    restored = Exchange.restore(decode_state(encode_state(saved.state())))
    assert restored.state_hash() == saved.state_hash()
    assert [msgspec.msgpack.encode(restored.apply(s)) for s in journal[cut:]] == events[cut:]
    assert restored.state_hash() == final_hash
