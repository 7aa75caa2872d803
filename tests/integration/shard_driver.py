"""Driving `cmx shard` processes in integration tests: start, kill and stop them, feed their
request streams, read their journal and event streams, and check what a shard left behind
against an uninterrupted replay of its journal.

The shard subprocess runs with its data directory as working directory: run from the
repository root, ``python -m`` would put the root on ``sys.path`` first, where a stale
``cmx.egg-info`` from an earlier build can hide the ``cmx.commands`` entry points.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from datetime import date
from itertools import pairwise
from pathlib import Path
from types import TracebackType
from typing import cast

import msgspec
import redis

from engine.commands import ExchangeCommand, Sequenced
from engine.exchange import Exchange
from engine.instruments import Instrument
from engine.recovery import restore_snapshot
from engine.redis_journal import RedisStreamJournal
from engine.registry import Registry
from engine.sequencer import Released, decode_sequenced
from engine.shard import Shard, decode_released, stream_names
from engine.snapshots import SnapshotStore

PREFIX = "cmx"
LISTING_DATE = date(2026, 11, 30)
GPU_SYMBOLS = ("GPU.H100.SPOT", "GPU.H100.F2701")
RACK_SYMBOLS = ("RACK.KW.SPOT", "RACK.KW.F2702")
REGISTRY = Registry.load(listing_date=LISTING_DATE)

_RECOVERED = re.compile(
    r"shard (?P<name>\S+) recovered at command (?P<seq>\d+), requests after (?P<after>\S+), "
    r"(?P<republished>\d+) events republished"
)
_request_encoder = msgspec.msgpack.Encoder()

_Entry = tuple[bytes, dict[bytes, bytes]]


def instruments(symbols: Sequence[str]) -> list[Instrument]:
    """The listed instruments ``symbols``, as a shard started with ``--symbols`` runs them."""
    return [REGISTRY[symbol] for symbol in symbols]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Recovery(msgspec.Struct, frozen=True):
    """One "recovered" line of a shard's log."""

    seq: int
    after: str
    republished: int


class ShardProcess:
    """A ``cmx shard`` subprocess, restartable; its stderr log accumulates over restarts.

    Use it as a context manager: leaving the block kills the process if it still runs.
    """

    def __init__(self, url: str, name: str, symbols: Sequence[str], data_dir: Path, *,
                 snapshot_every: int = 10_000) -> None:
        self.name = name
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"shard-{name}.log"
        self.argv = [
            sys.executable, "-m", "gateway.cli", "shard",
            "--redis-url", url,
            "--prefix", PREFIX,
            "--name", name,
            "--symbols", ",".join(symbols),
            "--data-dir", str(data_dir),
            "--snapshot-every", str(snapshot_every),
            "--listing-date", LISTING_DATE.isoformat(),
        ]
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ShardProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.alive:
            self.kill()

    @property
    def log(self) -> str:
        """Everything the shard logged, over all its runs."""
        return self.log_path.read_text() if self.log_path.exists() else ""

    @property
    def recoveries(self) -> list[Recovery]:
        """Each recovery the shard logged, oldest first."""
        return [Recovery(int(m["seq"]), m["after"], int(m["republished"]))
                for m in _RECOVERED.finditer(self.log) if m["name"] == self.name]

    @property
    def alive(self) -> bool:
        """Whether the process runs."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The running process's id."""
        assert self._process is not None
        return self._process.pid

    def start(self) -> Recovery:
        """Start the shard and wait until it logs that it recovered; returns that recovery."""
        assert not self.alive, "the shard runs already"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        known = len(self.recoveries)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(self.argv, cwd=self.data_dir,
                                             stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=log)
        return self.wait_recovered(known + 1)

    def wait_recovered(self, count: int, timeout: float = 15) -> Recovery:
        """Wait until the log holds ``count`` recoveries; returns the last."""
        self.wait_until(lambda: len(self.recoveries) >= count, timeout,
                        f"recovery {count} of shard {self.name}")
        return self.recoveries[count - 1]

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Like `wait_until`, failing at once (with the shard's log) if the shard exits."""
        def settled() -> bool:
            if not self.alive:
                raise AssertionError(f"shard {self.name} exited with status "
                                     f"{self.returncode()} while waiting for {what}:\n"
                                     f"{self.log[-4000:]}")
            return condition()

        try:
            wait_until(settled, timeout, what)
        except AssertionError as exc:
            if self.alive:
                raise AssertionError(f"{exc}; shard {self.name} logged:\n"
                                     f"{self.log[-4000:]}") from None
            raise

    def returncode(self) -> int | None:
        """The exit status, once the process has exited."""
        return None if self._process is None else self._process.poll()

    def kill(self) -> None:
        """SIGKILL: the shard dies wherever it is."""
        assert self._process is not None
        self._process.kill()
        self._process.wait(timeout=10)

    def terminate(self) -> int:
        """SIGTERM: the shard finishes its current step and exits; returns its exit status."""
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        return self._process.wait(timeout=10)


class RequestDriver(threading.Thread):
    """Adds commands to a shard's request stream from a thread, as a gateway would.

    Commands go in pipelined batches of seeded random size, at most ``rate`` a second (so
    a fast disk does not run the stream dry early). A batch Redis does not answer
    (down, restarting, loading) is sent again until it does, so a batch Redis took but whose
    reply was lost is added twice: checks compare the journal with the request stream itself.
    ``acknowledged`` holds the entry ids of every batch Redis answered.
    """

    def __init__(self, url: str, shard: str, commands: Sequence[ExchangeCommand], seed: int,
                 *, max_batch: int = 8, rate: float = 2000) -> None:
        super().__init__(name=f"request-driver-{shard}", daemon=True)
        self.acknowledged: list[str] = []
        self.failed_batches = 0
        self._url = url
        self._stream = stream_names(PREFIX, shard)[0]
        self._commands = commands
        self._rng = random.Random(seed)
        self._max_batch = max_batch
        self._rate = rate
        self._halt = threading.Event()
        self._error: BaseException | None = None

    def run(self) -> None:
        client = redis.Redis.from_url(self._url, socket_timeout=2, socket_connect_timeout=1)
        try:
            sent = 0
            started = time.monotonic()
            while sent < len(self._commands) and not self._halt.is_set():
                self._halt.wait(started + sent / self._rate - time.monotonic())
                batch = self._commands[sent : sent + self._rng.randint(1, self._max_batch)]
                while (ids := self._add(client, batch)) is None:
                    self.failed_batches += 1
                    if self._halt.wait(0.02):
                        return
                self.acknowledged += ids
                sent += len(batch)
        except BaseException as exc:
            self._error = exc
        finally:
            client.close()

    def _add(self, client: redis.Redis, batch: Sequence[ExchangeCommand]) -> list[str] | None:
        """Add ``batch`` in one round trip; its entry ids, or None if Redis did not answer."""
        pipe = client.pipeline(transaction=False)
        for command in batch:
            pipe.xadd(self._stream, {"c": _request_encoder.encode(command)})
        try:
            return [i.decode() for i in cast(list[bytes], pipe.execute())]
        except (redis.ConnectionError, redis.TimeoutError):
            return None

    def finish(self) -> list[str]:
        """Stop adding, and return the acknowledged entry ids; raises what the thread raised."""
        self._halt.set()
        self.join(timeout=15)
        assert not self.is_alive(), "the request driver did not stop"
        if self._error is not None:
            raise self._error
        return self.acknowledged


def request_ids(client: redis.Redis, shard: str) -> list[str]:
    """The entry ids of a shard's request stream, in stream order."""
    stream = stream_names(PREFIX, shard)[0]
    ids: list[str] = []
    start = "-"
    while True:
        page = cast(list[_Entry], client.xrange(stream, start, "+", count=4096))
        ids += [entry_id.decode() for entry_id, _ in page]
        if len(page) < 4096:
            return ids
        start = f"({ids[-1]}"


def journal_records(client: redis.Redis, shard: str) -> list[Sequenced]:
    """A shard's journal stream, decoded; each record's seq is checked against its entry."""
    records = []
    for seq, payload in RedisStreamJournal(client, stream_names(PREFIX, shard)[1]).read():
        record = decode_sequenced(payload)
        assert record.seq == seq, f"journal entry {seq}-0 holds command {record.seq}"
        records.append(record)
    return records


def published(client: redis.Redis, shard: str) -> list[Released]:
    """A shard's event stream, decoded; entry ``{seq}-0`` must hold the `Released` of seq."""
    out = []
    for seq, payload in RedisStreamJournal(client, stream_names(PREFIX, shard)[2]).read():
        released = decode_released(payload)
        assert released.seq == seq, f"event entry {seq}-0 holds the events of {released.seq}"
        out.append(released)
    return out


def published_through(client: redis.Redis, shard: str) -> int:
    """The seq of the last `Released` in a shard's event stream (0 if none)."""
    return RedisStreamJournal(client, stream_names(PREFIX, shard)[2]).last_seq


def wait_drained(client: redis.Redis, shard: ShardProcess, timeout: float = 20) -> None:
    """Wait until the shard has journaled its last request and published its last command."""
    requests, journal_stream, events_stream = stream_names(PREFIX, shard.name)

    def drained() -> bool:
        newest = cast(list[_Entry], client.xrevrange(requests, "+", "-", count=1))
        journal = cast(list[_Entry], client.xrevrange(journal_stream, "+", "-", count=1))
        events = cast(list[_Entry], client.xrevrange(events_stream, "+", "-", count=1))
        if not newest:
            return True
        return bool(journal) and bool(events) and events[0][0] == journal[0][0] and \
            decode_sequenced(journal[0][1][b"p"]).origin == newest[0][0].decode()

    shard.wait_until(drained, timeout, "the shard to journal and publish every request")


def replay_from_genesis(data_dir: Path, records: Sequence[Sequenced]) -> tuple[
        Exchange, list[Released]]:
    """Replay journal records, uninterrupted, into the exchange of the shard's genesis
    snapshot (seq 0); every later snapshot the shard wrote must match the replay there."""
    snapshots = SnapshotStore(data_dir).snapshots()
    assert snapshots and snapshots[0].seq == 0, f"no genesis snapshot in {data_dir}"
    checkpoints = {s.seq: s.state_hash for s in snapshots[1:]}
    exchange = restore_snapshot(snapshots[0])
    replayed = []
    for record in records:
        replayed.append(Released(record.seq, record.ts, exchange.apply(record)))
        expected = checkpoints.pop(record.seq, None)
        if expected is not None:
            assert exchange.state_hash() == expected, f"snapshot {record.seq} differs"
    assert not checkpoints, f"snapshots beyond the journal: {sorted(checkpoints)}"
    return exchange, replayed


class EndState(msgspec.Struct, frozen=True):
    """What `check_end_state` found."""

    requests: int
    journaled: int
    events: int
    state_hash: str


def check_end_state(client: redis.Redis, shard: str, data_dir: Path, symbols: Sequence[str],
                    acknowledged: Collection[str]) -> EndState:
    """Check what a stopped shard left in Redis and its data directory:

    * every request in the request stream is journaled exactly once, in stream order, and
      so is every request whose add was ``acknowledged``;
    * each journaled seq has exactly one `Released`, equal to what an uninterrupted replay
      of the journal from the genesis snapshot gives;
    * the replay's ledger is conserved, and a shard recovering now reaches the same state.
    """
    requests = request_ids(client, shard)
    records = journal_records(client, shard)
    origins = [r.origin for r in records]
    assert len(set(origins)) == len(origins), "a request was journaled twice"
    assert all(a < b for a, b in pairwise(_ids(origins))), \
        "journal origins are not in request stream order"
    assert origins == requests, (
        f"{len(requests)} requests, {len(records)} journaled; not journaled: "
        f"{sorted(set(requests) - set(origins))[:5]}, journaled but not requested: "
        f"{sorted(set(origins) - set(requests))[:5]}")
    lost = set(acknowledged) - set(origins)
    assert not lost, f"acknowledged requests never journaled: {sorted(lost)[:5]}"

    events = published(client, shard)
    exchange, replayed = replay_from_genesis(data_dir, records)
    assert len(events) == len(records), f"{len(records)} journaled, {len(events)} published"
    diverged = next((i for i, (a, b) in enumerate(zip(events, replayed, strict=True))
                     if a != b), None)
    assert diverged is None, (f"published events of seq {diverged + 1} differ from the "
                              f"replay:\n{events[diverged]}\n{replayed[diverged]}")
    assert exchange.ledger.conserved()

    recovered = Shard(client, PREFIX, shard, data_dir, instruments(symbols))
    assert recovered.exchange.last_seq == len(records)
    assert recovered.exchange.state_hash() == exchange.state_hash()
    assert recovered.exchange.ledger.conserved()
    assert recovered.last_request == (requests[-1] if requests else "0-0")
    return EndState(len(requests), len(records), sum(len(r.events) for r in events),
                    exchange.state_hash())


def _ids(entry_ids: Sequence[str]) -> list[tuple[int, int]]:
    return [(int(ms), int(part)) for ms, _, part in (i.partition("-") for i in entry_ids)]
