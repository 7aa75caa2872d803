"""`cmx bench ...` and `cmx loadtest ...`: benchmark commands, registered through the
``cmx.commands`` entry point."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from loadtest.bench_core import main_core
from loadtest.bench_engine import main_engine
from loadtest.fix import main_fix
from loadtest.ws import main_ws
from loadtest.ws_fanout import main_fanout


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
    gas = kinds.add_parser(
        "gas",
        help="chain: gas of settleBatch per account delta and of a 1,000-account batch",
        description="Starts Anvil (the npm package's binary), deploys the contracts, funds "
        "--accounts accounts with deposits, and measures from receipts: an empty batch, the "
        "gas per account delta (accounts holding a balance, and accounts at zero) and the "
        "engine's batch of all the accounts, chunked and settled by the chain bridge. "
        "Compares with BENCHMARKS.md. Exits 1 if reconciliation fails.",
    )
    gas.add_argument("--accounts", type=int, default=1000,
                     help="accounts in the engine's batch (default 1,000)")
    gas.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    gas.set_defaults(handler=_bench_gas)
    attest = kinds.add_parser(
        "attest",
        help="uptime attestations: verified/s by the collector, and solve times",
        description="Verifies --count pre-solved attestations of up to 1,000 nodes through "
        "the collector (digest and signature recovery included), five times, then times "
        "--solves solves at --difficulty (the agent's hash rate, beside eth_hash's). "
        "Compares with "
        "BENCHMARKS.md. Exits 1 unless every attestation is accepted and every replay and "
        "forgery refused.",
    )
    attest.add_argument("--count", type=int, default=20_000,
                        help="attestations to verify (default 20,000)")
    attest.add_argument("--difficulty", type=int, default=None,
                        help="difficulty of the timed solves (default: the agent's default)")
    attest.add_argument("--solves", type=int, default=20, help="solves to time (default 20)")
    attest.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    attest.set_defaults(handler=_bench_attest)
    _register_loadtest(commands)


def _register_loadtest(commands: Any) -> None:
    loadtest: argparse.ArgumentParser = commands.add_parser(
        "loadtest",
        help="load the websocket API or the FIX port from separate processes and report "
        "latencies",
        description="Open-loop load tests of a running exchange; see BENCHMARKS.md.",
    )
    kinds = loadtest.add_subparsers(dest="loadtest", metavar="TEST", required=True)
    ws = kinds.add_parser(
        "ws",
        help="websocket order entry at fixed rates (or 'ws fanout': book fan-out)",
        description="Open loop at a fixed aggregate rate over N client connections, each its "
        "own account: limit orders around the reference price that mostly rest, and cancels "
        "of each client's oldest order once it has more than --max-live resting. Ack latency "
        "(from each order's scheduled time to its reply) in HDR histograms. By default the "
        "server is spawned as a separate process on a fresh file journal with its load "
        "accounts funded; --url targets a running server whose accounts are funded instead "
        "(cmx serve --demo: the development mnemonic's accounts). Several --rate values run "
        "one after another. Exits 1 if any order is lost.",
    )
    server = ws.add_mutually_exclusive_group()
    server.add_argument("--spawn", action="store_true",
                        help="spawn a fresh server process (the default)")
    server.add_argument("--url", help="websocket URL of a running server, e.g. "
                        "ws://127.0.0.1:8765/ (its dev accounts must be funded)")
    ws.add_argument("--rate", type=float, nargs="+", default=[10_000.0], metavar="R",
                    help="aggregate orders/s; several values make several runs "
                    "(default 10000)")
    ws.add_argument("--duration", type=float, default=10.0, metavar="S",
                    help="seconds of load per run (default 10)")
    ws.add_argument("--clients", type=int, default=32, metavar="N",
                    help="client connections (default 32)")
    _common(ws, procs_help="generator processes (default 1)")
    ws.add_argument("--max-live", type=int, default=50,
                    help="resting orders per client before it cancels its oldest (default 50)")
    ws.set_defaults(handler=_loadtest_ws)
    modes = ws.add_subparsers(dest="mode", metavar="MODE")
    fanout = modes.add_parser(
        "fanout",
        help="many book subscribers: delivery latency and the server's peak memory",
        description="Spawns a server, SUBSCRIBERS book subscribers (depth 10, every "
        "checksum verified) spread over --procs processes, and a driver placing and "
        "cancelling orders near the touch at UPDATES orders/s. Reports delivery latency "
        "(arrival less the update's server ts), messages delivered, checksum failures, "
        "resyncs and the server's peak RSS. Exits 1 on any checksum failure.",
    )
    fanout.add_argument("--subscribers", type=int, default=1000)
    fanout.add_argument("--updates", type=float, default=5000.0,
                        help="driver orders/s, each changing a visible level (default 5000)")
    fanout.add_argument("--duration", type=float, default=10.0, metavar="S")
    fanout.add_argument("--verify", type=int, default=20, metavar="N",
                        help="subscribers that keep a checksum-verified book; the rest only "
                        "check seq continuity (default 20)")
    _common(fanout, procs_help="subscriber processes (default 1)")
    fanout.set_defaults(handler=_loadtest_fanout)
    fix = kinds.add_parser(
        "fix",
        help="FIX order entry at fixed rates over N sessions",
        description="Open loop at a fixed aggregate rate over N FIX 4.4 sessions, each its "
        "own account, with the order mix of 'loadtest ws': D around the reference price, F "
        "of each session's oldest order past --max-live. Ack latency runs from each "
        "request's scheduled time to its ExecutionReport (New or Rejected) or "
        "OrderCancelReject, in HDR histograms. By default a fresh server process is spawned "
        "with its FIX acceptor and the load accounts funded (its per-session order rate "
        "limit raised: the test measures capacity); --fix targets a running acceptor whose "
        "load accounts are funded. Exits 1 if any order is lost.",
    )
    target = fix.add_mutually_exclusive_group()
    target.add_argument("--spawn", action="store_true",
                        help="spawn a fresh server process (the default)")
    target.add_argument("--fix", metavar="HOST:PORT", help="FIX acceptor of a running server")
    fix.add_argument("--rate", type=float, nargs="+", default=[10_000.0], metavar="R",
                     help="aggregate orders/s; several values make several runs "
                     "(default 10000)")
    fix.add_argument("--duration", type=float, default=10.0, metavar="S",
                     help="seconds of load per run (default 10)")
    fix.add_argument("--sessions", type=int, default=4, metavar="N",
                     help="FIX sessions (default 4)")
    _common(fix, procs_help="generator processes (default 1)")
    fix.add_argument("--store-fsync", action="store_true",
                     help="spawned server: fsync the FIX session stores at each commit "
                     "(cmx serve writes them through to the OS without, the default)")
    fix.add_argument("--max-live", type=int, default=50,
                     help="resting orders per session before it cancels its oldest "
                     "(default 50)")
    fix.set_defaults(handler=_loadtest_fix)


def _common(parser: argparse.ArgumentParser, procs_help: str) -> None:
    parser.add_argument("--procs", type=int, default=1, help=procs_help)
    parser.add_argument("--symbol", default="GPU.H100.SPOT",
                        help="spot instrument to trade (default GPU.H100.SPOT)")
    parser.add_argument("--drain", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the last replies after the load (default 10)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    parser.add_argument("--plot", metavar="PNG", help="also write a latency plot here")


def _loadtest_ws(args: argparse.Namespace) -> int:
    return main_ws(args.url, args.rate, duration_s=args.duration, clients=args.clients,
                   procs=args.procs, symbol=args.symbol, max_live=args.max_live,
                   drain_s=args.drain, json_path=args.json, plot_path=args.plot)


def _loadtest_fix(args: argparse.Namespace) -> int:
    return main_fix(args.fix, args.rate, duration_s=args.duration, sessions=args.sessions,
                    procs=args.procs, symbol=args.symbol, max_live=args.max_live,
                    drain_s=args.drain, json_path=args.json, plot_path=args.plot,
                    store_fsync=args.store_fsync)


def _loadtest_fanout(args: argparse.Namespace) -> int:
    if args.url is not None:
        print("cmx loadtest ws fanout: spawns its own server (to read its memory); "
              "--url is for order entry runs", file=sys.stderr)
        return 2
    return main_fanout(args.subscribers, args.updates, duration_s=args.duration,
                       procs=args.procs, symbol=args.symbol, drain_s=args.drain,
                       json_path=args.json, plot_path=args.plot, verify=args.verify)


def _bench_core(args: argparse.Namespace) -> int:
    return main_core(args.ops, args.seed, args.runs, args.symbol, args.json)


def _bench_engine(args: argparse.Namespace) -> int:
    return main_engine(args.ops, args.seed, args.symbol, args.json)


def _bench_gas(args: argparse.Namespace) -> int:
    from loadtest.bench_gas import main_gas  # noqa: PLC0415 (web3 loads only for it)

    return main_gas(args.accounts, args.json)


def _bench_attest(args: argparse.Namespace) -> int:
    from loadtest.bench_attest import main_attest  # noqa: PLC0415 (coincurve: only here)

    return main_attest(args.count, args.difficulty, args.solves, args.json)
