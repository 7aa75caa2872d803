"""`cmx bench engine`: commands per second through `Exchange.apply` with the file journal.

The stream is the core benchmark's order flow (exchange-core's mix) on one futures
instrument, entered by 1,000 funded accounts, so every order also passes risk, moves margin
and fees in the ledger and updates positions. It runs through the sequencer with the file
journal in group-commit mode; then the journal is replayed twice into fresh exchanges, which
must give byte-identical events and the live run's state hash.
"""

from __future__ import annotations

import calendar
import itertools
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path

import msgspec

from engine.commands import (
    AmendOrder,
    CancelOrder,
    CreditDeposit,
    ExchangeCommand,
    PlaceOrder,
    Sequenced,
)
from engine.events import CommandRejected, OrderRejected
from engine.exchange import Exchange
from engine.instruments import Instrument, InstrumentError
from engine.journal import FsyncPolicy, read_records
from engine.messages import Amend, Cancel, NewOrder
from engine.recovery import journal_path, open_data_dir, snapshot_store
from engine.registry import Registry
from engine.sequencer import Released, Sequencer, decode_sequenced
from loadtest.workload import generate

LISTING_DATE = date(2026, 11, 30)
LISTING_NS = calendar.timegm(LISTING_DATE.timetuple()) * 1_000_000_000
ACCOUNTS = 1000
DEPOSIT = 10_000_000 * 1_000_000  # 10M USDC each


class EngineBenchResult(msgspec.Struct):
    """What `cmx bench engine` measured; written as JSON with ``--json``."""

    ops: int
    commands: int
    symbol: str
    fsync: str
    group_commit_ms: int
    commands_per_s: float
    apply_only_per_s: float
    replay_commands_per_s: float
    events: int
    rejected: int
    journal_bytes: int
    state_hash: str
    deterministic: bool


def account(i: int) -> str:
    """The address of benchmark account ``i``."""
    return f"0x{0xC0FFEE0000 + i:040x}"


def engine_stream(ops: int, seed: int, instrument: Instrument) -> list[ExchangeCommand]:
    """Deposits for every account, then the core mix as exchange commands on ``instrument``."""
    workload = generate(ops, seed, instrument.min_price_ticks, instrument.max_price_ticks,
                        accounts=ACCOUNTS)
    symbol = instrument.symbol
    commands: list[ExchangeCommand] = [CreditDeposit(i, account(i), DEPOSIT)
                                       for i in range(1, ACCOUNTS + 1)]
    for cmd in workload.commands:
        if isinstance(cmd, NewOrder):
            commands.append(PlaceOrder(account(cmd.account), symbol, cmd.side, cmd.qty,
                                       cmd.price, tif=cmd.tif))
        elif isinstance(cmd, Amend):
            commands.append(AmendOrder(account(cmd.account), symbol, cmd.order_id, cmd.price,
                                       cmd.qty))
        else:
            assert isinstance(cmd, Cancel)
            commands.append(CancelOrder(account(cmd.account), symbol, cmd.order_id))
    return commands


def _replay(data_dir: Path, instruments: list[Instrument]) -> tuple[float, bytes, str]:
    """Replay the whole journal into a fresh exchange: (seconds, encoded events, hash)."""
    exchange = Exchange(instruments)
    encoder = msgspec.msgpack.Encoder()
    chunks: list[bytes] = []
    records = list(read_records(journal_path(data_dir)))
    start = time.perf_counter()
    for _, record in records:
        chunks.append(encoder.encode(exchange.apply(decode_sequenced(record))))
    seconds = time.perf_counter() - start
    return seconds, b"".join(chunks), exchange.state_hash()


def run_engine_bench(
    *,
    ops: int = 300_000,
    seed: int = 1,
    symbol: str = "GPU.H100.F2701",
    group_commit_ms: int = 2,
    log: Callable[[str], None] = print,
) -> EngineBenchResult:
    """Run the engine benchmark and return its figures (see `EngineBenchResult`)."""
    registry = Registry.load(listing_date=LISTING_DATE)
    instruments = list(registry)
    commands = engine_stream(ops, seed, registry[symbol])
    log(f"stream: {len(commands)} commands ({ACCOUNTS} deposits, then "
        f"{len(commands) - ACCOUNTS} order commands: a warm-up book and {ops} in the core "
        f"mix) on {symbol}")

    bare = Exchange(instruments)
    start = time.perf_counter()
    _apply_all(bare, commands)
    apply_only = len(commands) / (time.perf_counter() - start)
    log(f"Exchange.apply alone            {apply_only:>10,.0f} commands/s")

    with tempfile.TemporaryDirectory(prefix="cmx-bench-") as tmp:
        data_dir = Path(tmp)
        exchange, journal, store = open_data_dir(
            data_dir, lambda: instruments, policy=FsyncPolicy.GROUP,
            group_commit_ms=group_commit_ms)
        # Sequenced time starts at the listing date, whatever the wall clock says, so the
        # futures month traded is always open.
        ticks = itertools.count(LISTING_NS, 1000)
        sequencer = Sequencer(exchange, journal, snapshots=store, clock=lambda: next(ticks))
        events = rejected = 0
        start = time.perf_counter()
        for i, command in enumerate(commands):
            sequencer.submit(command)
            if i % 256 == 255:
                events, rejected = _count(sequencer.release(), events, rejected)
        events, rejected = _count(sequencer.sync(), events, rejected)
        seconds = time.perf_counter() - start
        live_hash = exchange.state_hash()
        journal.close()
        journal_bytes = journal_path(data_dir).stat().st_size
        log(f"sequencer + journal (group {group_commit_ms} ms) "
            f"{len(commands) / seconds:>10,.0f} commands/s, {events:,} events")
        genesis = snapshot_store(data_dir).latest()
        assert genesis is not None and genesis.seq == 0
        first = _replay(data_dir, instruments)
        second = _replay(data_dir, instruments)
    replay_rate = len(commands) / min(first[0], second[0])
    deterministic = first[1] == second[1] and first[2] == second[2] == live_hash
    if rejected:
        log(f"FAIL: {rejected} commands of the stream were refused; the stream is not valid")
    log(f"replay of the journal           {replay_rate:>10,.0f} commands/s")
    verdict = "two replays byte-identical, equal to the live run" if deterministic \
        else "MISMATCH"
    log(f"state hash {live_hash}: {verdict}")
    return EngineBenchResult(
        ops=ops,
        commands=len(commands),
        symbol=symbol,
        fsync=FsyncPolicy.GROUP.value,
        group_commit_ms=group_commit_ms,
        commands_per_s=round(len(commands) / seconds),
        apply_only_per_s=round(apply_only),
        replay_commands_per_s=round(replay_rate),
        events=events,
        rejected=rejected,
        journal_bytes=journal_bytes,
        state_hash=live_hash,
        deterministic=deterministic,
    )


def _count(released: list[Released], events: int, rejected: int) -> tuple[int, int]:
    """Running totals of events and of refused commands (the stream expects none)."""
    for r in released:
        events += len(r.events)
        rejected += sum(isinstance(e, OrderRejected | CommandRejected) for e in r.events)
    return events, rejected


def _apply_all(exchange: Exchange, commands: Iterable[ExchangeCommand]) -> None:
    for seq, command in enumerate(commands, 1):
        exchange.apply(Sequenced(seq, seq, command))


def main_engine(ops: int, seed: int, symbol: str, json_path: str | None) -> int:
    """CLI body: run, print, optionally write JSON; exit status 1 unless deterministic."""
    try:
        result = run_engine_bench(ops=ops, seed=seed, symbol=symbol)
    except InstrumentError as exc:
        print(f"cmx bench engine: {exc}", file=sys.stderr)
        return 2
    if json_path:
        with open(json_path, "wb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(result)) + b"\n")
    return 0 if result.deterministic and not result.rejected else 1
