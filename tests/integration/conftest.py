"""Integration fixtures: a private redis-server per test (fsync-always AOF in the test's
directory), and the `cmx serve` processes a test started."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """A redis-server on a loopback port that a test can stop and start again."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        """A new client (bytes replies) of this server."""
        return redis.Redis.from_url(self.url)

    def start(self) -> None:
        """Start the server on the same port and directory, and wait until it answers PING."""
        self._process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--logfile", "redis.log",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        with self.client() as client:
            while True:
                with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                    if client.ping():
                        return
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop(kill=True)
                    log = self.directory / "redis.log"
                    raise RuntimeError(
                        f"redis-server did not come up on port {self.port}:\n"
                        + (log.read_text() if log.exists() else "(no log)")
                    )
                time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (a clean shutdown) or SIGKILL (a crash)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self._process.wait(timeout=10)
        self._process = None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server of the test's own, stopped afterwards."""
    assert Path(REDIS_SERVER).exists(), f"{REDIS_SERVER} missing: ./dev test installs it"
    server = RedisServer(tmp_path, _free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def started() -> Iterator[list[Any]]:
    """`cmx serve` processes (`tests.integration.test_serve.ServeProcess`) a test started:
    killed at its end if still running."""
    processes: list[Any] = []
    yield processes
    for process in processes:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()
