"""`cmx serve`: the whole exchange in one process on embedded defaults.

The engine recovers from the data directory (latest snapshot + journal), the websocket API and
the market page listen on one port, and Ctrl-C (or SIGTERM) stops accepting, releases what
the journal holds, writes a snapshot and closes the journal.

Other packages join the process through the ``cmx.serve`` entry point group (the chain
bridge does): each entry is a `ServeExtension` that adds its options and, when they ask for
it, attaches to the running gateway and server. The gateway never imports them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from datetime import date
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

import redis

from engine.commands import Timer
from engine.instruments import InstrumentError, utc_today
from engine.journal import FsyncPolicy, Journal, JournalError
from engine.recovery import RecoveryError, open_data_dir, recover, snapshot_store
from engine.redis_journal import RedisStreamJournal
from engine.registry import Registry
from engine.sequencer import Sequencer
from engine.snapshots import SnapshotCorrupt
from gateway.fix_app import EXCHANGE_COMP_ID, FixAcceptor
from gateway.fix_server import FixServer
from gateway.fix_store import StoreOpener, file_stores, redis_stores
from gateway.hub import Gateway
from gateway.server import ExchangeServer

log = logging.getLogger("cmx.serve")

DEFAULT_DATA_DIR = Path("cmx-data")
MARKET_DATA_MS = 10
"""Default interval of book, trade and ticker messages (see `Gateway.flush_market_data`)."""
CLOCK_S = 1.0
"""How often the exchange's clock looks for a due `Timer`."""


Detach = Callable[[], Awaitable[None]]
Attach = Callable[[Gateway, ExchangeServer], Awaitable[Detach]]
"""Start a part of the process beside the gateway; returns how to stop it."""


class ServeExtension(Protocol):
    """A part of `cmx serve` that lives in another package."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add its options to ``cmx serve``."""

    def attach(self, args: argparse.Namespace) -> Attach | None:
        """How to start it with these options (None: not wanted)."""

    def funds_demo(self, args: argparse.Namespace) -> bool:
        """Whether it funds the demo's accounts itself (else the demo credits them)."""


def extensions() -> list[ServeExtension]:
    """The registered extensions, by entry point name."""
    found: list[ServeExtension] = []
    for entry in sorted(entry_points(group="cmx.serve"), key=lambda e: e.name):
        found.append(entry.load())
    return found


def register(commands: Any) -> None:
    """Add ``serve`` to the `cmx` subparsers."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the exchange: engine, websocket API and market page",
        description="Runs CMX in one process: the engine with its journal and snapshots in "
        "DATA_DIR (recovered on restart), the websocket API and the market page on "
        "http://HOST:PORT/. Ctrl-C shuts down cleanly.",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="journal and snapshots (default ./cmx-data, created if missing)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default "
                        "127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="listen port (default 8765)")
    parser.add_argument("--fix-port", type=int, default=9878,
                        help="FIX 4.4 acceptor port (default 9878; -1 = no FIX acceptor)")
    parser.add_argument("--fix-cancel-on-disconnect", action="store_true",
                        help="cancel a FIX session's orders when it disconnects (a Logon's "
                        "8013=Y/N overrides)")
    parser.add_argument("--demo", action="store_true",
                        help="fund the development accounts and run simulated market makers "
                        "and takers (development only)")
    parser.add_argument("--redis-url", default=None,
                        help="journal to a Redis stream at this URL instead of the file "
                        "journal (snapshots stay in DATA_DIR)")
    parser.add_argument("--redis-stream", default="cmx:serve:journal",
                        help="the journal's stream key with --redis-url")
    parser.add_argument("--fsync", choices=[p.value for p in FsyncPolicy],
                        default=FsyncPolicy.GROUP.value,
                        help="file journal fsync policy (default group)")
    parser.add_argument("--snapshot-every", type=int, default=100_000,
                        help="write a snapshot every N commands (default 100000)")
    parser.add_argument("--listing-date", type=date.fromisoformat, default=None,
                        help="list the instruments of a NEW data directory from this date "
                        "(default today, UTC)")
    parser.add_argument("--instruments", type=Path, default=None, metavar="FILE",
                        help="list the instruments of a NEW data directory from this product "
                        "file (default: the products of CONTRACTS.md shipped with CMX, "
                        "engine/data/instruments.toml)")
    parser.add_argument("--market-data-ms", type=int, default=MARKET_DATA_MS,
                        help="send book, trade and ticker changes at most this often, "
                        f"coalesced (default {MARKET_DATA_MS}; 0 = after every command)")
    parser.add_argument("--log-level", default="INFO")
    for extension in extensions():
        extension.add_arguments(parser)
    parser.set_defaults(handler=_serve)


def open_sequencer(data_dir: Path, *, redis_url: str | None = None,
                   redis_stream: str = "cmx:serve:journal",
                   fsync: FsyncPolicy = FsyncPolicy.GROUP, snapshot_every: int = 100_000,
                   listing_date: date | None = None,
                   products: Path | None = None) -> Sequencer:
    """Recover the exchange of ``data_dir`` and its journal, ready to sequence. A new data
    directory lists its instruments from ``products`` (default: the shipped product file) as
    of ``listing_date``; an existing one keeps those it began with."""
    listing = listing_date or utc_today()

    def instruments() -> Registry:
        return Registry.load(products, listing_date=listing)

    journal: Journal
    if redis_url is None:
        exchange, journal, store = open_data_dir(data_dir, instruments, policy=fsync)
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        journal = RedisStreamJournal(redis.Redis.from_url(redis_url), redis_stream)
        store = snapshot_store(data_dir)
        exchange = recover(data_dir, journal, store, instruments)
    return Sequencer(exchange, journal, snapshots=store, snapshot_every=snapshot_every)


async def run(sequencer: Sequencer, host: str, port: int, *, demo: bool,
              stop: asyncio.Event, market_data_ms: int = MARKET_DATA_MS,
              fix_port: int = -1, fix_stores: StoreOpener | None = None,
              fix_cancel_on_disconnect: bool = False, attach: Sequence[Attach] = (),
              demo_funding: bool = True) -> None:
    """Serve until ``stop`` is set, with the ``attach``ed parts of the process started before
    the server listens (their routes are ready with it) and stopped before it closes."""
    gateway = Gateway(sequencer, market_data_interval_ns=market_data_ms * 1_000_000)
    server = ExchangeServer(gateway, host=host, port=port)
    detach: list[Detach] = []
    try:
        for start in attach:
            detach.append(await start(gateway, server))
        await server.start()
    except BaseException:
        for stop_part in reversed(detach):
            await stop_part()
        raise
    log.info("CMX listening on http://%s:%d/ (websocket API on the same port), command %d",
             host, server.port, sequencer.exchange.last_seq)
    fix = None
    if fix_port >= 0 and fix_stores is not None:
        acceptor = FixAcceptor(gateway, fix_stores,
                               cancel_on_disconnect=fix_cancel_on_disconnect)
        fix = FixServer(acceptor, server.commit, host=host, port=fix_port)
        await fix.start()
        log.info("FIX 4.4 acceptor (CompID %s) on %s:%d", EXCHANGE_COMP_ID, host, fix.port)
    clock = asyncio.create_task(run_clock(gateway, server.pump))
    demo_task = None
    if demo:
        from gateway.demo import run_demo  # noqa: PLC0415 (only the demo needs it)

        demo_task = asyncio.create_task(run_demo(gateway, server.pump, fund=demo_funding))
    try:
        await stop.wait()
    finally:
        clock.cancel()
        with suppress(asyncio.CancelledError):
            await clock
        if demo_task is not None:
            demo_task.cancel()
            with suppress(asyncio.CancelledError):
                await demo_task
        for stop_part in reversed(detach):
            await stop_part()
        if fix is not None:
            await fix.stop()
        await server.stop()


async def run_clock(gateway: Gateway, pump: Callable[[], None],
                    interval_s: float = CLOCK_S) -> None:
    """The exchange's clock: every ``interval_s`` a `Timer` is sequenced if one is due (a
    delivery window closes, a future halts or settles), so time passes without traders."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            if gateway.exchange.timer_due(gateway.clock()):
                gateway.submit(Timer())
                pump()
        except Exception:  # the journal refused, say: the clock tries again, loudly
            log.exception("the exchange's clock could not sequence a Timer")


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sequencer = open_sequencer(args.data_dir, redis_url=args.redis_url,
                                   redis_stream=args.redis_stream,
                                   fsync=FsyncPolicy(args.fsync),
                                   snapshot_every=args.snapshot_every,
                                   listing_date=args.listing_date,
                                   products=args.instruments)
    except (InstrumentError, OSError, RecoveryError, JournalError, SnapshotCorrupt,
            redis.RedisError) as exc:
        print(f"cmx serve: {exc}", file=sys.stderr)
        return 1

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if args.redis_url is not None:
            stores = redis_stores(redis.Redis.from_url(args.redis_url))
        else:
            # Written through to the OS per message, not fsynced: a killed process loses
            # nothing, and an fsync per ExecutionReport (ms on this disk, on the event loop)
            # would cap FIX at a few hundred reports a second. The journal is the record.
            stores = file_stores(args.data_dir / "fix", fsync=False)
        parts = extensions()
        attach = [a for a in (p.attach(args) for p in parts) if a is not None]
        await run(sequencer, args.host, args.port, demo=args.demo, stop=stop,
                  market_data_ms=args.market_data_ms, fix_port=args.fix_port,
                  fix_stores=stores, fix_cancel_on_disconnect=args.fix_cancel_on_disconnect,
                  attach=attach, demo_funding=not any(p.funds_demo(args) for p in parts))

    try:
        asyncio.run(main())
    except (OSError, RuntimeError) as exc:  # a port taken, a chain refusing (ChainError)
        print(f"cmx serve: {exc}", file=sys.stderr)
        return 1
    finally:
        sequencer.snapshot()
        sequencer.journal.close()
        log.info("stopped at command %d", sequencer.exchange.last_seq)
    return 0
