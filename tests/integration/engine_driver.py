"""Drive `cmx engine` as a child process: feed it framed commands, collect its acknowledgements.

The engine reads length-prefixed msgpack commands on stdin and acknowledges each on stdout
once it is durable (`engine.stdio`). `EngineProcess` writes a run of pre-encoded frames from
one thread as fast as the pipe takes them and reads replies in another, so a test can kill
the process at any moment and then compare what was acknowledged with what the journal kept.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import msgspec

from engine.commands import Sequenced
from engine.journal import HEADER_SIZE, read_records
from engine.recovery import journal_path, snapshot_store
from engine.sequencer import Released, decode_sequenced
from engine.stdio import RequestError, decode_reply, split_frames

LISTING_DATE = "2026-11-30"
# -P: never put the working directory on sys.path, where a stale cmx.egg-info from an old
# `pip install -e` would hide the installed package's entry points (and `cmx engine`).
CMX = (sys.executable, "-P", "-m", "gateway.cli")
WAIT_S = 30.0
_FRAME_HEADER = 4  # the u32 length before each reply (engine.stdio)

_RECOVERED = re.compile(r"recovered .* at command (\d+) \(\d+ replayed after the snapshot\), "
                        r"state ([0-9a-f]+)")
_REPLAYED = re.compile(r"^last command (\d+), state hash ([0-9a-f]+)$", re.MULTILINE)
_reply_encoder = msgspec.msgpack.Encoder()


class Ack(NamedTuple):
    """An acknowledgement as the driver saw it."""

    seq: int
    digest: bytes  # of the reply body, to compare it with a replay without keeping it
    journal_bytes: int  # the journal file's size measured just after the reply arrived


def engine_args(data_dir: Path, snapshot_every: int) -> list[str]:
    """The arguments of `cmx engine` on ``data_dir`` (group commit, fixed listing date)."""
    return ["engine", "--data-dir", str(data_dir), "--fsync", "group",
            "--group-commit-ms", "2", "--snapshot-every", str(snapshot_every),
            "--listing-date", LISTING_DATE]


def run_cmx(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `cmx` with ``args`` and no input to completion."""
    return subprocess.run([*CMX, *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120, check=False)


def reply_digest(body: bytes) -> bytes:
    """The fingerprint of an encoded reply."""
    return hashlib.blake2b(body, digest_size=16).digest()


def released_digest(released: Released) -> bytes:
    """The fingerprint the engine's reply for ``released`` has."""
    return reply_digest(_reply_encoder.encode(released))


def recovered(log: str) -> tuple[int, str] | None:
    """(last seq, state hash) from the engine's start-up line in its stderr ``log``, if any."""
    match = _RECOVERED.search(log)
    return None if match is None else (int(match[1]), match[2])


def replay_data_dir(data_dir: Path) -> tuple[int, str]:
    """(last seq, state hash) as `cmx replay` prints them; asserts it exits 0."""
    done = run_cmx("replay", str(data_dir))
    assert done.returncode == 0, done.stderr
    match = _REPLAYED.search(done.stdout)
    assert match is not None, done.stdout
    return int(match[1]), match[2]


def journal_entries(data_dir: Path, from_seq: int = 1) -> Iterator[tuple[Sequenced, int]]:
    """The stamped commands in the journal from ``from_seq`` on, each with the byte offset
    where its record ends."""
    end = 0
    for seq, record in read_records(journal_path(data_dir)):
        end += HEADER_SIZE + len(record)
        if seq >= from_seq:
            sequenced = decode_sequenced(record)
            assert sequenced.seq == seq
            yield sequenced, end


def record_start(data_dir: Path, seq: int) -> int:
    """The byte offset where the journal record of ``seq`` begins."""
    start = 0
    for found, record in read_records(journal_path(data_dir)):
        if found == seq:
            return start
        start += HEADER_SIZE + len(record)
    raise LookupError(f"the journal has no record {seq}")


class EngineProcess:
    """One run of `cmx engine` on a data directory, fed ``frames`` in order.

    With ``close_stdin`` the engine's stdin is closed after the last frame, so the engine
    acknowledges everything and exits by itself. Every read from the engine's stdout is
    followed by a look at the journal's size, so each `Ack` says how much of the journal
    was in the file by the time the promise was seen.
    """

    def __init__(self, data_dir: Path, log_path: Path, frames: Sequence[bytes], *,
                 snapshot_every: int, close_stdin: bool = False) -> None:
        self.log_path = log_path
        self.acks: list[Ack] = []  # filled in when the engine has exited
        self.errors: list[str] = []  # RequestError replies, garbage on stdout
        self._replied = threading.Event()  # set at the first reply, or when stdout closes
        self._journal = journal_path(data_dir)
        self._snapshots = snapshot_store(data_dir).directory
        self._kill_at: float | None = None
        with open(log_path, "wb") as log:
            self._process = subprocess.Popen(
                [*CMX, *engine_args(data_dir, snapshot_every)], bufsize=0,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        self._writer = threading.Thread(target=self._write, args=(frames, close_stdin),
                                        daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._writer.start()
        self._reader.start()

    def wait_serving(self) -> None:
        """Wait until the engine has recovered and replied to something."""
        if not (self._replied.wait(WAIT_S) and self._process.poll() is None):
            self.kill()
            raise AssertionError(f"the engine is not serving:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the engine now (a crash: no flush, no clean-up) and collect its replies."""
        self._process.send_signal(signal.SIGKILL)
        self._finish()

    def kill_on_reply(self, after_s: float) -> None:
        """SIGKILL the engine as soon as a reply arrives after ``after_s`` seconds: it dies just
        after promising durability, before it gets to do anything else."""
        self._kill_at = time.monotonic() + after_s
        try:
            self._process.wait(timeout=after_s + WAIT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError("the engine sent no reply to be killed on") from None
        finally:
            self.kill()

    def kill_on_snapshot(self, after_s: float) -> None:
        """SIGKILL the engine as soon as a new snapshot appears after ``after_s`` seconds: the
        snapshot must not be ahead of what the journal holds."""
        time.sleep(after_s)
        newest = max(os.listdir(self._snapshots))  # temporary files sort before snapshots
        deadline = time.monotonic() + WAIT_S
        try:
            while max(os.listdir(self._snapshots)) <= newest:
                if time.monotonic() > deadline:
                    raise AssertionError("the engine wrote no snapshot to be killed on")
                time.sleep(0.0002)
        finally:
            self.kill()

    def wait(self) -> int:
        """Wait for the engine to exit by itself; returns its exit status."""
        return self._finish()

    def log(self) -> str:
        """What the engine wrote on stderr."""
        return self.log_path.read_text()

    def _finish(self) -> int:
        status = self._process.wait(timeout=WAIT_S)
        for thread in (self._writer, self._reader):
            thread.join(timeout=WAIT_S)
            assert not thread.is_alive(), "a thread driving the engine did not stop"
        for pipe in (self._process.stdin, self._process.stdout):
            assert pipe is not None
            pipe.close()
        return status

    def _write(self, frames: Sequence[bytes], close_stdin: bool) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            for start in range(0, len(frames), 64):
                view = memoryview(b"".join(frames[start:start + 64]))
                while view:
                    view = view[os.write(stdin.fileno(), view):]
            if close_stdin:
                stdin.close()
        except OSError:  # the engine was killed: whatever it did not read is lost
            pass

    def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        received = bytearray()
        seen: list[tuple[int, int]] = []  # (stdout bytes received, journal bytes just after)
        # Only collect bytes while the engine runs, so this thread is back in os.read at once
        # and a kill on a reply lands before the engine has moved on.
        while chunk := os.read(stdout.fileno(), 1 << 16):
            if self._kill_at is not None and time.monotonic() >= self._kill_at:
                self._process.send_signal(signal.SIGKILL)
                self._kill_at = None
            received += chunk
            seen.append((len(received), self._journal_bytes()))
            self._replied.set()
        self._replied.set()
        marks = [stdout_bytes for stdout_bytes, _ in seen]
        end = 0
        try:
            # a partial frame left over is a reply the engine died writing: not an ack
            for body in split_frames(received):
                end += _FRAME_HEADER + len(body)
                reply = decode_reply(body)
                if isinstance(reply, RequestError):
                    self.errors.append(reply.message)
                    continue
                journal_bytes = seen[bisect.bisect_left(marks, end)][1]
                self.acks.append(Ack(reply.seq, reply_digest(body), journal_bytes))
        except (msgspec.DecodeError, ValueError) as exc:
            self.errors.append(f"stdout byte {end}: not a reply: {exc}")

    def _journal_bytes(self) -> int:
        try:
            return self._journal.stat().st_size
        except FileNotFoundError:
            return 0
