"""The sequencer, recovery from a data directory, and the engine's stdio framing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import msgspec
import pytest

from engine.commands import CreditDeposit, PlaceOrder, Timer
from engine.exchange import Exchange
from engine.exchange_state import decode_state
from engine.instruments import Instrument
from engine.journal import FileJournal, FsyncPolicy
from engine.messages import Side
from engine.recovery import (
    RecoveryError,
    journal_path,
    open_data_dir,
    snapshot_store,
    verify_data_dir,
)
from engine.registry import Registry
from engine.sequencer import Sequencer, decode_sequenced
from engine.stdio import (
    RequestError,
    decode_reply,
    encode_command,
    frame,
    serve,
    split_frames,
)

ALICE = "0x" + "a1" * 20
BOB = "0x" + "b0" * 20
FUTURE = "GPU.H100.F2701"


@pytest.fixture(scope="module")
def instruments() -> list[Instrument]:
    return list(Registry.load(listing_date=date(2026, 11, 30)))


class SteppingClock:
    """A wall clock that goes where the test says, backwards included."""

    def __init__(self, *readings: int) -> None:
        self.readings: Iterator[int] = iter(readings)

    def __call__(self) -> int:
        return next(self.readings)


def test_events_wait_for_the_journal(tmp_path: Path, instruments: list[Instrument]) -> None:
    journal = FileJournal(tmp_path / "j", FsyncPolicy.GROUP, group_commit_ms=10_000)
    sequencer = Sequencer(Exchange(instruments), journal, clock=SteppingClock(5, 7))
    assert sequencer.submit(CreditDeposit(1, ALICE, 10**9)) == 1
    assert sequencer.submit(CreditDeposit(2, BOB, 10**9)) == 2
    assert sequencer.release() == []  # not durable yet: nothing may be published
    released = sequencer.sync()
    assert [(r.seq, r.ts) for r in released] == [(1, 5), (2, 7)]
    assert [type(e).__name__ for e in released[0].events] == ["DepositCredited",
                                                             "BalanceChanged"]
    assert sequencer.release() == []
    records = [decode_sequenced(p) for _, p in journal.read()]
    assert [(s.seq, s.ts, s.command) for s in records] == [
        (1, 5, CreditDeposit(1, ALICE, 10**9)), (2, 7, CreditDeposit(2, BOB, 10**9))]


def test_time_never_runs_backwards(tmp_path: Path, instruments: list[Instrument]) -> None:
    journal = FileJournal(tmp_path / "j", FsyncPolicy.ALWAYS)
    sequencer = Sequencer(Exchange(instruments), journal, clock=SteppingClock(100, 40, 120))
    for _ in range(3):
        sequencer.submit(Timer())
    assert [r.ts for r in sequencer.release()] == [100, 100, 120]


def test_a_journal_and_exchange_out_of_step_are_refused(
    tmp_path: Path, instruments: list[Instrument]
) -> None:
    journal = FileJournal(tmp_path / "j", FsyncPolicy.NONE)
    journal.append(b"not from this exchange")
    with pytest.raises(ValueError, match="journal ends at 1"):
        Sequencer(Exchange(instruments), journal)


def test_recovery_rebuilds_the_same_state(tmp_path: Path,
                                          instruments: list[Instrument]) -> None:
    exchange, journal, store = open_data_dir(tmp_path, lambda: instruments)
    assert [s.seq for s in store.snapshots()] == [0]  # a new directory starts at genesis
    sequencer = Sequencer(exchange, journal, snapshots=store, snapshot_every=2,
                          keep_snapshots=1)
    sequencer.submit(CreditDeposit(1, ALICE, 10**12))
    sequencer.submit(CreditDeposit(2, BOB, 10**12))
    sequencer.submit(PlaceOrder(ALICE, FUTURE, Side.BUY, 2, 500))
    sequencer.submit(PlaceOrder(BOB, FUTURE, Side.SELL, 1, 500))
    sequencer.submit(PlaceOrder(BOB, FUTURE, Side.SELL, 1, 501))
    sequencer.sync()
    expected = exchange.state_hash()
    journal.close()
    assert [s.seq for s in store.snapshots()] == [0, 4]  # pruned, genesis kept

    again, journal, _ = open_data_dir(tmp_path, lambda: pytest.fail("not a new directory"))
    journal.close()
    assert again.last_seq == 5 and again.state_hash() == expected
    report = verify_data_dir(tmp_path)
    assert (report.start_seq, report.replayed, report.snapshots_checked) == (0, 5, 1)
    assert report.state_hash == expected


def test_a_snapshot_that_disagrees_with_the_journal_is_reported(
    tmp_path: Path, instruments: list[Instrument]
) -> None:
    exchange, journal, store = open_data_dir(tmp_path, lambda: instruments)
    sequencer = Sequencer(exchange, journal, snapshots=store)
    sequencer.submit(CreditDeposit(1, ALICE, 10**12))
    sequencer.submit(CreditDeposit(2, ALICE, 10**12))
    sequencer.sync()
    journal.close()
    genesis = store.snapshots()[0]
    wrong = Exchange(decode_state(genesis.payload).instruments)
    store.save(2, wrong.state_hash(), genesis.payload)  # claims state at 2 is the empty one
    with pytest.raises(RecoveryError, match=r"restores to state|reaches state"):
        verify_data_dir(tmp_path)


def test_a_journal_without_a_snapshot_is_refused(tmp_path: Path,
                                                 instruments: list[Instrument]) -> None:
    with FileJournal(journal_path(tmp_path), FsyncPolicy.NONE) as journal:
        journal.append(b"x")
    with pytest.raises(RecoveryError, match="no snapshot"):
        open_data_dir(tmp_path, lambda: instruments)
    assert snapshot_store(tmp_path).snapshots() == []


def test_frames_split_whole_and_keep_the_rest() -> None:
    data = frame(b"one") + frame(b"") + frame(b"three")
    buffer = bytearray(data[:-2])
    assert list(split_frames(buffer)) == [b"one", b""]
    assert bytes(buffer) == frame(b"three")[:-2]
    buffer += data[-2:]
    assert list(split_frames(buffer)) == [b"three"] and buffer == bytearray()
    with pytest.raises(ValueError, match="exceeds"):
        list(split_frames(bytearray(b"\xff\xff\xff\x7f")))


def test_command_frames_decode_and_errors_are_replies() -> None:
    body = next(split_frames(bytearray(encode_command(Timer()))))
    assert msgspec.msgpack.decode(body) == {"type": "timer"}
    error = msgspec.msgpack.encode(RequestError("bad"))
    assert decode_reply(error) == RequestError("bad")


def test_a_failed_recovery_releases_the_journal(tmp_path: Path,
                                                instruments: list[Instrument]) -> None:
    with FileJournal(journal_path(tmp_path), FsyncPolicy.NONE) as journal:
        journal.append(b"x")
    for _ in range(2):  # the second attempt is not refused as "already open for writing"
        with pytest.raises(RecoveryError, match="no snapshot"):
            open_data_dir(tmp_path, lambda: instruments)


def test_a_broken_frame_gets_an_error_after_the_replies_owed(
    tmp_path: Path, instruments: list[Instrument]
) -> None:
    journal = FileJournal(tmp_path / "j", FsyncPolicy.GROUP, group_commit_ms=10_000)
    sequencer = Sequencer(Exchange(instruments), journal)
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    os.write(stdin_w, encode_command(CreditDeposit(1, ALICE, 10**9)) + b"\xff\xff\xff\x7f")
    os.close(stdin_w)
    serve(sequencer, stdin_r, stdout_w, quiet_s=0.01)
    os.close(stdout_w)
    output = bytearray()
    while chunk := os.read(stdout_r, 1 << 16):
        output += chunk
    replies = [decode_reply(body) for body in split_frames(output)]
    assert [type(r).__name__ for r in replies] == ["Released", "RequestError"]
    assert isinstance(replies[1], RequestError) and "exceeds" in replies[1].message
    assert journal.durable_seq == 1  # what was acknowledged is durable
