"""A shard: one engine process for a subset of the instruments, fed through Redis Streams.

For shard ``S`` under key prefix ``P`` there are three streams:

* ``P:S:requests`` — gateways add requests: one field ``c``, a msgpack exchange command.
* ``P:S:journal`` — the shard's journal (`RedisStreamJournal`): each record a `Sequenced`
  whose ``origin`` is the request's entry id, so a restarted shard resumes after the last
  request it journaled and never takes one twice.
* ``P:S:events`` — one `Released` per command, entry id ``{seq}-0``, added once the command
  is durable. Gateways read it; a restarted shard first republishes whatever it journaled but
  had not yet published.

Snapshots live in the shard's data directory. Collateral is per shard: each shard is a
complete exchange for its instruments, with its own ledger.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import msgspec
import redis

from engine.commands import ExchangeCommand
from engine.exchange import Exchange
from engine.exchange_state import encode_state, state_digest
from engine.instruments import Instrument
from engine.recovery import RecoveryError, restore_snapshot
from engine.redis_journal import RedisStreamJournal
from engine.sequencer import Released, Sequencer, decode_sequenced
from engine.snapshots import SnapshotStore

log = logging.getLogger(__name__)

_encoder = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(ExchangeCommand)
_released_decoder = msgspec.msgpack.Decoder(Released)


class ShardMap(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which shard runs which instruments: ``{shard name: [symbol, ...]}`` (a JSON file)."""

    shards: dict[str, list[str]]


def stream_names(prefix: str, shard: str) -> tuple[str, str, str]:
    """The (requests, journal, events) streams of a shard."""
    base = f"{prefix}:{shard}"
    return f"{base}:requests", f"{base}:journal", f"{base}:events"


def submit_request(client: redis.Redis, prefix: str, shard: str,
                   command: ExchangeCommand) -> str:
    """Add a request to a shard's request stream; returns its entry id."""
    entry = cast(bytes, client.xadd(stream_names(prefix, shard)[0],
                                    {"c": _encoder.encode(command)}))
    return entry.decode()


def decode_released(payload: bytes) -> Released:
    """A published `Released` from its event stream payload."""
    return _released_decoder.decode(payload)


class BatchedJournal:
    """A `RedisStreamJournal` that takes appends in memory and writes them in one batch on
    `sync`: one round trip (and one fsync of the server's AOF) for many commands."""

    def __init__(self, inner: RedisStreamJournal) -> None:
        self.inner = inner
        self._buffer: list[bytes] = []

    @property
    def last_seq(self) -> int:
        """The highest seq appended, written or not."""
        return self.inner.last_seq + len(self._buffer)

    @property
    def durable_seq(self) -> int:
        """The highest seq the server has accepted."""
        return self.inner.last_seq

    def append(self, payload: bytes) -> int:
        """Buffer a record; returns its seq."""
        self._buffer.append(payload)
        return self.last_seq

    def sync(self) -> int:
        """Write the buffered records as one batch."""
        if self._buffer:
            self.inner.append_many(self._buffer)
            self._buffer.clear()
        return self.inner.last_seq

    def read(self, from_seq: int = 1) -> Iterator[tuple[int, bytes]]:
        """Written records from ``from_seq``."""
        self.sync()
        return self.inner.read(from_seq)

    def close(self) -> None:
        """Write what is buffered."""
        self.sync()


class Shard:
    """The engine loop of one shard."""

    def __init__(self, client: redis.Redis, prefix: str, name: str, data_dir: Path,
                 instruments: Sequence[Instrument], *, snapshot_every: int = 10_000,
                 batch: int = 512) -> None:
        self.client = client
        self.name = name
        self.batch = batch
        self.requests, journal_stream, events_stream = stream_names(prefix, name)
        self.journal = BatchedJournal(RedisStreamJournal(client, journal_stream))
        self.events = RedisStreamJournal(client, events_stream)
        self.snapshots = SnapshotStore(data_dir)
        self.exchange, self.last_request = self._recover(instruments)
        self.sequencer = Sequencer(self.exchange, self.journal, snapshots=self.snapshots,
                                   snapshot_every=snapshot_every)

    def _recover(self, instruments: Sequence[Instrument]) -> tuple[Exchange, str]:
        """Latest usable snapshot + journal replay; republish events not yet published."""
        published = self.events.last_seq
        usable = self.snapshots.latest_at_or_before(published)
        if usable is not None:
            exchange = restore_snapshot(usable)
        elif self.journal.last_seq:
            raise RecoveryError(f"shard {self.name}: journal has {self.journal.last_seq} "
                                "records but no snapshot at or before the published events")
        else:
            exchange = Exchange(instruments)
            encoded = encode_state(exchange.state())
            self.snapshots.save(0, state_digest(encoded), encoded)
        last_request = "0-0"
        missing: list[bytes] = []
        for seq, record in self.journal.read(exchange.last_seq + 1):
            sequenced = decode_sequenced(record)
            events = exchange.apply(sequenced)
            last_request = sequenced.origin or last_request
            if seq > published:
                missing.append(_encoder.encode(Released(seq, sequenced.ts, events)))
        if last_request == "0-0" and exchange.last_seq:
            last_request = self._last_origin()
        if missing:
            self.events.append_many(missing)
        log.info("shard %s recovered at command %d, requests after %s, %d events republished",
                 self.name, exchange.last_seq, last_request, len(missing))
        return exchange, last_request

    def _last_origin(self) -> str:
        for _, record in self.journal.read(self.journal.last_seq):
            return decode_sequenced(record).origin or "0-0"
        return "0-0"

    def step(self, block_ms: int = 100) -> int:
        """Take one batch of requests: sequence, journal, apply, publish. Returns its size."""
        reply = cast(
            list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None,
            self.client.xread({self.requests: self.last_request}, count=self.batch,
                              block=block_ms),
        )
        taken = 0
        for _, entries in reply or ():
            for entry_id, fields in entries:
                self.last_request = entry_id.decode()
                try:
                    command = _command_decoder.decode(fields[b"c"])
                except (msgspec.DecodeError, KeyError) as exc:
                    log.warning("shard %s: request %s is not a command (%s); skipped",
                                self.name, self.last_request, exc)
                    continue
                self.sequencer.submit(command, origin=self.last_request)
                taken += 1
        released = self.sequencer.sync()
        if released:
            if released[0].seq != self.events.last_seq + 1:
                raise RecoveryError(f"shard {self.name}: events end at {self.events.last_seq}, "
                                    f"next to publish is {released[0].seq}")
            self.events.append_many([_encoder.encode(r) for r in released])
        return taken

    def run(self, stop: threading.Event) -> None:
        """Serve requests until ``stop`` is set."""
        while not stop.is_set():
            self.step()


def serve_shard(url: str, prefix: str, name: str, data_dir: Path,
                instruments: Sequence[Instrument], stop: threading.Event, *,
                snapshot_every: int = 10_000, retry_s: float = 0.5) -> None:
    """Run a shard until ``stop``; if Redis fails, start over from what Redis and the
    snapshots hold once it answers again (nothing is kept across a failure)."""
    while not stop.is_set():
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        try:
            Shard(client, prefix, name, data_dir, instruments,
                  snapshot_every=snapshot_every).run(stop)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            log.warning("shard %s: Redis failed (%s); recovering in %.1f s", name, exc, retry_s)
            stop.wait(retry_s)
        finally:
            client.close()
