"""The sequencer: stamps each command, journals it, applies it, and releases its events
only once the journal holds it durably (under the journal's fsync policy).

Applying before the record is durable is safe: until then nobody has seen the events, and
after a crash the state is rebuilt from the journal alone.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import msgspec

from engine.commands import ExchangeCommand, Sequenced
from engine.events import ExchangeEvent
from engine.exchange import Exchange
from engine.exchange_state import encode_state, state_digest
from engine.journal import Journal
from engine.snapshots import SnapshotStore


class Released(msgspec.Struct, frozen=True, tag="released"):
    """A command's place in the journal and the events it caused, now safe to publish."""

    seq: int
    ts: int
    events: list[ExchangeEvent]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Sequenced)


def encode_sequenced(sequenced: Sequenced) -> bytes:
    """The journal record of a stamped command."""
    return _encoder.encode(sequenced)


def decode_sequenced(record: bytes) -> Sequenced:
    """A stamped command from its journal record."""
    return _decoder.decode(record)


class Sequencer:
    """Feeds one `Exchange` from one `Journal`; the only writer of both."""

    def __init__(
        self,
        exchange: Exchange,
        journal: Journal,
        *,
        clock: Callable[[], int] = time.time_ns,
        snapshots: SnapshotStore | None = None,
        snapshot_every: int = 0,
        keep_snapshots: int = 3,
    ) -> None:
        if journal.last_seq != exchange.last_seq:
            raise ValueError(
                f"journal ends at {journal.last_seq} but the exchange is at {exchange.last_seq}"
            )
        self.exchange = exchange
        self.journal = journal
        self._clock = clock
        self._snapshots = snapshots
        self._snapshot_every = snapshot_every
        self._keep_snapshots = keep_snapshots
        self._last_ts = exchange.last_ts
        self._pending: deque[Released] = deque()

    def submit(self, command: ExchangeCommand, origin: str = "") -> int:
        """Stamp, journal and apply ``command``; returns its sequence number.

        Its events wait in the sequencer until `release` finds the record durable.
        """
        ts = max(self._clock(), self._last_ts)
        self._last_ts = ts
        sequenced = Sequenced(self.exchange.last_seq + 1, ts, command, origin)
        seq = self.journal.append(encode_sequenced(sequenced))
        if seq != sequenced.seq:
            raise RuntimeError(f"journal wrote {seq}, expected {sequenced.seq}")
        self._pending.append(Released(seq, ts, self.exchange.apply(sequenced)))
        if self._snapshot_every and seq % self._snapshot_every == 0:
            self.snapshot()
        return seq

    def release(self) -> list[Released]:
        """The commands now durable whose events have not been released yet, in order."""
        durable = self.journal.durable_seq
        out: list[Released] = []
        pending = self._pending
        while pending and pending[0].seq <= durable:
            out.append(pending.popleft())
        return out

    def sync(self) -> list[Released]:
        """Make everything journaled durable now, and release it."""
        self.journal.sync()
        return self.release()

    def snapshot(self) -> None:
        """Save the exchange's state at its current sequence number."""
        if self._snapshots is None:
            return
        self.journal.sync()  # a snapshot never runs ahead of the durable journal
        encoded = encode_state(self.exchange.state())
        self._snapshots.save(self.exchange.last_seq, state_digest(encoded), encoded)
        self._snapshots.prune(self._keep_snapshots, keep_genesis=True)
