"""The chain options of `cmx serve` (a `gateway.serve.ServeExtension` registered in the
``cmx.serve`` entry point group). Light to import: every `cmx` command builds its parser, and
web3 loads only when the service starts (`chain_bridge.service`)."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

BATCH_INTERVAL_S = 5.0
BATCH_FILLS = 1_000
EPOCH_S = 300.0
FORCED_WITHDRAWAL_DELAY_S = 86_400
"""Default time a forced withdrawal request may wait for a batch before anyone may freeze
the vault (one day: escape hatches give the operator days, not minutes)."""


class ChainExtension:
    """`cmx serve`'s chain options and the service they start (a `ServeExtension`)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the chain options to ``cmx serve``."""
        group = parser.add_argument_group("chain")
        group.add_argument("--chain", choices=["embedded", "anvil", "none"],
                           default="embedded",
                           help="embedded: the in-process EVM (default); anvil: spawn Anvil "
                           "from node_modules; none: no chain (deposits only by command)")
        group.add_argument("--rpc-url", default=None,
                           help="use the JSON-RPC node at this URL instead")
        group.add_argument("--deployment", type=Path, default=None,
                           help="contract addresses to attach to (JSON; default "
                           "DATA_DIR/chain/deployment.json, deployed there on a development "
                           "chain if missing)")
        group.add_argument("--operator-key", default=None, metavar="KEY_OR_FILE",
                           help="the ClearingHouse operator's key (default: one generated "
                           "in DATA_DIR/chain/operator.key, development chains only)")
        group.add_argument("--confirmations", type=int, default=None,
                           help="blocks a deposit must be under before it is credited "
                           "(default 0 on development chains, 12 otherwise)")
        group.add_argument("--batch-interval", type=float, default=BATCH_INTERVAL_S,
                           help=f"seconds between clearing cuts (default {BATCH_INTERVAL_S:g})")
        group.add_argument("--batch-fills", type=int, default=BATCH_FILLS,
                           help=f"cut sooner once this many fills wait (default "
                           f"{BATCH_FILLS})")
        group.add_argument("--forced-withdrawal-delay", type=int,
                           default=FORCED_WITHDRAWAL_DELAY_S,
                           help="seconds a forced withdrawal may wait before the vault can "
                           "be frozen, for a new deployment (default one day)")
        group.add_argument("--epoch-seconds", type=float, default=EPOCH_S,
                           help=f"uptime epoch length (default {EPOCH_S:g})")
        group.add_argument("--attest-difficulty", type=int, default=None,
                           help="attestation difficulty of a new deployment (default: about "
                           "a second of one core per solve)")

    def attach(self, args: argparse.Namespace) -> Callable[[Any, Any], Awaitable[Any]] | None:
        """The chain service's start, unless ``--chain none``."""
        if args.chain == "none" and args.rpc_url is None:
            return None
        from chain_bridge.service import start  # noqa: PLC0415 (web3 loads only to serve)

        return partial(start, args)

    def funds_demo(self, args: argparse.Namespace) -> bool:
        """With a chain, the demo's accounts are funded by real deposits."""
        return args.chain != "none" or args.rpc_url is not None


EXTENSION = ChainExtension()
