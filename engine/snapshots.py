"""Snapshots of the exchange state: recovery loads the newest and replays the journal after it.

A snapshot is one file, ``{seq:020d}.snap``, written atomically (a temporary file in the same
directory, fsynced, renamed over, then the directory fsynced), so a crash leaves either the
whole new snapshot or none of it. Layout (little-endian)::

    b"CMXSNAP1" | u64 seq | u64 payload length | u16 hash length | u32 CRC32 | hash | payload

The CRC covers the state hash and the payload; seq must match the file name and the lengths
the file size, so every byte of a snapshot is checked before it is used.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from struct import Struct
from zlib import crc32

import msgspec

from engine.journal import fsync_directory

__all__ = ["Snapshot", "SnapshotCorrupt", "SnapshotStore"]

logger = logging.getLogger(__name__)

_MAGIC = b"CMXSNAP1"
_HEADER = Struct("<8sQQHI")  # magic, seq, payload length, hash length, CRC32(hash + payload)
_NAME = re.compile(r"^(\d{20})\.snap$")
_TEMP_PREFIX = ".snap-"
_TEMP_SUFFIX = ".tmp"


class Snapshot(msgspec.Struct, frozen=True):
    """The exchange state after the command with sequence number ``seq``.

    ``state_hash`` is the engine's hash of that state, checked again after recovery.
    """

    seq: int
    state_hash: str
    payload: bytes


class SnapshotCorrupt(ValueError):  # noqa: N818 (named like engine.journal.JournalCorrupt)
    """A snapshot file fails its checks."""


class SnapshotStore:
    """The snapshots in one directory (created if missing). One writer at a time."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, seq: int) -> Path:
        """Where the snapshot at ``seq`` lives."""
        return self.directory / f"{seq:020d}.snap"

    def save(self, seq: int, state_hash: str, payload: bytes) -> Path:
        """Write a snapshot atomically and durably; return its path."""
        if seq < 0:
            raise ValueError(f"snapshot seq must not be negative, got {seq}")
        hash_bytes = state_hash.encode()
        header = _HEADER.pack(
            _MAGIC, seq, len(payload), len(hash_bytes), crc32(payload, crc32(hash_bytes))
        )
        fd, temp_name = tempfile.mkstemp(
            dir=self.directory, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX
        )
        temp = Path(temp_name)
        try:
            with open(fd, "wb") as file:
                file.write(header)
                file.write(hash_bytes)
                file.write(payload)
                file.flush()
                os.fsync(file.fileno())
            path = self.path_for(seq)
            temp.replace(path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_directory(self.directory)
        return path

    def latest(self) -> Snapshot | None:
        """The newest snapshot that passes its checks; corrupt newer ones are logged, skipped."""
        return next(self._valid(), None)

    def latest_at_or_before(self, seq: int) -> Snapshot | None:
        """The newest valid snapshot taken at or before ``seq``."""
        return next((s for s in self._valid() if s.seq <= seq), None)

    def snapshots(self) -> list[Snapshot]:
        """Every snapshot that passes its checks, oldest first."""
        return list(reversed(list(self._valid())))

    def prune(self, keep: int, *, keep_genesis: bool = False) -> list[Path]:
        """Delete all but the newest ``keep`` valid snapshots, and leftover temporary files.

        Files older than the oldest kept snapshot go, corrupt or not; corrupt files newer than
        it stay for inspection until they age out. ``keep_genesis`` also keeps the snapshot at
        seq 0, from which the whole journal can be replayed. Returns the paths deleted.
        """
        if keep < 1:
            raise ValueError(f"prune must keep at least one snapshot, got keep={keep}")
        doomed = list(self.directory.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"))
        kept = [snapshot.seq for _, snapshot in zip(range(keep), self._valid(), strict=False)]
        if len(kept) == keep:
            doomed += [path for seq, path in self._files()
                       if seq < kept[-1] and not (keep_genesis and seq == 0)]
        for path in doomed:
            path.unlink(missing_ok=True)
        if doomed:
            fsync_directory(self.directory)
        return doomed

    def _files(self) -> list[tuple[int, Path]]:
        """The snapshot files by seq, newest first (temporary files never match the name)."""
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match:
                found.append((int(match[1]), path))
        return sorted(found, reverse=True)

    def _valid(self) -> Iterator[Snapshot]:
        for seq, path in self._files():
            try:
                yield _load(path, seq)
            except (SnapshotCorrupt, OSError) as exc:
                logger.warning("snapshot %s is unusable, skipping it: %s", path, exc)


def _load(path: Path, seq: int) -> Snapshot:
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        raise SnapshotCorrupt(f"{len(data)} bytes is shorter than the header")
    magic, stored_seq, payload_size, hash_size, crc = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise SnapshotCorrupt(f"bad magic {magic!r}")
    if stored_seq != seq:
        raise SnapshotCorrupt(f"holds seq {stored_seq}, its name says {seq}")
    if _HEADER.size + hash_size + payload_size != len(data):
        raise SnapshotCorrupt(
            f"header promises {hash_size}+{payload_size} bytes after it, the file has "
            f"{len(data) - _HEADER.size}"
        )
    body = memoryview(data)[_HEADER.size :]
    if crc32(body) != crc:
        raise SnapshotCorrupt("CRC mismatch")
    try:
        state_hash = bytes(body[:hash_size]).decode()
    except UnicodeDecodeError as exc:
        raise SnapshotCorrupt(f"state hash is not UTF-8: {exc}") from None
    return Snapshot(seq, state_hash, bytes(body[hash_size:]))

