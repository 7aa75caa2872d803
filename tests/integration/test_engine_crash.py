"""`cmx engine` under kill -9: every acknowledged command survives, and recovery is exact.

The crash test feeds a seeded command stream to the engine as fast as the pipe takes it and
SIGKILLs the process at random moments, then restarts it on the same data directory. After
each kill the journal must hold every acknowledged command, each the command that was sent,
and each must already have been in the journal file when its acknowledgement was read; the
next run continues with the first command the journal does not hold. At the end the journal,
replayed from genesis in one go, must give every acknowledgement's events, each restart's
recovered state, and the final state that `cmx engine`, `cmx replay` and `verify_data_dir`
report.
"""

from __future__ import annotations

import random
import time
from datetime import date
from pathlib import Path

import pytest

from engine.commands import (
    CancelAll,
    ClearingCut,
    CreditDeposit,
    ExchangeCommand,
    IndexFix,
    RequestWithdrawal,
    Timer,
)
from engine.exchange import Exchange
from engine.journal import HEADER_SIZE, scan
from engine.recovery import (
    journal_path,
    open_data_dir,
    restore_snapshot,
    snapshot_store,
    verify_data_dir,
)
from engine.registry import Registry
from engine.sequencer import Released
from engine.stdio import encode_command
from loadtest.bench_engine import ACCOUNTS, account, engine_stream
from tests.integration.engine_driver import (
    LISTING_DATE,
    EngineProcess,
    engine_args,
    journal_entries,
    record_start,
    recovered,
    released_digest,
    replay_data_dir,
    run_cmx,
)

SEED = 2701
SYMBOL = "GPU.H100.F2701"
KILLS = 26
# When each kill comes: a random moment after serving began; just after a reply arrives
# (the engine has promised durability); just after a new snapshot file appears (it must not
# be ahead of the journal); or a random moment from the start, which may land in start-up.
KILL_MOMENTS = ("time", "reply", "time", "snapshot", "reply", "start-up")
SNAPSHOT_EVERY = 500

Acked = dict[int, bytes]  # seq -> digest of the engine's reply


def crash_stream(ops: int, seed: int) -> list[ExchangeCommand]:
    """The engine benchmark's stream on ``SYMBOL``, with clearing, time, index fixes, money
    movements and mass cancels mixed into the order flow."""
    registry = Registry.load(listing_date=date.fromisoformat(LISTING_DATE))
    rng = random.Random(seed)
    underlying = registry[SYMBOL].underlying
    commands: list[ExchangeCommand] = []
    for i, command in enumerate(engine_stream(ops, seed, registry[SYMBOL]), 1):
        commands.append(command)
        if i <= ACCOUNTS or i % 97:
            continue
        who = account(rng.randint(1, ACCOUNTS))
        extras: list[ExchangeCommand] = [
            ClearingCut(),
            Timer(),
            IndexFix(underlying, 20261201 + rng.randrange(28), rng.randint(2_000_000, 3_000_000)),
            RequestWithdrawal(i, who, rng.randint(1, 1_000) * 1_000_000),
            CreditDeposit(rng.randint(1, ACCOUNTS + i), who, 1_000_000),  # some are repeats
            CancelAll(who, SYMBOL),
        ]
        commands.append(rng.choice(extras))
    return commands


def check_run(engine: EngineProcess, data_dir: Path, commands: list[ExchangeCommand],
              first_seq: int, acked: Acked) -> int:
    """Check what one run acknowledged against the journal it left; returns the journal's
    last seq (the run's commands start at ``first_seq``).

    Acknowledgements come in order without gaps; the journal holds the commands as sent; each
    acknowledged record was in the journal file before its acknowledgement was read.
    """
    assert not engine.errors
    assert [ack.seq for ack in engine.acks] == list(range(first_seq,
                                                         first_seq + len(engine.acks)))
    path = journal_path(data_dir)
    last = scan(path).last_seq if path.exists() else 0
    ends: dict[int, int] = {}  # seq -> where its record ends
    if last:
        for sequenced, end in journal_entries(data_dir, first_seq):
            assert sequenced.command == commands[sequenced.seq - 1], (
                f"journal record {sequenced.seq} is not the command sent")
            ends[sequenced.seq] = end
    assert len(ends) == last - first_seq + 1
    lost = [ack.seq for ack in engine.acks if ack.seq > last]
    assert not lost, f"acknowledged {lost[:3]}... but the journal ends at {last}"
    early = [(ack.seq, ends[ack.seq], ack.journal_bytes) for ack in engine.acks
             if ends[ack.seq] > ack.journal_bytes]
    assert not early, (f"acknowledged before the record reached the file, as (seq, record "
                       f"end, journal size then): {early[:3]}...")
    acked.update((ack.seq, ack.digest) for ack in engine.acks)
    return last


def assert_uninterrupted(data_dir: Path, commands: list[ExchangeCommand], acked: Acked,
                         restarts: dict[int, str]) -> tuple[int, str]:
    """Replay the whole journal from the genesis snapshot in one exchange, checking it against
    every acknowledgement, every restart's recovered state and `verify_data_dir`; returns
    (last seq, state hash)."""
    genesis = snapshot_store(data_dir).snapshots()[0]
    assert genesis.seq == 0
    listed = Exchange(Registry.load(listing_date=date.fromisoformat(LISTING_DATE)))
    assert genesis.state_hash == listed.state_hash()
    assert restarts.get(0, genesis.state_hash) == genesis.state_hash
    exchange = restore_snapshot(genesis)
    for sequenced, _ in journal_entries(data_dir):
        seq = sequenced.seq
        assert sequenced.command == commands[seq - 1]
        events = exchange.apply(sequenced)
        digest = acked.get(seq)
        if digest is not None:
            assert released_digest(Released(seq, sequenced.ts, events)) == digest, (
                f"command {seq} was acknowledged with other events than its replay gives")
        state = restarts.get(seq)
        if state is not None:
            assert exchange.state_hash() == state, f"the engine recovered at {seq} to {state}"
    last, state = exchange.last_seq, exchange.state_hash()
    assert max(acked, default=0) <= last
    assert max(restarts, default=0) <= last
    assert exchange.ledger.conserved()
    report = verify_data_dir(data_dir)
    assert (report.start_seq, report.last_seq, report.state_hash) == (0, last, state)
    return last, state


def assert_recovers_to(data_dir: Path, log_path: Path, last: int, state: str) -> None:
    """`cmx engine` (started and stopped at once), `cmx replay` and `open_data_dir` all reach
    ``state`` at ``last``, with money conserved."""
    engine = EngineProcess(data_dir, log_path, [], snapshot_every=SNAPSHOT_EVERY,
                           close_stdin=True)
    assert engine.wait() == 0, engine.log()
    assert recovered(engine.log()) == (last, state)
    assert replay_data_dir(data_dir) == (last, state)
    exchange, journal, _ = open_data_dir(data_dir, list)
    journal.close()
    assert (exchange.last_seq, exchange.state_hash()) == (last, state)
    assert exchange.ledger.conserved()


def run_to_end(data_dir: Path, log_path: Path, commands: list[ExchangeCommand], first_seq: int,
               acked: Acked, snapshot_every: int = SNAPSHOT_EVERY) -> str:
    """Let the engine take ``commands[first_seq - 1:]`` and exit cleanly; returns its log."""
    engine = EngineProcess(data_dir, log_path,
                           [encode_command(c) for c in commands[first_seq - 1:]],
                           snapshot_every=snapshot_every, close_stdin=True)
    assert engine.wait() == 0, engine.log()
    assert check_run(engine, data_dir, commands, first_seq, acked) == len(commands)
    assert len(engine.acks) == len(commands) - first_seq + 1
    return engine.log()


@pytest.mark.slow
def test_kill_9_under_load_loses_no_acknowledged_command(tmp_path: Path) -> None:
    commands = crash_stream(250_000, SEED)
    frames = [encode_command(command) for command in commands]
    data_dir = tmp_path / "data"
    rng = random.Random(SEED)
    acked: Acked = {}
    restarts: dict[int, str] = {}  # seq -> state hash a run recovered to
    last = 0  # commands[:last] are in the journal
    under_load = 0
    for run in range(KILLS):
        engine = EngineProcess(data_dir, tmp_path / f"engine-{run}.log", frames[last:],
                               snapshot_every=SNAPSHOT_EVERY)
        moment = KILL_MOMENTS[run % len(KILL_MOMENTS)]
        if moment == "start-up":
            time.sleep(rng.uniform(0.0, 0.3))
            engine.kill()
        else:
            engine.wait_serving()
            delay = rng.uniform(0.02, 0.3)
            if moment == "reply":
                engine.kill_on_reply(delay)
            elif moment == "snapshot":
                engine.kill_on_snapshot(delay)
            else:
                time.sleep(delay)
                engine.kill()
        log = engine.log()
        start = recovered(log)
        if start is not None:
            assert start[0] == last
            restarts[start[0]] = start[1]
        under_load += bool(engine.acks)
        last = check_run(engine, data_dir, commands, last + 1, acked)
    assert under_load >= 20
    assert last < len(commands), "the stream ran dry: kills hit an idle engine"

    commands = commands[:last + 2000]
    log = run_to_end(data_dir, tmp_path / "engine-final.log", commands, last + 1, acked)
    start = recovered(log)
    assert start is not None and start[0] == last
    restarts[last] = start[1]
    assert_recovers_to(data_dir, tmp_path / "engine-after.log",
                       *assert_uninterrupted(data_dir, commands, acked, restarts))
    print(f"{KILLS} kills ({under_load} under load), {len(acked)} of {len(commands)} "
          "commands acknowledged")


def test_a_torn_tail_is_cut_off_with_a_warning_and_the_engine_goes_on(tmp_path: Path) -> None:
    commands = crash_stream(300, SEED)
    data_dir = tmp_path / "data"
    acked: Acked = {}
    run_to_end(data_dir, tmp_path / "first.log", commands[:1250], 1, acked, snapshot_every=100)
    start = record_start(data_dir, 1250)  # after the snapshot at 1200
    size = journal_path(data_dir).stat().st_size
    cut = start + (size - start) // 2
    with open(journal_path(data_dir), "r+b") as journal:
        journal.truncate(cut)
    del acked[1250]  # in the history this simulates, 1250 was torn mid-write

    log = run_to_end(data_dir, tmp_path / "second.log", commands, 1250, acked,
                     snapshot_every=100)
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, log
    for part in (str(journal_path(data_dir)), f"{cut - start} bytes of torn tail",
                 f"byte offset {start}", "up to seq 1249"):
        assert part in warnings[0], warnings[0]
    assert recovered(log) is not None
    assert_recovers_to(data_dir, tmp_path / "after.log",
                       *assert_uninterrupted(data_dir, commands, acked, {}))


@pytest.mark.parametrize(("field", "at"), [
    ("length", 0), ("crc", 4), ("seq", 8), ("payload", HEADER_SIZE + 3),
])
def test_damage_before_the_tail_stops_engine_and_replay(tmp_path: Path, field: str,
                                                        at: int) -> None:
    data_dir = tmp_path / "data"
    run_to_end(data_dir, tmp_path / "first.log", crash_stream(300, SEED)[:300], 1, {},
               snapshot_every=100)
    path = journal_path(data_dir)
    offset = record_start(data_dir, 5)  # long before the tail and the snapshots
    damaged = bytearray(path.read_bytes())
    damaged[offset + at] ^= 0x01
    path.write_bytes(damaged)

    where = f"journal {path} is corrupt at byte offset {offset}: "
    engine = run_cmx(*engine_args(data_dir, 100))
    assert engine.returncode != 0, f"{field}: the engine started on a damaged journal"
    assert f"cmx engine: {where}" in engine.stderr, engine.stderr
    assert "Traceback" not in engine.stderr
    replay = run_cmx("replay", str(data_dir))
    assert replay.returncode == 1
    assert f"cmx replay: {where}" in replay.stderr, replay.stderr
    assert path.read_bytes() == damaged, "the damaged journal was changed"
