"""The `cmx` command line.

Subcommands come from the ``cmx.commands`` entry point group: each entry is a function that
adds its parser to the subparsers and sets ``handler``. The gateway thus never imports the
packages that build on it (``loadtest`` registers ``cmx bench`` this way).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points


def build_parser() -> argparse.ArgumentParser:
    """The full `cmx` parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="cmx",
        description="CMX, the Compute Mercantile Exchange: GPU-hours and rack-load, "
        "traded spot and as monthly futures.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in sorted(entry_points(group="cmx.commands"), key=lambda e: e.name):
        entry.load()(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cmx`` with ``argv`` (default: the process arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
