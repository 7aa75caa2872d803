"""The journal: sequenced commands made durable before they are acknowledged.

A journal stores opaque payloads (msgpack-encoded sequenced commands) under sequence numbers
1, 2, 3, ... with no gaps. ``Journal`` is the interface; ``FileJournal`` keeps one append-only
file, ``engine.redis_journal.RedisStreamJournal`` a Redis stream.

File format: a sequence of frames, nothing else::

    u32 payload length | u32 CRC32(seq bytes + payload) | u64 seq | payload     (little-endian)

The CRC covers the seq and the payload, which lie side by side in the frame; a damaged length
shows up as a CRC or seq failure of the frame it mis-delimits. Opening a file scans it: a torn
tail (the last frame incomplete, or damaged and reaching the end of the file, or a zero-filled
end) is what a crash mid-write leaves, and is cut off with a warning. Damage anywhere else
raises ``JournalCorrupt``: records after it would otherwise be lost silently.

``scan`` and ``read_records`` read a journal file without opening it for writing (``cmx replay``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from enum import StrEnum
from pathlib import Path
from struct import Struct
from typing import BinaryIO, Protocol
from zlib import crc32

import msgspec

__all__ = [
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "FileJournal",
    "FsyncPolicy",
    "Journal",
    "JournalCorrupt",
    "JournalError",
    "JournalExtent",
    "fsync_directory",
    "read_records",
    "scan",
]

logger = logging.getLogger(__name__)

_HEADER = Struct("<IIQ")  # payload length, CRC32 over seq bytes + payload, seq
_LENGTH_CRC = Struct("<II")
_SEQ = Struct("<Q")
HEADER_SIZE = _HEADER.size
_SEQ_OFFSET = _LENGTH_CRC.size  # where the CRC-covered bytes of a frame begin
MAX_PAYLOAD = 1 << 26
"""Largest payload a frame may carry (64 MiB); a longer length field is damage."""
_CHUNK = 1 << 22


class JournalError(Exception):
    """A journal cannot be opened, written or read."""


class JournalCorrupt(JournalError):  # noqa: N818 (the name the design gives it)
    """A journal file is damaged somewhere other than a torn tail."""

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str) -> None:
        super().__init__(f"journal {os.fspath(path)} is corrupt at byte offset {offset}: {reason}")
        self.path = Path(path)
        self.offset = offset
        self.reason = reason


class Journal(Protocol):
    """An append-only log of payloads under sequence numbers 1, 2, 3, ...

    The sequencer appends, acknowledges commands up to ``durable_seq``, and calls ``sync``
    when it has nothing more to append for now, so the tail of a burst becomes durable too.
    """

    def append(self, payload: bytes) -> int:
        """Add a record; return its seq (one more than ``last_seq``)."""
        ...

    def sync(self) -> int:
        """Make every appended record durable now; return ``durable_seq``."""
        ...

    @property
    def durable_seq(self) -> int:
        """The highest seq that is durable under the journal's policy."""
        ...

    @property
    def last_seq(self) -> int:
        """The highest seq appended (0 for an empty journal)."""
        ...

    def read(self, from_seq: int = 1) -> Iterator[tuple[int, bytes]]:
        """The records with seq >= ``from_seq``, in order, as appended up to this call."""
        ...

    def close(self) -> None:
        """Make everything durable under the policy and release the journal."""
        ...


class FsyncPolicy(StrEnum):
    """When appended records reach the disk.

    ``always``: each ``append`` returns after fsync. ``group``: an ``append`` fsyncs when
    ``group_commit_ms`` have passed since the last fsync, and ``sync`` fsyncs at once.
    ``none``: records are handed to the OS on the same timer and by ``sync``, never fsynced;
    they count as durable once the OS has them (they survive a process crash, not a power cut).
    """

    ALWAYS = "always"
    GROUP = "group"
    NONE = "none"


class JournalExtent(msgspec.Struct, frozen=True):
    """What scanning a journal file found.

    ``valid_bytes`` is where the last whole record ends; anything between it and
    ``file_bytes`` is a torn tail, described by ``tail``.
    """

    last_seq: int
    valid_bytes: int
    file_bytes: int
    tail: str = ""


def scan(path: str | os.PathLike[str]) -> JournalExtent:
    """Check every record of a journal file without changing it.

    Raises ``JournalCorrupt`` for damage other than a torn tail.
    """
    with open(path, "rb", buffering=0) as file:
        end = os.fstat(file.fileno()).st_size
        checks = _records(Path(path), file, end, from_seq=sys.maxsize)  # yields no record
        try:
            while True:
                next(checks)
        except StopIteration as done:
            extent: JournalExtent = done.value
            return extent


def read_records(path: str | os.PathLike[str], from_seq: int = 1) -> Iterator[tuple[int, bytes]]:
    """The records of a journal file with seq >= ``from_seq``, in order.

    Reads without opening for writing. A torn tail ends the records with a warning (a file
    still being written can show one); other damage raises ``JournalCorrupt``.
    """
    with open(path, "rb", buffering=0) as file:
        extent = yield from _records(
            Path(path), file, os.fstat(file.fileno()).st_size, from_seq
        )
    if extent.tail:
        logger.warning(
            "journal %s: ignoring %d bytes of torn tail at byte offset %d (%s); "
            "records end at seq %d",
            path, extent.file_bytes - extent.valid_bytes, extent.valid_bytes, extent.tail,
            extent.last_seq,
        )


class FileJournal:
    """A ``Journal`` in one append-only file, fsynced under an ``FsyncPolicy``.

    Opening scans the file, cuts off a torn tail (logging a warning with the file, the byte
    offset and the last seq kept) and continues after the last whole record. One process at a
    time may hold the file open for writing (an exclusive ``flock``). After a failed write or
    fsync the journal refuses further commits: what reached the disk is then unknown.

    ``clock`` (monotonic nanoseconds) and ``fsync`` are parameters so tests can drive the group
    commit timer and count fsyncs.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        policy: FsyncPolicy,
        group_commit_ms: int = 2,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        fsync: Callable[[int], None] = os.fsync,
        buffer_size: int = 1 << 20,
        background_fsync: bool = False,
    ) -> None:
        self.path = Path(path)
        self.policy = FsyncPolicy(policy)
        self._clock = clock
        self._fsync = fsync
        # ``always`` is a group commit with no window.
        self._window_ns = 0 if self.policy is FsyncPolicy.ALWAYS else group_commit_ms * 1_000_000
        self._failure: BaseException | None = None
        created = not self.path.exists()
        self._file = open(self.path, "ab", buffering=buffer_size)  # noqa: SIM115 (kept open)
        try:
            _lock(self._file, self.path)
            extent = scan(self.path)
            if extent.tail:
                logger.warning(
                    "journal %s: truncating %d bytes of torn tail at byte offset %d (%s); "
                    "keeping records up to seq %d",
                    self.path, extent.file_bytes - extent.valid_bytes, extent.valid_bytes,
                    extent.tail, extent.last_seq,
                )
                os.truncate(self._file.fileno(), extent.valid_bytes)
            if self.policy is not FsyncPolicy.NONE:
                # What a previous run left may still sit in OS buffers; it counts as durable
                # only once fsynced, and so does the truncation and a new file's name.
                fsync(self._file.fileno())
                if created:
                    fsync_directory(self.path.parent, fsync)
        except BaseException:
            self._file.close()
            raise
        self._write: Callable[[bytes], int] = self._file.write
        self._last_seq = extent.last_seq
        self._durable_seq = extent.last_seq
        self._commit_due_ns = clock() + self._window_ns
        self._syncer: threading.Thread | None = None
        self.on_durable: Callable[[int], None] | None = None
        """Called on the fsync thread with the new ``durable_seq`` after each background commit
        (an asyncio server hands it to its loop with ``call_soon_threadsafe``)."""
        if background_fsync and self.policy is FsyncPolicy.GROUP:
            # Group commits fsync on a thread of their own (fsync releases the GIL), so
            # appends go on while the disk works; ``sync`` still fsyncs in the caller.
            self._wake = threading.Condition()
            self._wanted = self._synced = extent.last_seq
            self._closing = False
            self._syncer = threading.Thread(target=self._sync_loop, daemon=True,
                                            name=f"fsync {self.path.name}")
            self._syncer.start()

    def __enter__(self) -> FileJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def last_seq(self) -> int:
        """The highest seq appended (0 for an empty journal)."""
        return self._last_seq

    @property
    def durable_seq(self) -> int:
        """The highest seq fsynced (for ``none``: handed to the OS)."""
        return self._durable_seq

    def append(self, payload: bytes) -> int:
        """Add a record and return its seq; commit if the policy says so now."""
        size = len(payload)
        if size > MAX_PAYLOAD:
            raise ValueError(f"journal payload of {size} bytes exceeds {MAX_PAYLOAD}")
        seq = self._last_seq + 1
        body = _SEQ.pack(seq) + payload
        try:
            self._write(_LENGTH_CRC.pack(size, crc32(body)) + body)
        except OSError as exc:
            self._fail(exc)
            raise
        self._last_seq = seq
        if self._clock() >= self._commit_due_ns:
            if self._syncer is not None:
                self._commit_in_background()
            else:
                self._commit()
        return seq

    def sync(self) -> int:
        """Commit everything appended now; return ``durable_seq``."""
        if self._durable_seq != self._last_seq:
            self._commit()
        return self._durable_seq

    def commit_soon(self) -> bool:
        """Commit everything appended now without waiting for the group window.

        With a background fsync thread the commit runs there and ``on_durable`` reports it;
        returns False then. Otherwise commits here and returns True. Calling this whenever the
        caller runs out of input gives group commit with no timer: appends made while one
        fsync runs all go in the next.
        """
        if self._failure is not None:
            self._refuse(b"")  # a failed background fsync: nothing more is durable
        if self._durable_seq == self._last_seq:
            return True
        if self._syncer is not None:
            self._commit_in_background()
            return False
        self._commit()
        return True

    def read(self, from_seq: int = 1) -> Iterator[tuple[int, bytes]]:
        """The records with seq >= ``from_seq`` appended up to this call, in order."""
        self._file.flush()
        return _read_to(self.path, os.fstat(self._file.fileno()).st_size, from_seq)

    def close(self) -> None:
        """Commit under the policy, then close the file (and release its lock)."""
        if self._file.closed:
            return
        if self._syncer is not None:
            with self._wake:
                self._closing = True
                self._wake.notify()
            self._syncer.join()
        try:
            if self._failure is None:
                self.sync()
        finally:
            self._file.close()

    def _sync_loop(self) -> None:
        fd = self._file.fileno()
        while True:
            with self._wake:
                while self._wanted <= self._synced and not self._closing:
                    self._wake.wait()
                if self._wanted <= self._synced:
                    return
                target = self._wanted
            try:
                self._fsync(fd)
            except OSError as exc:
                self._fail(exc)
                return
            with self._wake:
                self._synced = target
                self._durable_seq = max(self._durable_seq, target)
            on_durable = self.on_durable
            if on_durable is not None:
                on_durable(self._durable_seq)

    def _commit_in_background(self) -> None:
        try:
            self._file.flush()  # the syncer's fsync covers only what the OS has
        except OSError as exc:
            self._fail(exc)
            raise
        with self._wake:
            self._wanted = self._last_seq
            self._wake.notify()
        self._commit_due_ns = self._clock() + self._window_ns

    def _commit(self) -> None:
        if self._failure is not None:
            self._refuse(b"")
        try:
            self._file.flush()
            if self.policy is not FsyncPolicy.NONE:
                self._fsync(self._file.fileno())
        except OSError as exc:
            self._fail(exc)
            raise
        if self._syncer is not None:
            with self._wake:
                self._durable_seq = max(self._durable_seq, self._last_seq)
        else:
            self._durable_seq = self._last_seq
        self._commit_due_ns = self._clock() + self._window_ns

    def _fail(self, exc: OSError) -> None:
        # After a failed write or fsync what reached the disk is unknown, and retrying an
        # fsync can report success for lost data: refuse every later append and commit.
        self._failure = exc
        self._write = self._refuse

    def _refuse(self, _data: bytes) -> int:
        raise JournalError(
            f"journal {self.path} failed to write earlier; records after seq "
            f"{self._durable_seq} may not be on disk"
        ) from self._failure


def _lock(file: BinaryIO, path: Path) -> None:
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise JournalError(f"journal {path} is already open for writing") from None


def fsync_directory(directory: Path, fsync: Callable[[int], None] = os.fsync) -> None:
    """Make a directory's entries (a new or renamed file's name) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def _read_to(path: Path, end: int, from_seq: int) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb", buffering=0) as file:
        extent = yield from _records(path, file, end, from_seq)
    if extent.tail:  # the live journal's file was changed behind its back
        raise JournalCorrupt(path, extent.valid_bytes, f"unexpected {extent.tail}")


def _records(
    path: Path, file: BinaryIO, end: int, from_seq: int
) -> Generator[tuple[int, bytes], None, JournalExtent]:
    """Yield the records of ``file`` up to byte ``end`` with seq >= ``from_seq``.

    Reads in large chunks and checks every frame; returns the extent of the whole records,
    or raises ``JournalCorrupt`` (see ``_settle``).
    """
    unpack_from = _HEADER.unpack_from
    header = HEADER_SIZE  # locals: this loop runs once per record
    covered = _SEQ_OFFSET
    buf = b""
    base = 0  # file offset of buf[0]
    pos = 0
    expect = 1
    unread = end
    while True:
        view = memoryview(buf)
        size = len(buf)
        need = header
        while pos + header <= size:
            length, crc, seq = unpack_from(buf, pos)
            stop = pos + header + length
            if stop > size:
                if length > MAX_PAYLOAD:
                    return _settle(path, file, base + pos, expect - 1, end)
                need = header + length
                break
            if seq != expect or crc32(view[pos + covered : stop]) != crc:
                return _settle(path, file, base + pos, expect - 1, end)
            if seq >= from_seq:
                yield seq, buf[pos + header : stop]
            expect += 1
            pos = stop
        data = file.read(min(unread, max(_CHUNK, need - (size - pos)))) if unread else b""
        if not data:
            if pos == size:
                return JournalExtent(expect - 1, base + pos, base + pos)
            return _settle(path, file, base + pos, expect - 1, base + size)
        unread -= len(data)
        base += pos
        buf = buf[pos:] + data
        pos = 0


def _settle(path: Path, file: BinaryIO, offset: int, last_seq: int, end: int) -> JournalExtent:
    """Decide whether the bad frame at ``offset`` begins a torn tail or is corruption.

    Returns the extent to keep for a torn tail; raises ``JournalCorrupt`` otherwise. A torn
    write leaves a prefix of the frames it was writing, so the tail is torn when the bad frame
    reaches the end of the file and no intact record follows inside it, or when everything
    from it on is zeros.
    """
    kept = JournalExtent(last_seq, offset, end)
    expect = last_seq + 1
    if end - offset < HEADER_SIZE:
        return msgspec.structs.replace(kept, tail="incomplete record header")
    file.seek(offset)
    length, crc, seq = _HEADER.unpack(_read_exact(file, HEADER_SIZE))
    if length > MAX_PAYLOAD:
        raise JournalCorrupt(path, offset, f"absurd record length {length} (limit {MAX_PAYLOAD})")
    stop = offset + HEADER_SIZE + length
    payload = _read_exact(file, min(stop, end) - offset - HEADER_SIZE)
    if stop <= end and crc32(_SEQ.pack(seq) + payload) == crc:
        raise JournalCorrupt(path, offset, f"record seq {seq} does not follow seq {last_seq}")
    if stop < end:
        file.seek(offset)
        if _zeros_to(file, end):
            return msgspec.structs.replace(kept, tail="zero-filled end")
        raise JournalCorrupt(
            path, offset,
            f"the record expected to be seq {expect} fails its CRC check "
            f"and {end - stop} more bytes follow",
        )
    found = _find_record(payload, expect + 1)
    if found >= 0:
        raise JournalCorrupt(
            path, offset,
            f"the record expected to be seq {expect} is damaged, yet record seq {expect + 1} "
            f"follows at byte offset {offset + HEADER_SIZE + found}",
        )
    reason = "incomplete last record" if stop > end else "last record fails its CRC check"
    return msgspec.structs.replace(kept, tail=reason)


def _find_record(data: bytes, seq: int) -> int:
    """The offset in ``data`` of an intact frame holding ``seq``, or -1."""
    needle = _SEQ.pack(seq)
    at = data.find(needle, _SEQ_OFFSET)
    while at >= 0:
        start = at - _SEQ_OFFSET
        length, crc = _LENGTH_CRC.unpack_from(data, start)
        stop = start + HEADER_SIZE + length
        if stop <= len(data) and crc32(memoryview(data)[at:stop]) == crc:
            return start
        at = data.find(needle, at + 1)
    return -1


def _zeros_to(file: BinaryIO, end: int) -> bool:
    """Whether every byte from the file's position up to ``end`` is zero."""
    position = file.tell()
    while position < end:
        chunk = file.read(min(_CHUNK, end - position))
        if not chunk or chunk.count(0) != len(chunk):
            return False
        position += len(chunk)
    return True


def _read_exact(file: BinaryIO, size: int) -> bytes:
    data = file.read(size)
    while len(data) < size:
        more = file.read(size - len(data))
        if not more:
            raise JournalError(f"journal file {file.name} shrank while being read")
        data += more
    return data
