"""Start-up from a data directory: latest snapshot + replay of the journal after it.

A data directory holds ``journal`` (the file journal) and ``snapshots/``. The first start
writes a snapshot at sequence 0, so the instruments an exchange began with are part of its
history and every later start, or a replay, rebuilds the same state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from engine.cython_book import CythonBook
from engine.exchange import Exchange
from engine.exchange_state import decode_state, encode_state, state_digest
from engine.instruments import Instrument
from engine.journal import FileJournal, FsyncPolicy, Journal, read_records
from engine.market import BookFactory
from engine.sequencer import decode_sequenced
from engine.snapshots import Snapshot, SnapshotStore

log = logging.getLogger(__name__)


class RecoveryError(RuntimeError):
    """The data directory cannot be turned back into a trustworthy state."""


def journal_path(data_dir: Path) -> Path:
    """Where a data directory keeps its journal."""
    return data_dir / "journal"


def snapshot_store(data_dir: Path) -> SnapshotStore:
    """The snapshot store of a data directory."""
    return SnapshotStore(data_dir / "snapshots")


def restore_snapshot(snapshot: Snapshot, book_factory: BookFactory = CythonBook) -> Exchange:
    """The exchange a snapshot holds, after checking its state hash."""
    exchange = Exchange.restore(decode_state(snapshot.payload), book_factory)
    found = exchange.state_hash()
    if found != snapshot.state_hash:
        raise RecoveryError(
            f"snapshot at {snapshot.seq} restores to state {found}, not {snapshot.state_hash}"
        )
    return exchange


def replay(exchange: Exchange, records: Iterable[tuple[int, bytes]]) -> int:
    """Apply journal records in order; returns how many were applied."""
    count = 0
    for seq, record in records:
        sequenced = decode_sequenced(record)
        if sequenced.seq != seq:
            raise RecoveryError(f"journal record {seq} holds command {sequenced.seq}")
        exchange.apply(sequenced)
        count += 1
    return count


def open_data_dir(
    data_dir: Path,
    instruments: Callable[[], Iterable[Instrument]],
    *,
    policy: FsyncPolicy = FsyncPolicy.GROUP,
    group_commit_ms: int = 2,
    book_factory: BookFactory = CythonBook,
) -> tuple[Exchange, FileJournal, SnapshotStore]:
    """Recover (or create) the exchange of ``data_dir``, with its journal open for appends.

    ``instruments`` is called only for a new data directory.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    store = snapshot_store(data_dir)
    journal = FileJournal(journal_path(data_dir), policy, group_commit_ms=group_commit_ms,
                          background_fsync=True)
    try:
        exchange = recover(data_dir, journal, store, instruments, book_factory)
    except BaseException:
        journal.close()
        raise
    return exchange, journal, store


def recover(
    data_dir: Path,
    journal: Journal,
    store: SnapshotStore,
    instruments: Callable[[], Iterable[Instrument]],
    book_factory: BookFactory = CythonBook,
) -> Exchange:
    """The exchange of ``data_dir``'s latest snapshot with ``journal`` replayed after it (a new
    exchange of ``instruments``, and its genesis snapshot, if there is no snapshot yet)."""
    snapshot = store.latest()
    if snapshot is None:
        if journal.last_seq:
            raise RecoveryError(f"{data_dir}: journal has {journal.last_seq} records but no "
                                "snapshot to start from")
        exchange = Exchange(instruments(), book_factory)
        encoded = encode_state(exchange.state())
        store.save(0, state_digest(encoded), encoded)
    else:
        exchange = restore_snapshot(snapshot, book_factory)
        if snapshot.seq > journal.last_seq:
            raise RecoveryError(f"{data_dir}: snapshot at {snapshot.seq} is ahead of the "
                                f"journal, which ends at {journal.last_seq}")
    applied = replay(exchange, journal.read(exchange.last_seq + 1))
    log.info("recovered %s at command %d (%d replayed after the snapshot), state %s",
             data_dir, exchange.last_seq, applied, exchange.state_hash())
    return exchange


class ReplayReport(msgspec.Struct, frozen=True):
    """What `verify_data_dir` found."""

    start_seq: int
    replayed: int
    snapshots_checked: int
    last_seq: int
    state_hash: str


def verify_data_dir(data_dir: Path, book_factory: BookFactory = CythonBook) -> ReplayReport:
    """Replay the journal from the earliest snapshot, checking every later snapshot's hash."""
    if not journal_path(data_dir).exists():
        raise RecoveryError(f"{data_dir}: no journal")
    snapshots = snapshot_store(data_dir).snapshots()
    if not snapshots:
        raise RecoveryError(f"{data_dir}: no snapshot to start from")
    exchange = restore_snapshot(snapshots[0], book_factory)
    checkpoints = {s.seq: s.state_hash for s in snapshots[1:]}
    replayed = checked = 0
    for seq, record in read_records(journal_path(data_dir), snapshots[0].seq + 1):
        replay(exchange, ((seq, record),))
        replayed += 1
        expected = checkpoints.get(seq)
        if expected is not None:
            found = exchange.state_hash()
            if found != expected:
                raise RecoveryError(f"{data_dir}: replay reaches state {found} at {seq}, "
                                    f"the snapshot there says {expected}")
            checked += 1
    if checked != len(checkpoints):
        raise RecoveryError(f"{data_dir}: the journal ends at {exchange.last_seq}, before "
                            "the latest snapshot")
    return ReplayReport(snapshots[0].seq, replayed, checked, exchange.last_seq,
                        exchange.state_hash())
