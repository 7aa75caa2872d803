"""``cmx withdraw``: take free collateral out of the exchange through the websocket API; the
next clearing batch pays it on chain. ``--wait`` follows it until the chain has paid it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from engine.keys import read_key
from gateway.client import RequestRefused, TraderClient

WAIT_S = 120.0


def register(commands: Any) -> None:
    """Add ``withdraw`` to the `cmx` subparsers."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "withdraw", help="withdraw free collateral to the account's address on chain",
        description="Logs in to the running exchange with the account's key and withdraws "
        "AMOUNT USDC of free collateral; the next clearing batch pays it on chain.")
    parser.add_argument("--host", default="127.0.0.1", help="the server (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="its port (default 8765)")
    parser.add_argument("--key", required=True, metavar="KEY_OR_FILE",
                        help="the account's private key (hex, or a file)")
    parser.add_argument("--wait", action="store_true",
                        help=f"wait (up to {WAIT_S:.0f} s) until the chain has paid it")
    parser.add_argument("amount", help="USDC, e.g. 250 or 0.5")
    parser.set_defaults(handler=_withdraw)


async def request_withdrawal(url: str, key: str, amount: str) -> int:
    """Withdraw ``amount`` USDC for ``key``'s account; the withdrawal id."""
    client = TraderClient()
    await client.connect(url)
    try:
        await client.login(key)
        accepted = await client.withdraw(amount)
        return accepted.withdrawal_id
    finally:
        await client.close()


def paid(host: str, port: int, withdrawal_id: int) -> bool:
    """Whether the chain has paid withdrawal ``withdrawal_id``."""
    url = f"http://{host}:{port}/api/chain/withdrawal?id={withdrawal_id}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return bool(json.loads(response.read())["paid"])


def _withdraw(args: argparse.Namespace) -> int:
    try:
        withdrawal_id = asyncio.run(request_withdrawal(f"ws://{args.host}:{args.port}/",
                                                       read_key(args.key), args.amount))
    except RequestRefused as exc:
        print(f"cmx withdraw: refused: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cmx withdraw: cannot reach {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"withdrawal {withdrawal_id} of {args.amount} USDC accepted; the next clearing "
          "batch pays it")
    if not args.wait:
        return 0
    deadline = time.monotonic() + WAIT_S
    try:
        while not paid(args.host, args.port, withdrawal_id):
            if time.monotonic() > deadline:
                print(f"cmx withdraw: not paid after {WAIT_S:.0f} s", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except (OSError, urllib.error.HTTPError) as exc:
        print(f"cmx withdraw: cannot follow it: {exc}", file=sys.stderr)
        return 1
    print(f"withdrawal {withdrawal_id} paid on chain")
    return 0
