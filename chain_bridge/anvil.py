"""Anvil, the development node from the npm package ``@foundry-rs/anvil-linux-amd64``,
started on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from chain_bridge.chain import ChainError

PACKAGE_BINARY = Path("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
START_TIMEOUT_S = 30.0


def anvil_binary() -> Path:
    """The Anvil binary: ``$CMX_ANVIL``, the npm package's under the project, or ``anvil``
    on the PATH."""
    configured = os.environ.get("CMX_ANVIL")
    if configured:
        return Path(configured)
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / PACKAGE_BINARY).is_file():
            return root / PACKAGE_BINARY
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise ChainError("no anvil binary: run `npm ci` in the project (or set CMX_ANVIL)")


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class AnvilNode:
    """One Anvil process; ``state`` keeps its chain across restarts (dumped every second
    and at exit)."""

    def __init__(
        self,
        *,
        port: int | None = None,
        state: Path | None = None,
        block_time: float | None = None,
        log: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.state = state
        self.block_time = block_time
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The node's JSON-RPC address."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and wait until it answers."""
        command = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port), "--silent"]
        if self.state is not None:
            self.state.parent.mkdir(parents=True, exist_ok=True)
            command += ["--state", str(self.state), "--state-interval", "1"]
        if self.block_time is not None:
            command += ["--block-time", str(self.block_time)]
        output = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise ChainError(f"anvil exited with status {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ChainError(f"anvil did not listen on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop it (its state is dumped on the way out)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
