"""`cmx serve` as a user runs it: a separate process, its page, its API, and a restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, connect

from engine.commands import CreditDeposit
from engine.journal import FsyncPolicy
from engine.recovery import verify_data_dir
from gateway.auth import address_of, login_text, sign_text
from gateway.serve import open_sequencer

KEY = "0x" + "33" * 32
SYMBOL = "GPU.H100.F2701"
LISTING = date(2026, 11, 30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServeProcess:
    """A `cmx serve` child process on a free port; without a chain unless ``extra`` names
    one (these journals are funded by `CreditDeposit` commands, not by a chain)."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.port = free_port()
        self.log = data_dir.parent / f"serve-{self.port}.log"
        chain = [] if "--chain" in extra else ["--chain", "none"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(data_dir),
             "--port", str(self.port), "--listing-date", "2026-11-30", *chain, *extra],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))
        deadline = time.monotonic() + 30
        while True:
            try:
                self.status()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(self.log.read_text()) from None
                time.sleep(0.1)

    def status(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/status",
                                    timeout=2) as reply:
            status: dict[str, int] = json.loads(reply.read())
            return status

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory whose journal already holds a deposit for KEY's account."""
    directory = tmp_path / "data"
    sequencer = open_sequencer(directory, fsync=FsyncPolicy.ALWAYS, listing_date=LISTING)
    sequencer.submit(CreditDeposit(1, address_of(KEY), 1_000_000_000_000))
    sequencer.sync()
    sequencer.journal.close()
    return directory


@pytest.fixture
def serve(data_dir: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(data_dir)
    yield process
    if process.proc.poll() is None:
        process.proc.kill()
        process.proc.wait()


def login(ws: ClientConnection, key: str = KEY) -> str:
    """Log in with ``key`` right after connecting; the account."""
    welcome = json.loads(ws.recv(timeout=10))
    account = address_of(key)
    ws.send(json.dumps({"op": "login", "id": "login", "account": account,
                        "nonce": welcome["nonce"],
                        "signature": sign_text(key, login_text(account, welcome["nonce"]))}))
    reply = reply_to(ws, "login")
    assert reply["type"] == "logged_in", reply
    return account


def reply_to(ws: ClientConnection, request_id: object) -> dict[str, object]:
    """The reply with ``request_id``, skipping channel messages."""
    while True:
        message: dict[str, object] = json.loads(ws.recv(timeout=10))
        if "id" in message and message["id"] == request_id:
            return message


def test_the_page_and_status_are_served(serve: ServeProcess) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{serve.port}/", timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/html")
        assert b"CMX" in reply.read()
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{serve.port}/../pyproject.toml", timeout=5)
    assert missing.value.code == 404
    assert serve.status()["last_seq"] == 1


def test_a_restart_keeps_orders_and_client_ids(serve: ServeProcess, data_dir: Path) -> None:
    with connect(f"ws://127.0.0.1:{serve.port}/") as ws:
        login(ws)
        ws.send(json.dumps({"op": "place", "id": 1, "symbol": SYMBOL, "side": "buy",
                            "price": "2.400", "qty": "3", "cl_ord_id": "keep-me"}))
        placed = reply_to(ws, 1)
    assert placed["type"] == "order", placed
    order = placed["order"]
    assert isinstance(order, dict) and order["status"] == "new"
    assert serve.stop() == 0

    restarted = ServeProcess(data_dir)
    try:
        with connect(f"ws://127.0.0.1:{restarted.port}/") as ws:
            login(ws)
            ws.send(json.dumps({"op": "place", "id": 2, "symbol": SYMBOL, "side": "buy",
                                "price": "2.400", "qty": "3", "cl_ord_id": "keep-me"}))
            again = reply_to(ws, 2)
            assert again["type"] == "order"
            assert isinstance(again["order"], dict)
            assert again["order"]["order_id"] == order["order_id"]  # the same order, not a new one
            ws.send(json.dumps({"op": "subscribe", "id": 3, "channel": "book",
                                "symbols": [SYMBOL]}))
            reply_to(ws, 3)
            snapshot = json.loads(ws.recv(timeout=10))
            assert snapshot["bids"] == [["2.400", "3"]]
            ws.send(json.dumps({"op": "cancel", "id": 4, "cl_ord_id": "keep-me"}))
            cancelled = reply_to(ws, 4)
            assert isinstance(cancelled["order"], dict)
            assert cancelled["order"]["status"] == "cancelled"
        assert restarted.stop() == 0
    finally:
        if restarted.proc.poll() is None:
            restarted.proc.kill()
    report = verify_data_dir(data_dir)
    assert report.last_seq == 3  # deposit, place, cancel: the duplicate place never reached it


def test_ctrl_c_leaves_everything_acknowledged_in_the_journal(serve: ServeProcess,
                                                                data_dir: Path) -> None:
    with connect(f"ws://127.0.0.1:{serve.port}/") as ws:
        login(ws)
        for i in range(50):
            ws.send(json.dumps({"op": "place", "id": i, "symbol": SYMBOL, "side": "buy",
                                "price": "2.300", "qty": "1", "cl_ord_id": f"c{i}"}))
        acked = [reply_to(ws, i) for i in range(50)]
    assert all(a["type"] == "order" for a in acked)
    os.kill(serve.proc.pid, signal.SIGINT)
    assert serve.proc.wait(timeout=30) == 0
    assert verify_data_dir(data_dir).last_seq == 51
