"""Clearing batches over random command streams, settled on a simulated chain.

The streams are those of `exchange_strategies` (orders of every kind, cancels, amends, cuts,
timers, deposits, withdrawals, ...) with more clearing mixed in at random places: cuts,
withdrawals, forced withdrawals (new requests and repeats of the last one), deposits and
batch confirmations (mostly of the oldest unconfirmed batch, sometimes of another). Every cut
runs with a drawn chunk size, down to one entry per batch, so chunking happens all the time.
Every batch is settled, as it is cut, on a `Chain` that checks what the contract checks:
consecutive ids from 1, no balance below zero after any delta, the running sum of the deltas
at or below zero after every chunk and zero after the last, withdrawals within the balance,
each forced request served once, to its account, for at most what it asked.

The insurance fund is funded first: an unfunded fund covering a shortfall goes below zero
and so would its balance on chain (see the unit test of that in ``test_exchange_clearing``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import NamedTuple
from unittest import mock

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.clearing
from engine.clearing import WITHDRAWAL_WEIGHT, BatchFill, BatchWithdrawal, ClearingBatch
from engine.commands import (
    BatchConfirmed,
    ClearingCut,
    CreditDeposit,
    ForceWithdrawal,
    RequestWithdrawal,
    Sequenced,
)
from engine.events import (
    ClearingConfirmed,
    CommandRejected,
    ExchangeEvent,
    ForcedWithdrawal,
    Reason,
    Trade,
    WithdrawalRequested,
)
from engine.exchange import Exchange
from engine.exchange_state import decode_state, encode_state
from engine.ledger import INSURANCE_FUND
from engine.messages import Side
from tests.exchange_helpers import HOUR, NS
from tests.property.exchange_strategies import (
    ACCOUNTS,
    INSTRUMENTS,
    Step,
    Stream,
    stamp,
    streams,
)
from tests.unit.test_exchange_clearing import Chain

clearing_settings = settings(max_examples=60, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


class Confirm(NamedTuple):
    """Confirm the oldest batch not yet confirmed, or (``offset`` not 0) another one."""

    offset: int


class Force(NamedTuple):
    """A forced withdrawal: a new request (the chain numbers them from 1), or ``repeat`` the
    last one as it was."""

    account: str
    amount: int
    repeat: bool


class ClearingStream(NamedTuple):
    """A stream with clearing steps mixed in, cut into chunks of ``chunk_entries``."""

    start: int
    steps: list[Step | Confirm | Force]
    chunk_entries: int


_DT = st.sampled_from([0, 0, NS, HOUR])
_AMOUNT = st.sampled_from([1_000_000, 100_000_000, 1_000_000_000, 10**12])
_EXTRA: st.SearchStrategy[Step | Confirm | Force] = st.one_of(
    st.builds(Step, _DT, st.just(ClearingCut())),
    st.builds(Step, _DT, st.builds(RequestWithdrawal, st.integers(7, 30),
                                   st.sampled_from(ACCOUNTS), _AMOUNT)),
    st.builds(Step, _DT, st.builds(CreditDeposit, st.integers(13, 60),
                                   st.sampled_from(ACCOUNTS), _AMOUNT)),
    st.builds(Force, st.sampled_from(ACCOUNTS), _AMOUNT, st.sampled_from([False, False, True])),
    st.builds(Confirm, st.sampled_from([0, 0, 0, 0, 1, -1])),
)


@st.composite
def clearing_streams(draw: st.DrawFn) -> ClearingStream:
    """A funded insurance fund, then a stream with up to 30 clearing steps put in it."""
    stream = draw(streams(min_chunks=4, max_chunks=14))
    steps: list[Step | Confirm | Force] = list(stream.steps)
    for where, extra in draw(st.lists(st.tuples(st.integers(0, 1 << 16), _EXTRA),
                                      max_size=30)):
        steps.insert(where % (len(steps) + 1), extra)
    fund = Step(0, CreditDeposit(99, INSURANCE_FUND, 10**14))
    return ClearingStream(stream.start, [fund, *steps], draw(st.sampled_from([800, 1, 2, 5])))


def stamp_clearing(stream: ClearingStream, ex: Exchange) -> Iterator[Sequenced]:
    """The stream's commands stamped against ``ex`` (apply each before asking for the next)."""
    ts = stream.start
    request: ForceWithdrawal | None = None
    for step in stream.steps:
        if isinstance(step, Step):
            yield from stamp(Stream(ts, [step]), ex)
            ts += step.dt
            continue
        if isinstance(step, Confirm):
            unconfirmed = ex.clearing.unconfirmed
            batch_id = step.offset + (unconfirmed[0].batch_id if unconfirmed
                                      else ex.clearing.next_batch_id)
            command: BatchConfirmed | ForceWithdrawal = \
                BatchConfirmed(batch_id, f"0x{batch_id:064x}")
        elif request is None or not step.repeat:
            request_id = 1 if request is None else request.request_id + 1
            command = request = ForceWithdrawal(request_id, step.account, step.amount)
        else:
            command = request
        yield Sequenced(ex.last_seq + 1, ts, command)


class Period:
    """What the engine said since the last cut that the next cut's batches must carry."""

    def __init__(self) -> None:
        self.withdrawals: list[BatchWithdrawal] = []
        self.fills: list[BatchFill] = []

    def record(self, events: list[ExchangeEvent], ts: int) -> None:
        for event in events:
            if isinstance(event, WithdrawalRequested):
                self.withdrawals.append(BatchWithdrawal(event.withdrawal_id, 0, event.account,
                                                        event.amount))
            elif isinstance(event, ForcedWithdrawal):
                self.withdrawals.append(BatchWithdrawal(0, event.request_id, event.account,
                                                        event.paid))
            elif isinstance(event, Trade):
                pair = (event.taker_account, event.maker_account)
                buyer, seller = pair if event.aggressor_side == Side.BUY else pair[::-1]
                self.fills.append(BatchFill(event.symbol, event.trade_id, event.price,
                                            event.qty, buyer, seller, ts))


def check_cut(ex: Exchange, chain: Chain, batches: list[ClearingBatch], period: Period,
              chunk_entries: int) -> None:
    """Right after a cut: the chain holds the ledger's totals and each delta's ``balance``;
    the batches carry the period's withdrawals and fills, chunked as they should be."""
    chain.check(ex)
    for batch in batches:
        for delta in batch.deltas:
            assert chain.balance(delta.account) == delta.balance, (delta, batch.batch_id)
        assert batch.cut == ex.cuts
        assert batch.credited_deposit_id == max(ex.deposits_seen, default=0)
    if not batches:
        assert period.withdrawals == []
        assert period.fills == []
        return
    # a delta weighs 1, a withdrawal WITHDRAWAL_WEIGHT; each chunk is filled up to the limit
    # (the next entry would not fit), and only a single entry may exceed it alone
    weights = [[1] * len(b.deltas) + [WITHDRAWAL_WEIGHT] * len(b.withdrawals) for b in batches]
    for chunk, following in itertools.pairwise(weights):
        assert chunk and sum(chunk) + following[0] > chunk_entries
    for chunk in weights:
        assert sum(chunk) <= chunk_entries or len(chunk) == 1
    assert weights[-1] or len(weights) == 1
    assert [b.last_chunk for b in batches] == [False] * (len(batches) - 1) + [True]
    assert [b.fills for b in batches] == [[]] * (len(batches) - 1) + [period.fills]
    assert [w for b in batches for w in b.withdrawals] == period.withdrawals
    deltas = [d for b in batches for d in b.deltas]
    debits = [d for d in deltas if d.amount < 0]
    assert deltas[:len(debits)] == debits  # debits first
    assert sum(d.amount for d in deltas) == 0
    assert len({d.account for d in deltas}) == len(deltas)


def run(stream: ClearingStream) -> tuple[list[Sequenced], list[bytes]]:
    """Apply the stream with every check: its journal and the encoded batches it cut."""
    ex = Exchange(INSTRUMENTS)
    chain = Chain()
    period = Period()
    journal: list[Sequenced] = []
    confirmed = 0
    with mock.patch.object(engine.clearing, "CHUNK_ENTRIES", stream.chunk_entries):
        for stamped in stamp_clearing(stream, ex):
            journal.append(stamped)
            command = stamped.command
            oldest = ex.clearing.unconfirmed[0].batch_id if ex.clearing.unconfirmed else None
            events = ex.apply(stamped)
            chain.follow(command, events)  # settles every batch: ids, balances, carry
            period.record(events, stamped.ts)  # (a cut's liquidations trade in its period)
            if isinstance(command, ClearingCut):
                check_cut(ex, chain, [e for e in events if isinstance(e, ClearingBatch)],
                          period, stream.chunk_entries)
                period = Period()
            else:
                assert not any(isinstance(e, ClearingBatch) for e in events), stamped
            if isinstance(command, BatchConfirmed):
                if command.batch_id == oldest:
                    assert events == [ClearingConfirmed(command.batch_id, command.batch_hash)]
                    confirmed += 1
                else:
                    assert events == [CommandRejected("batch_confirmed", "", command.batch_id,
                                                      Reason.UNKNOWN_BATCH)]
            assert ex.clearing.unconfirmed == chain.settled[confirmed:]
    assert [b.batch_id for b in chain.settled] == list(range(1, len(chain.settled) + 1))
    return journal, [msgspec.msgpack.encode(b) for b in chain.settled]


def batches_of(ex: Exchange, journal: list[Sequenced]) -> list[bytes]:
    return [msgspec.msgpack.encode(e) for stamped in journal for e in ex.apply(stamped)
            if isinstance(e, ClearingBatch)]


@clearing_settings
@given(stream=clearing_streams())
def test_every_batch_settles_and_leaves_the_chain_holding_the_ledger(
        stream: ClearingStream) -> None:
    run(stream)


@clearing_settings
@given(stream=clearing_streams(), data=st.data())
def test_the_same_commands_cut_the_same_batches(stream: ClearingStream,
                                                data: st.DataObject) -> None:
    journal, batches = run(stream)
    at = data.draw(st.integers(0, len(journal)), label="snapshot at")
    with mock.patch.object(engine.clearing, "CHUNK_ENTRIES", stream.chunk_entries):
        assert batches_of(Exchange(INSTRUMENTS), journal) == batches
        saved = Exchange(INSTRUMENTS)
        before = batches_of(saved, journal[:at])
        restored = Exchange.restore(decode_state(encode_state(saved.state())))
        assert restored.state_hash() == saved.state_hash()
        assert before + batches_of(restored, journal[at:]) == batches
