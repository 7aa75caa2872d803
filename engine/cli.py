"""`cmx engine`, `cmx shard` and `cmx replay` (entry point group ``cmx.commands``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from datetime import date
from pathlib import Path
from typing import Any

import msgspec

from engine import stdio
from engine.instruments import InstrumentError, utc_today
from engine.journal import FsyncPolicy, JournalError
from engine.recovery import RecoveryError, open_data_dir, verify_data_dir
from engine.registry import Registry
from engine.sequencer import Sequencer
from engine.shard import ShardMap, serve_shard
from engine.snapshots import SnapshotCorrupt


def register(commands: Any) -> None:
    """Add ``engine``, ``shard`` and ``replay`` to the `cmx` subparsers."""
    engine: argparse.ArgumentParser = commands.add_parser(
        "engine",
        help="run the matching engine as a child process over stdin/stdout",
        description="Recovers the exchange from DATA_DIR (latest snapshot + journal), then "
        "reads length-prefixed msgpack commands on stdin and writes each acknowledgement "
        "(sequence number, timestamp, events) on stdout once the command is durable in the "
        "journal.",
    )
    engine.add_argument("--data-dir", type=Path, required=True,
                        help="journal and snapshots live here (created if missing)")
    engine.add_argument("--fsync", choices=[p.value for p in FsyncPolicy],
                        default=FsyncPolicy.GROUP.value,
                        help="when the journal fsyncs: every command, in groups, or never "
                        "(default group)")
    engine.add_argument("--group-commit-ms", type=int, default=2,
                        help="group commit window in ms (default 2)")
    engine.add_argument("--snapshot-every", type=int, default=100_000,
                        help="write a snapshot every N commands (default 100000; 0 = never)")
    engine.add_argument("--listing-date", type=date.fromisoformat, default=None,
                        help="date the instruments of a NEW data directory are listed from "
                        "(default today, UTC)")
    engine.set_defaults(handler=_engine)

    shard: argparse.ArgumentParser = commands.add_parser(
        "shard",
        help="run one engine shard fed by Redis Streams",
        description="Runs the exchange for the given instruments as shard NAME: requests are "
        "read from the stream PREFIX:NAME:requests, journaled to PREFIX:NAME:journal and "
        "their events published to PREFIX:NAME:events once durable (run Redis with "
        "appendonly yes and appendfsync always). Snapshots go to --data-dir. If Redis fails, "
        "the shard recovers from Redis and its snapshots once Redis answers again.",
    )
    shard.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    shard.add_argument("--prefix", default="cmx", help="stream key prefix (default cmx)")
    shard.add_argument("--name", required=True, help="this shard's name")
    runs = shard.add_mutually_exclusive_group(required=True)
    runs.add_argument("--symbols", help="comma-separated instruments this shard runs")
    runs.add_argument("--shard-map", type=Path, metavar="FILE",
                      help='JSON {"shards": {"NAME": ["SYMBOL", ...], ...}}: this shard runs '
                      "the symbols listed under its --name")
    shard.add_argument("--data-dir", type=Path, required=True, help="snapshot directory")
    shard.add_argument("--snapshot-every", type=int, default=10_000,
                       help="write a snapshot every N commands (default 10000)")
    shard.add_argument("--listing-date", type=date.fromisoformat, required=True,
                       help="date the instruments are listed from; keep it across restarts, "
                       "so the shard's symbols stay listed (YYYY-MM-DD)")
    shard.set_defaults(handler=_shard)

    replay: argparse.ArgumentParser = commands.add_parser(
        "replay",
        help="replay a data directory's journal and verify its state hashes",
        description="Rebuilds the exchange from the earliest snapshot in DATA_DIR by "
        "replaying the journal, checks the state hash at every later snapshot, and prints "
        "the final sequence number and state hash. Exits 1 on any mismatch or damage.",
    )
    replay.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    replay.set_defaults(handler=_replay)


def _engine(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    listing = args.listing_date or utc_today()
    try:
        exchange, journal, store = open_data_dir(
            args.data_dir, lambda: Registry.load(listing_date=listing),
            policy=FsyncPolicy(args.fsync), group_commit_ms=args.group_commit_ms)
    except (RecoveryError, JournalError, SnapshotCorrupt) as exc:
        print(f"cmx engine: {exc}", file=sys.stderr)
        return 1
    sequencer = Sequencer(exchange, journal, snapshots=store,
                          snapshot_every=args.snapshot_every)
    try:
        return stdio.main(sequencer, args.group_commit_ms)
    finally:
        journal.close()


def _shard(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = Registry.load(listing_date=args.listing_date)
    try:
        if args.shard_map is not None:
            shard_map = msgspec.json.decode(args.shard_map.read_bytes(), type=ShardMap)
            symbols = shard_map.shards[args.name]
        else:
            symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
        instruments = [registry[symbol] for symbol in symbols]
    except (InstrumentError, OSError, msgspec.DecodeError) as exc:
        print(f"cmx shard: {exc}", file=sys.stderr)
        return 2
    except KeyError:
        print(f"cmx shard: {args.shard_map} has no shard named {args.name}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve_shard(args.redis_url, args.prefix, args.name, args.data_dir, instruments, stop,
                    snapshot_every=args.snapshot_every)
    except KeyboardInterrupt:
        pass
    except (RecoveryError, JournalError, SnapshotCorrupt) as exc:
        print(f"cmx shard: {exc}", file=sys.stderr)
        return 1
    return 0


def _replay(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        report = verify_data_dir(args.data_dir)
    except (RecoveryError, JournalError, SnapshotCorrupt) as exc:
        print(f"cmx replay: {exc}", file=sys.stderr)
        return 1
    print(f"replayed {report.replayed} commands from the snapshot at {report.start_seq}; "
          f"{report.snapshots_checked} later snapshots matched")
    print(f"last command {report.last_seq}, state hash {report.state_hash}")
    return 0
