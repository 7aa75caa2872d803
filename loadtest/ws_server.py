"""The exchange a websocket load test runs against, in a process of its own.

``python -m loadtest.ws_server --data-dir DIR --accounts N`` runs the same server as
``cmx serve`` (file journal in DIR with group fsync, default gateway limits) after funding the
load test's N accounts (`load_key`) and giving each H100 capacity to sell, then prints one JSON
line ``{"port": P}`` and serves until SIGTERM. With ``--fix-port`` it also runs the FIX
acceptor as ``cmx serve`` does (session stores in DIR/fix, written through to the OS and
fsynced only with ``--fix-store-fsync``), its per-session order rate limit raised to
``--fix-order-rate`` (the load test measures capacity, not that protection), and the line
carries ``"fix_port"``. `SpawnedServer` starts and stops it from the load generator
and reads its peak memory.

Accounts are funded by journaled `CreditDeposit` commands, as the chain bridge would: the
websocket API has no way to create money, so a load test against a running server
(``--url``) needs accounts that server already funded (``cmx serve --demo``'s).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from engine.commands import CreditDeposit, SetCapacity
from gateway.auth import address_of
from gateway.fix_app import FixAcceptor
from gateway.fix_server import FixServer
from gateway.fix_store import file_stores
from gateway.hub import Gateway
from gateway.rate_limit import RateLimit
from gateway.serve import MARKET_DATA_MS, open_sequencer
from gateway.server import ExchangeServer

DEPOSIT_MICRO_USDC = 10_000_000 * 1_000_000
CAPACITY_UNITS = 1_000_000_000
UNDERLYINGS = ("GPU.H100",)


def load_key(index: int) -> str:
    """The private key of load test account ``index`` (deterministic; test use only)."""
    return "0x" + hashlib.sha256(f"cmx load test account {index}".encode()).hexdigest()


async def serve(data_dir: Path, port: int, accounts: int, fix_port: int | None = None,
                fix_order_rate: int = 100_000, fix_store_fsync: bool = False) -> None:
    """Fund the load accounts, listen, report the port(s) on stdout, serve until SIGTERM."""
    sequencer = open_sequencer(data_dir)
    gateway = Gateway(sequencer, market_data_interval_ns=MARKET_DATA_MS * 1_000_000)
    server = ExchangeServer(gateway, port=port)
    await server.start()
    for index in range(accounts):
        account = address_of(load_key(index))
        gateway.submit(CreditDeposit(index + 1, account, DEPOSIT_MICRO_USDC))
        for underlying in UNDERLYINGS:
            gateway.submit(SetCapacity(account, underlying, CAPACITY_UNITS))
    gateway.publish(sequencer.sync())
    ports = {"port": server.port}
    fix = None
    if fix_port is not None:
        acceptor = FixAcceptor(gateway, file_stores(data_dir / "fix", fsync=fix_store_fsync),
                               rate_limit=RateLimit(fix_order_rate, 2 * fix_order_rate))
        fix = FixServer(acceptor, server.commit, port=fix_port)
        await fix.start()
        ports["fix_port"] = fix.port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(json.dumps(ports), flush=True)
    try:
        await stop.wait()
    finally:
        if fix is not None:
            await fix.stop()
        await server.stop()
        sequencer.journal.close()


class SpawnedServer:
    """A `loadtest.ws_server` process on a free loopback port (use as a context manager)."""

    def __init__(self, data_dir: Path, accounts: int, *, fix: bool = False,
                 fix_store_fsync: bool = False) -> None:
        self.data_dir = data_dir
        self.accounts = accounts
        self.fix = fix
        self.fix_store_fsync = fix_store_fsync
        self.port = 0
        self.fix_port = 0
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        """The websocket URL."""
        return f"ws://127.0.0.1:{self.port}/"

    def __enter__(self) -> SpawnedServer:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "loadtest.ws_server", "--data-dir", str(self.data_dir),
             "--accounts", str(self.accounts), *self._fix_arguments()],
            stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            self._process.wait(timeout=10)
            raise RuntimeError(f"load test server exited with {self._process.returncode}")
        ports = json.loads(line)
        self.port = int(ports["port"])
        self.fix_port = int(ports.get("fix_port", 0))
        return self

    def _fix_arguments(self) -> list[str]:
        if not self.fix:
            return []
        return ["--fix-port", "0", *(["--fix-store-fsync"] if self.fix_store_fsync else [])]

    def peak_rss_mb(self) -> float:
        """The server's peak resident memory so far (VmHWM), in MiB."""
        assert self._process is not None
        status = Path(f"/proc/{self._process.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc status")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def main() -> None:
    """Command line of the server process."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--accounts", type=int, required=True)
    parser.add_argument("--fix-port", type=int, default=None)
    parser.add_argument("--fix-order-rate", type=int, default=100_000)
    parser.add_argument("--fix-store-fsync", action="store_true")
    args = parser.parse_args()
    asyncio.run(serve(args.data_dir, args.port, args.accounts, args.fix_port,
                      args.fix_order_rate, args.fix_store_fsync))


if __name__ == "__main__":
    main()
