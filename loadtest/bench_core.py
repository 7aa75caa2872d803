"""`cmx bench core`: one book, one thread, no risk: reference vs Cython, side by side.

The same seeded stream (exchange-core's mix, `loadtest.workload`) runs through the pure-Python
reference book, the Cython core one Python call per command, and the Cython core in packed
batches; then open loop at a fixed rate for per-command latency. Every run must end in the
reference's state hash, or the benchmark fails.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from cython_ext.book import MatchingCore
from engine.book import state_hash
from engine.cython_book import CoreCall, CythonBook, core_call
from engine.instruments import InstrumentError, utc_today
from engine.messages import Command, ExpireOrders
from engine.reference_book import ReferenceBook
from engine.registry import Registry
from engine.wire import COMMAND_WORDS, pack_commands
from loadtest.workload import generate


class CoreBenchResult(msgspec.Struct):
    """What `cmx bench core` measured; written as JSON with ``--json``."""

    ops: int
    commands: int
    seed: int
    runs: int
    min_price: int
    max_price: int
    resting_orders_at_end: int
    reference_ops_per_s: float
    cython_ops_per_s: float
    cython_batch_ops_per_s: float
    cython_ops_per_s_runs: list[float]
    cython_batch_ops_per_s_runs: list[float]
    speedup_per_command: float
    speedup_batch: float
    latency_rate_ops_per_s: int
    cython_p50_ns: int
    cython_p99_ns: int
    cython_p9999_ns: int
    cython_max_ns: int
    cython_run_p50_ns: int
    cython_run_p99_ns: int
    cython_run_p9999_ns: int
    idle_floor_p50_ns: int
    idle_floor_p99_ns: int
    idle_floor_p9999_ns: int
    state_hash: str
    state_hash_equal: bool


def _calls(core: MatchingCore, commands: Sequence[Command]) -> list[CoreCall]:
    """Each command as a bound core method and its arguments: one Python call each."""
    return [core_call(core, cmd) for cmd in commands]


def _timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter_ns()
    run()
    return (time.perf_counter_ns() - start) / 1e9


def _buffer(n: int) -> memoryview:
    return memoryview(bytearray(8 * n)).cast("q")


def _percentiles(ns: memoryview) -> tuple[int, int, int, int]:
    """p50, p99, p99.99 and max of a buffer of nanosecond figures."""
    ordered = sorted(ns)
    at = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.99, 0.9999)]
    return at[0], at[1], at[2], ordered[-1]


def run_core_bench(
    *,
    ops: int = 1_000_000,
    seed: int = 1,
    runs: int = 5,
    min_price: int = 2125,
    max_price: int = 2875,
    latency_rate: int = 500_000,
    batch_size: int = 4096,
    log: Callable[[str], None] = print,
) -> CoreBenchResult:
    """Run the core benchmark and return its figures (see `CoreBenchResult`)."""
    workload = generate(ops, seed, min_price, max_price)
    commands = workload.commands
    n = len(commands)
    log(f"stream: {n} commands ({workload.warmup} warm-up + {ops} in the mix), seed {seed}, "
        f"band [{min_price}, {max_price}], {workload.resting_at_end} orders resting at the end")

    reference = ReferenceBook(min_price, max_price)
    apply = reference.apply
    ref_s = _timed(lambda: [apply(cmd) for cmd in commands])
    expected = state_hash(reference)
    log(f"reference             {n / ref_s:>12,.0f} ops/s")

    hashes: set[str] = set()
    single: list[float] = []
    batch: list[float] = []
    packed = memoryview(pack_commands(commands))
    step = batch_size * COMMAND_WORDS
    for _ in range(runs):
        book = CythonBook(min_price, max_price)
        calls = _calls(book.core, commands)

        def per_command(calls: list[CoreCall] = calls) -> None:
            for fn, args in calls:
                fn(*args)

        single.append(n / _timed(per_command))
        hashes.add(state_hash(book))

        book = CythonBook(min_price, max_price)
        apply_batch = book.core.apply_batch

        def batched(apply_batch: Callable[[memoryview], int] = apply_batch) -> None:
            for start in range(0, len(packed), step):
                apply_batch(packed[start:start + step])

        batch.append(n / _timed(batched))
        hashes.add(state_hash(book))
        log(f"cython per command    {single[-1]:>12,.0f} ops/s   "
            f"batch {batch[-1]:>12,.0f} ops/s")

    book = CythonBook(min_price, max_price)
    interval = 1_000_000_000 // latency_rate
    latency, service = _buffer(n), _buffer(n)
    book.core.paced_latencies(packed, interval, latency, service)
    hashes.add(state_hash(book))
    # The same harness on commands that do nothing: what the machine alone adds.
    floor = _buffer(n)
    idle = pack_commands([ExpireOrders(0)] * n)
    MatchingCore(min_price, max_price).paced_latencies(idle, interval, floor)
    open_loop, own, machine = _percentiles(latency), _percentiles(service), _percentiles(floor)
    for label, (p50, p99, p9999, top) in (
        ("open loop ", open_loop), ("run time  ", own), ("idle floor", machine)
    ):
        log(f"latency {label} at {latency_rate:,} ops/s: p50 {p50:,} ns, p99 {p99:,} ns, "
            f"p99.99 {p9999:,} ns, max {top:,} ns")

    equal = hashes == {expected}
    log(f"state hash {expected}: {'equal in every run' if equal else 'MISMATCH ' + str(hashes)}")
    ref_ops = n / ref_s
    single_med = statistics.median(single)
    batch_med = statistics.median(batch)
    log(f"median of {runs}: per command {single_med:,.0f} ops/s ({single_med / ref_ops:.1f}x "
        f"reference), batch {batch_med:,.0f} ops/s ({batch_med / ref_ops:.1f}x reference)")
    return CoreBenchResult(
        ops=ops,
        commands=n,
        seed=seed,
        runs=runs,
        min_price=min_price,
        max_price=max_price,
        resting_orders_at_end=workload.resting_at_end,
        reference_ops_per_s=round(ref_ops),
        cython_ops_per_s=round(single_med),
        cython_batch_ops_per_s=round(batch_med),
        cython_ops_per_s_runs=[round(x) for x in single],
        cython_batch_ops_per_s_runs=[round(x) for x in batch],
        speedup_per_command=round(single_med / ref_ops, 2),
        speedup_batch=round(batch_med / ref_ops, 2),
        latency_rate_ops_per_s=latency_rate,
        cython_p50_ns=open_loop[0],
        cython_p99_ns=open_loop[1],
        cython_p9999_ns=open_loop[2],
        cython_max_ns=open_loop[3],
        cython_run_p50_ns=own[0],
        cython_run_p99_ns=own[1],
        cython_run_p9999_ns=own[2],
        idle_floor_p50_ns=machine[0],
        idle_floor_p99_ns=machine[1],
        idle_floor_p9999_ns=machine[2],
        state_hash=expected,
        state_hash_equal=equal,
    )


def main_core(ops: int, seed: int, runs: int, symbol: str, json_path: str | None) -> int:
    """CLI body: run, print, optionally write JSON; exit status 1 if any state hash differs."""
    try:
        instrument = Registry.load(listing_date=utc_today())[symbol]
    except InstrumentError as exc:
        print(f"cmx bench core: {exc}", file=sys.stderr)
        return 2
    result = run_core_bench(
        ops=ops,
        seed=seed,
        runs=runs,
        min_price=instrument.min_price_ticks,
        max_price=instrument.max_price_ticks,
    )
    if json_path:
        with open(json_path, "wb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(result)) + b"\n")
    if not result.state_hash_equal:
        print("FAIL: a book ended in a different state than the reference", file=sys.stderr)
        return 1
    return 0
