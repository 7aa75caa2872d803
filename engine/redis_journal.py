"""The journal on Redis Streams, for engines sharded over processes (also their event streams).

``RedisStreamJournal`` keeps record ``seq`` as the stream entry with the explicit ID
``{seq}-0`` and one field, ``p``, holding the payload. Explicit IDs make the stream itself the
guard against a second writer: Redis refuses an ID at or below the stream's newest, so a writer
that fell behind gets an error instead of interleaving records.

Durability is the server's: with ``appendonly yes`` and ``appendfsync always`` Redis replies to
XADD only after the entry is fsynced to its AOF, so every acknowledged record is durable and
``durable_seq == last_seq``. ``sync`` is therefore a no-op (Redis 7.2's WAITAOF could make it
explicit; replication to replicas is not awaited either).

Clients must be created with ``decode_responses=False`` (payloads are bytes) and RESP2, the
default; blocking reads need a ``socket_timeout`` longer than ``block_ms``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import redis

from engine.journal import JournalError

__all__ = ["RedisStreamJournal"]

_FIELD = b"p"

# All of a batch or none of it: a script runs without other clients' commands in between, so
# if the first XADD is accepted (no other writer got ahead), every following one is too.
_APPEND_BATCH = """
for i = 1, #ARGV, 2 do
    redis.call('XADD', KEYS[1], ARGV[i], 'p', ARGV[i + 1])
end
"""

_Entry = tuple[bytes, dict[bytes, bytes]]


class RedisStreamJournal:
    """A ``Journal`` in one Redis stream; see the module docstring for the layout."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        *,
        page_size: int = 4096,
        batch_size: int = 1024,
    ) -> None:
        _check_client(client)
        self.stream = stream
        self._client = client
        self._page_size = page_size
        self._batch_size = batch_size
        self._append_batch = client.register_script(_APPEND_BATCH)
        newest = cast(list[_Entry], client.xrevrange(stream, "+", "-", count=1))
        self._last_seq = self._seq_of(newest[0][0]) if newest else 0

    @property
    def last_seq(self) -> int:
        """The highest seq in the stream when opened, or appended since."""
        return self._last_seq

    @property
    def durable_seq(self) -> int:
        """Every record Redis acknowledged is as durable as its ``appendfsync`` makes it."""
        return self._last_seq

    def append(self, payload: bytes) -> int:
        """Add a record as entry ``{seq}-0``; return its seq."""
        seq = self._last_seq + 1
        try:
            self._client.xadd(self.stream, {_FIELD: payload}, id=f"{seq}-0")
        except redis.ResponseError as exc:
            raise self._refused(seq, exc) from exc
        self._last_seq = seq
        return seq

    def append_many(self, payloads: Sequence[bytes]) -> int:
        """Add records in one round trip per ``batch_size``; return the last seq.

        Each batch is applied whole or not at all. If a later batch is refused, ``last_seq``
        still counts the batches before it.
        """
        for start in range(0, len(payloads), self._batch_size):
            first = self._last_seq + 1
            args: list[bytes | str] = []
            for seq, payload in enumerate(payloads[start : start + self._batch_size], first):
                args += (f"{seq}-0", payload)
            try:
                self._append_batch(keys=[self.stream], args=args, client=self._client)
            except redis.ResponseError as exc:
                raise self._refused(first, exc) from exc
            self._last_seq = first + len(args) // 2 - 1
        return self._last_seq

    def sync(self) -> int:
        """Nothing to do: Redis replied only once its ``appendfsync`` policy was met."""
        return self._last_seq

    def read(self, from_seq: int = 1) -> Iterator[tuple[int, bytes]]:
        """The records with seq >= ``from_seq``, in pages of XRANGE, to the stream's end.

        Raises ``JournalError`` if a seq is missing (entries deleted or trimmed).
        """
        expect = max(from_seq, 1)
        while True:
            page = cast(
                list[_Entry],
                self._client.xrange(self.stream, f"{expect}-0", "+", count=self._page_size),
            )
            for entry_id, fields in page:
                seq = self._seq_of(entry_id)
                if seq != expect:
                    raise JournalError(
                        f"journal stream {self.stream!r} is missing seq {expect} "
                        f"(next entry is {entry_id.decode()})"
                    )
                yield seq, fields[_FIELD]
                expect += 1
            if len(page) < self._page_size:
                return

    def close(self) -> None:
        """Nothing to release: the client belongs to the caller."""

    def _seq_of(self, entry_id: bytes) -> int:
        ms, _, part = entry_id.partition(b"-")
        if part != b"0":
            raise JournalError(
                f"journal stream {self.stream!r} holds entry {entry_id.decode()}, "
                "which is not a journal record ({seq}-0)"
            )
        return int(ms)

    def _refused(self, seq: int, exc: redis.ResponseError) -> JournalError:
        return JournalError(
            f"journal stream {self.stream!r} refused seq {seq}: {exc} "
            "(another writer, or a lost reply to an earlier append; reopen to resume)"
        )


def _check_client(client: redis.Redis) -> None:
    options: dict[str, Any] = client.connection_pool.connection_kwargs
    if options.get("decode_responses"):
        raise ValueError("journal streams need a Redis client with decode_responses=False")
    if options.get("protocol") not in (None, 2, "2"):
        raise ValueError("journal streams need a Redis client speaking RESP2 (protocol=2)")
