"""`cmx engine` and `cmx replay`, registered through the ``cmx.commands`` entry point."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import date
from pathlib import Path
from typing import Any

from engine import stdio
from engine.instruments import Registry, utc_today
from engine.journal import FsyncPolicy, JournalError
from engine.recovery import RecoveryError, open_data_dir, verify_data_dir
from engine.sequencer import Sequencer
from engine.snapshots import SnapshotCorrupt


def register(commands: Any) -> None:
    """Add ``engine`` and ``replay`` to the `cmx` subparsers."""
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
