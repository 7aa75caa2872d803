"""Snapshots: atomic saves, the newest valid one found, corrupt ones skipped, pruning."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from engine.snapshots import Snapshot, SnapshotStore


def hash_of(seq: int) -> str:
    return f"{seq:064x}"


def payload_of(seq: int) -> bytes:
    return f"state after {seq}".encode() * 100


def store_with(directory: Path, *seqs: int) -> SnapshotStore:
    store = SnapshotStore(directory)
    for seq in seqs:
        store.save(seq, hash_of(seq), payload_of(seq))
    return store


def snapshot_at(seq: int) -> Snapshot:
    return Snapshot(seq, hash_of(seq), payload_of(seq))


def damage(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_save_then_latest_round_trips(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    assert store.latest() is None
    path = store.save(42, "h\u00e9", b"\x00state\xff")
    assert path == tmp_path / "snaps" / "00000000000000000042.snap"
    assert store.latest() == Snapshot(42, "h\u00e9", b"\x00state\xff")
    assert SnapshotStore(tmp_path / "snaps").latest() == Snapshot(42, "h\u00e9", b"\x00state\xff")


def test_latest_is_the_highest_seq_not_the_last_saved(tmp_path: Path) -> None:
    store = store_with(tmp_path, 1_000, 99, 10_000_000_000, 5)
    assert store.latest() == snapshot_at(10_000_000_000)


def test_saving_the_same_seq_again_replaces_it(tmp_path: Path) -> None:
    store = store_with(tmp_path, 7)
    store.save(7, "other", b"other")
    assert store.latest() == Snapshot(7, "other", b"other")
    assert len(list(tmp_path.iterdir())) == 1


def test_an_empty_payload_is_a_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.save(0, "", b"")
    assert store.latest() == Snapshot(0, "", b"")


def test_a_leftover_temporary_file_is_ignored(tmp_path: Path) -> None:
    store = store_with(tmp_path, 10)
    # A crash between writing and renaming leaves a whole-looking temporary file behind.
    whole = store.path_for(10).read_bytes().replace(b"state after 10", b"state after 99")
    (tmp_path / ".snap-abc123.tmp").write_bytes(whole)
    (tmp_path / ".snap-def456.tmp").write_bytes(b"CMXSNAP1 half writ")
    assert store.latest() == snapshot_at(10)


def test_a_failed_save_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_with(tmp_path, 1)

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        store.save(2, hash_of(2), payload_of(2))
    assert [p.name for p in tmp_path.iterdir()] == ["00000000000000000001.snap"]
    assert store.latest() == snapshot_at(1)


@pytest.mark.parametrize(
    ("damage_at", "reason"),
    [
        (0, "bad magic"),
        (8, "holds seq"),
        (16, "header promises"),
        (40, "CRC mismatch"),  # in the state hash
        (-1, "CRC mismatch"),  # in the payload
    ],
)
def test_a_corrupt_newest_snapshot_falls_back_to_the_one_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage_at: int, reason: str
) -> None:
    store = store_with(tmp_path, 100, 200, 300)
    damage(store.path_for(300), damage_at)
    with caplog.at_level(logging.WARNING, logger="engine.snapshots"):
        assert store.latest() == snapshot_at(200)
    (message,) = [r.getMessage() for r in caplog.records]
    assert str(store.path_for(300)) in message
    assert reason in message


def test_a_truncated_or_misnamed_snapshot_is_skipped(tmp_path: Path) -> None:
    store = store_with(tmp_path, 100, 200, 300)
    with open(store.path_for(300), "r+b") as file:
        file.truncate(10)
    store.path_for(200).rename(store.path_for(250))
    assert store.latest() == snapshot_at(100)


def test_no_valid_snapshot_means_none(tmp_path: Path) -> None:
    store = store_with(tmp_path, 1)
    store.path_for(1).write_bytes(b"")
    assert store.latest() is None


def test_prune_keeps_the_newest_and_removes_temporary_files(tmp_path: Path) -> None:
    store = store_with(tmp_path, 1, 2, 3, 4, 5)
    (tmp_path / ".snap-x.tmp").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("not a snapshot")
    deleted = store.prune(keep=2)
    assert sorted(p.name for p in deleted) == [
        ".snap-x.tmp",
        "00000000000000000001.snap",
        "00000000000000000002.snap",
        "00000000000000000003.snap",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00000000000000000004.snap",
        "00000000000000000005.snap",
        "notes.txt",
    ]
    assert store.latest() == snapshot_at(5)
    assert store.prune(keep=2) == []


def test_prune_counts_only_valid_snapshots(tmp_path: Path) -> None:
    store = store_with(tmp_path, 1, 2, 3, 4)
    damage(store.path_for(4), -1)
    store.prune(keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00000000000000000002.snap",
        "00000000000000000003.snap",
        "00000000000000000004.snap",  # corrupt, newer than what is kept: left to inspect
    ]
    assert store.latest() == snapshot_at(3)


def test_prune_deletes_nothing_without_enough_valid_snapshots(tmp_path: Path) -> None:
    store = store_with(tmp_path, 1, 2)
    damage(store.path_for(2), -1)
    assert store.prune(keep=2) == []
    assert len(list(tmp_path.iterdir())) == 2


def test_prune_must_keep_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        SnapshotStore(tmp_path).prune(keep=0)


def test_prune_can_keep_the_genesis_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    for seq in (0, 10, 20, 30):
        store.save(seq, f"h{seq}", b"state %d" % seq)
    store.prune(2, keep_genesis=True)
    assert [s.seq for s in store.snapshots()] == [0, 20, 30]
    assert store.latest_at_or_before(25) == store.snapshots()[1]
    assert store.latest_at_or_before(5) == store.snapshots()[0]
