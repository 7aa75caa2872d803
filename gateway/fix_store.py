"""Per-session FIX state that outlives a connection: sequence numbers and sent messages.

``SessionStore`` is what ``FixSession`` needs; a store belongs to one (SenderCompID,
TargetCompID) pair and one live session at a time (the application refuses a second logon
of a pair that is logged on). Writes may be buffered until ``commit()``; the session commits
before the bytes it produced are written to the wire, so a crash never forgets a sequence
number the counterparty has seen.

- ``MemoryStore``: nothing survives the process (tests, throw-away initiators).
- ``FileStore(directory, fsync=True)``: ``messages`` (append-only records
  ``<seq> <length>\\n<bytes>\\n``; a torn tail is cut off on open) and ``seqnums``: two
  64-byte slots ``<generation> <sender> <target> <crc32>``, a commit overwriting the older
  one in place, so a torn write leaves the other slot whole (opening takes the newest whole
  slot). In place rather than by write-then-rename: on ext4 with online discard a rename
  cost 1-3 ms (freeing the old file's block), one pwrite a few microseconds. With ``fsync``
  a commit fsyncs the messages, then the seqnums file. Opening takes the larger of the saved
  next sender number and the last saved message's number + 1.
- ``RedisStore(client, key)``: hash ``<key>:seqnums`` (fields ``sender``, ``target``) and
  sorted set ``<key>:messages`` (score = MsgSeqNum, member = message bytes); a commit is one
  MULTI/EXEC. The client must return bytes (no ``decode_responses``).
- ``file_stores(root)`` / ``redis_stores(client, prefix)`` give a ``StoreOpener``
  ``(sender_comp_id, target_comp_id) -> SessionStore`` for an acceptor, which learns the
  counterparty's CompID only at logon. They hand out the same store object for a pair until
  it is closed, so a dropped connection's session (which may still store messages for
  resend) and the next connection's session never hold diverging copies.
  ``is_valid_comp_id`` is the CompID rule they enforce (1-64 of ``A-Z a-z 0-9 . _ -``, not
  starting with ``.``).
"""

from __future__ import annotations

import bisect
import os
import re
import zlib
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, cast

import redis

_COMP_ID = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,63}")


def is_valid_comp_id(comp_id: str) -> bool:
    """Whether ``comp_id`` may name a session (it becomes a file or key name)."""
    return _COMP_ID.fullmatch(comp_id) is not None


class SessionStore(Protocol):
    """Sequence numbers and sent application messages of one FIX session."""

    def next_sender_seq(self) -> int:
        """MsgSeqNum of the next message this side sends."""
        ...

    def next_target_seq(self) -> int:
        """MsgSeqNum expected on the next message from the counterparty."""
        ...

    def set_next_sender_seq(self, seq: int) -> None:
        """Record the next outbound MsgSeqNum."""
        ...

    def set_next_target_seq(self, seq: int) -> None:
        """Record the next expected inbound MsgSeqNum."""
        ...

    def save_sent(self, seq: int, message: bytes) -> None:
        """Keep a sent application message for resends; ``seq`` grows between resets."""
        ...

    def sent(self, begin: int, end: int) -> list[tuple[int, bytes]]:
        """Saved messages with ``begin <= seq <= end``, in order."""
        ...

    def reset(self) -> None:
        """Back to 1 and 1 with no saved messages."""
        ...

    def commit(self) -> None:
        """Make every change so far durable."""
        ...

    def close(self) -> None:
        """Commit and release the store."""
        ...


StoreOpener = Callable[[str, str], SessionStore]


class MemoryStore:
    """A store that lives as long as the object."""

    def __init__(self) -> None:
        self._sender = 1
        self._target = 1
        self._messages: dict[int, bytes] = {}

    def next_sender_seq(self) -> int:
        """MsgSeqNum of the next message this side sends."""
        return self._sender

    def next_target_seq(self) -> int:
        """MsgSeqNum expected on the next message from the counterparty."""
        return self._target

    def set_next_sender_seq(self, seq: int) -> None:
        """Record the next outbound MsgSeqNum."""
        self._sender = seq

    def set_next_target_seq(self, seq: int) -> None:
        """Record the next expected inbound MsgSeqNum."""
        self._target = seq

    def save_sent(self, seq: int, message: bytes) -> None:
        """Keep a sent application message."""
        self._messages[seq] = message

    def sent(self, begin: int, end: int) -> list[tuple[int, bytes]]:
        """Saved messages in ``[begin, end]``."""
        return sorted((seq, raw) for seq, raw in self._messages.items() if begin <= seq <= end)

    def reset(self) -> None:
        """Back to 1 and 1 with no saved messages."""
        self._sender = self._target = 1
        self._messages.clear()

    def commit(self) -> None:
        """Nothing to make durable."""

    def close(self) -> None:
        """Nothing to release."""


_SLOT_SIZE = 64


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class FileStore:
    """A store in a directory of its own: ``seqnums`` and ``messages``."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._fsync = fsync
        self._seqs = array("q")
        self._offsets = array("q")
        self._lengths = array("q")
        self._fd = os.open(directory / "messages", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._end = self._load_messages()
        created = not (directory / "seqnums").exists()
        self._seqnums_fd = os.open(directory / "seqnums", os.O_RDWR | os.O_CREAT, 0o644)
        if created and fsync:
            _fsync_directory(directory)
        self._generation, self._sender, self._target = self._load_seqnums()
        if self._seqs:
            self._sender = max(self._sender, self._seqs[-1] + 1)
        self._seqnums_dirty = False
        self._messages_dirty = False

    def _load_seqnums(self) -> tuple[int, int, int]:
        """(generation, sender, target) of the newest whole slot, or a fresh start."""
        best = (0, 1, 1)
        for slot in range(2):
            record = os.pread(self._seqnums_fd, _SLOT_SIZE, slot * _SLOT_SIZE)
            text, _, crc = record.rstrip().rpartition(b" ")
            parts = text.split()
            if (len(parts) == 3 and all(part.isdigit() for part in parts)
                    and crc == b"%08x" % zlib.crc32(text)):
                generation, sender, target = (int(part) for part in parts)
                best = max(best, (generation, sender, target))
        return best

    def _load_messages(self) -> int:
        """Index the records; cut a torn tail. Returns the end of the last whole record."""
        good = 0
        with open(self.directory / "messages", "rb") as file:
            while True:
                head = file.readline(40)
                parts = head.split()
                if not head.endswith(b"\n") or len(parts) != 2 or not all(
                    part.isdigit() for part in parts
                ):
                    break
                seq, length = int(parts[0]), int(parts[1])
                offset = good + len(head)
                body = file.read(length + 1)
                if len(body) != length + 1 or body[-1:] != b"\n":
                    break
                self._seqs.append(seq)
                self._offsets.append(offset)
                self._lengths.append(length)
                good = offset + length + 1
        if os.fstat(self._fd).st_size != good:
            os.ftruncate(self._fd, good)
        return good

    def next_sender_seq(self) -> int:
        """MsgSeqNum of the next message this side sends."""
        return self._sender

    def next_target_seq(self) -> int:
        """MsgSeqNum expected on the next message from the counterparty."""
        return self._target

    def set_next_sender_seq(self, seq: int) -> None:
        """Record the next outbound MsgSeqNum (written at commit)."""
        self._sender = seq
        self._seqnums_dirty = True

    def set_next_target_seq(self, seq: int) -> None:
        """Record the next expected inbound MsgSeqNum (written at commit)."""
        self._target = seq
        self._seqnums_dirty = True

    def save_sent(self, seq: int, message: bytes) -> None:
        """Append a sent application message (to the OS now, fsynced at commit)."""
        if self._seqs and seq <= self._seqs[-1]:
            raise ValueError(f"message {seq} saved after {self._seqs[-1]}")
        head = b"%d %d\n" % (seq, len(message))
        os.write(self._fd, head + message + b"\n")
        self._seqs.append(seq)
        self._offsets.append(self._end + len(head))
        self._lengths.append(len(message))
        self._end += len(head) + len(message) + 1
        self._messages_dirty = True

    def sent(self, begin: int, end: int) -> list[tuple[int, bytes]]:
        """Saved messages in ``[begin, end]``."""
        low = bisect.bisect_left(self._seqs, begin)
        high = bisect.bisect_right(self._seqs, end)
        return [
            (self._seqs[i], os.pread(self._fd, self._lengths[i], self._offsets[i]))
            for i in range(low, high)
        ]

    def reset(self) -> None:
        """Back to 1 and 1; the messages file is emptied."""
        os.ftruncate(self._fd, 0)
        self._end = 0
        del self._seqs[:], self._offsets[:], self._lengths[:]
        self._sender = self._target = 1
        self._seqnums_dirty = self._messages_dirty = True

    def commit(self) -> None:
        """fsync the messages (if asked), then overwrite the older seqnums slot."""
        if self._messages_dirty and self._fsync:
            os.fsync(self._fd)
        self._messages_dirty = False
        if not self._seqnums_dirty:
            return
        self._generation += 1
        text = b"%d %d %d" % (self._generation, self._sender, self._target)
        record = b"%s %08x" % (text, zlib.crc32(text))
        os.pwrite(self._seqnums_fd, record.ljust(_SLOT_SIZE - 1) + b"\n",
                  (self._generation % 2) * _SLOT_SIZE)
        if self._fsync:
            os.fsync(self._seqnums_fd)
        self._seqnums_dirty = False

    @property
    def closed(self) -> bool:
        """Whether ``close`` has been called."""
        return self._fd < 0

    def close(self) -> None:
        """Commit and close the messages file."""
        if self._fd >= 0:
            self.commit()
            os.close(self._fd)
            os.close(self._seqnums_fd)
            self._fd = -1


class RedisStore:
    """A store in two Redis keys; changes are sent in one transaction at commit."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self._client = client
        self._seqnums_key = f"{key}:seqnums"
        self._messages_key = f"{key}:messages"
        self._pending = client.pipeline(transaction=True)
        self._dirty = False
        self.closed = False
        sender, target = client.hmget(self._seqnums_key, ["sender", "target"])
        self._sender = int(sender) if sender is not None else 1
        self._target = int(target) if target is not None else 1

    def next_sender_seq(self) -> int:
        """MsgSeqNum of the next message this side sends."""
        return self._sender

    def next_target_seq(self) -> int:
        """MsgSeqNum expected on the next message from the counterparty."""
        return self._target

    def set_next_sender_seq(self, seq: int) -> None:
        """Record the next outbound MsgSeqNum (sent at commit)."""
        self._sender = seq
        self._pending.hset(self._seqnums_key, "sender", seq)
        self._dirty = True

    def set_next_target_seq(self, seq: int) -> None:
        """Record the next expected inbound MsgSeqNum (sent at commit)."""
        self._target = seq
        self._pending.hset(self._seqnums_key, "target", seq)
        self._dirty = True

    def save_sent(self, seq: int, message: bytes) -> None:
        """Keep a sent application message (sent at commit)."""
        self._pending.zadd(self._messages_key, {message: seq})
        self._dirty = True

    def sent(self, begin: int, end: int) -> list[tuple[int, bytes]]:
        """Saved messages in ``[begin, end]`` (pending changes are committed first)."""
        self.commit()
        rows = cast(
            "list[tuple[bytes, float]]",
            self._client.zrange(self._messages_key, begin, end, byscore=True, withscores=True),
        )
        return [(int(score), member) for member, score in rows]

    def reset(self) -> None:
        """Back to 1 and 1 with no saved messages."""
        self._pending.delete(self._messages_key)
        self._pending.hset(self._seqnums_key, mapping={"sender": 1, "target": 1})
        self._sender = self._target = 1
        self._dirty = True

    def commit(self) -> None:
        """Send the pending changes as one MULTI/EXEC."""
        if self._dirty:
            self._pending.execute()
            self._dirty = False

    def close(self) -> None:
        """Commit; the client belongs to the caller."""
        self.commit()
        self.closed = True


def _cached(open_new: Callable[[str, str], FileStore | RedisStore]) -> StoreOpener:
    """An opener that gives the same store for a pair until that store is closed, so the
    session of a dropped connection and the next one share one view of the numbers."""
    stores: dict[tuple[str, str], FileStore | RedisStore] = {}

    def open_store(sender: str, target: str) -> SessionStore:
        store = stores.get((sender, target))
        if store is None or store.closed:
            store = stores[sender, target] = open_new(sender, target)
        return store

    return open_store


def file_stores(root: Path, *, fsync: bool = True) -> StoreOpener:
    """Opener of ``FileStore``s in ``root/<sender>-<target>`` (one per pair while open)."""

    def open_new(sender: str, target: str) -> FileStore:
        if not (is_valid_comp_id(sender) and is_valid_comp_id(target)):
            raise ValueError(f"CompIDs not usable as a file name: {sender!r}, {target!r}")
        return FileStore(root / f"{sender}-{target}", fsync=fsync)

    return _cached(open_new)


def redis_stores(client: redis.Redis, prefix: str = "cmx:fix:") -> StoreOpener:
    """Opener of ``RedisStore``s under ``<prefix><sender>-<target>`` (one per pair while
    open)."""

    def open_new(sender: str, target: str) -> RedisStore:
        if not (is_valid_comp_id(sender) and is_valid_comp_id(target)):
            raise ValueError(f"CompIDs not usable in a key: {sender!r}, {target!r}")
        return RedisStore(client, f"{prefix}{sender}-{target}")

    return _cached(open_new)
