"""`cmx bench ...`: benchmark commands, registered through the ``cmx.commands`` entry point."""

from __future__ import annotations

import argparse
from typing import Any

from loadtest.bench_core import main_core
from loadtest.bench_engine import main_engine


def register(commands: Any) -> None:
    """Add ``bench`` and its subcommands to the `cmx` subparsers."""
    bench: argparse.ArgumentParser = commands.add_parser(
        "bench",
        help="run a benchmark and print (optionally write as JSON) its figures",
        description="Benchmarks print figures and check correctness; see BENCHMARKS.md.",
    )
    kinds = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    core = kinds.add_parser(
        "core",
        help="matching core: reference vs Cython per-command vs Cython batch, one book",
        description="Runs one seeded stream in exchange-core's mix (82%% move, 9%% GTC, "
        "6%% cancel, 3%% IOC; ~1,000 resting orders, 1,000 accounts) through the pure-Python "
        "reference book, the Cython core with one Python call per command, and the Cython "
        "core in packed batches, then open loop at 500k ops/s for per-command latency. "
        "Exits 1 if any run ends in a state hash other than the reference's.",
    )
    core.add_argument("--ops", type=int, default=1_000_000,
                      help="commands in the mix, after the warm-up (default 1,000,000)")
    core.add_argument("--seed", type=int, default=1, help="stream seed (default 1)")
    core.add_argument("--runs", type=int, default=5,
                      help="Cython runs; figures are medians (default 5)")
    core.add_argument("--symbol", default="GPU.H100.SPOT",
                      help="instrument whose price band the book covers (default GPU.H100.SPOT)")
    core.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    core.set_defaults(handler=_bench_core)

    engine = kinds.add_parser(
        "engine",
        help="exchange engine: commands/s through Exchange.apply with the file journal",
        description="Runs the core mix as exchange commands from 1,000 funded accounts on one "
        "futures instrument (risk, margin, fees, positions, events) through the sequencer "
        "with the file journal in group-commit mode, then replays the journal twice. Exits 1 "
        "unless both replays give byte-identical events and the live run's state hash.",
    )
    engine.add_argument("--ops", type=int, default=300_000,
                        help="orders in the mix (default 300,000)")
    engine.add_argument("--seed", type=int, default=1, help="stream seed (default 1)")
    engine.add_argument("--symbol", default="GPU.H100.F2701",
                        help="futures instrument to trade (default GPU.H100.F2701)")
    engine.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    engine.set_defaults(handler=_bench_engine)


def _bench_core(args: argparse.Namespace) -> int:
    return main_core(args.ops, args.seed, args.runs, args.symbol, args.json)


def _bench_engine(args: argparse.Namespace) -> int:
    return main_engine(args.ops, args.seed, args.symbol, args.json)
