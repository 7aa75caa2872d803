"""Physical delivery settled from uptime attestations, end to end: `cmx serve` on the embedded
chain with 1 s epochs and an 8 s spot delivery window, three providers with two nodes each
registered on chain, one `cmx node-agent` process per node, a spot trade over the websocket
API, and one node's agent stopped halfway through the window. The journal then shows the
delivery settled pro rata to the attested node-epochs, to the micro-USDC, with the money
conserved; replaying it reaches the state the server shut down with; and bad attestations
sent through the websocket API come back with their reason codes."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey
from websockets.sync.client import connect

from chain_bridge.attestation import digest as attestation_digest
from chain_bridge.attestation import sign, solve
from chain_bridge.node_agent import keygen, read_key_file
from chain_bridge.wallet import deposit, register_node
from engine.events import (
    AttestationRecorded,
    DeliveryAllocated,
    DeliveryOpened,
    DeliverySettled,
    EpochOpened,
    ExchangeEvent,
    NodeDeregistered,
)
from engine.exchange import Exchange
from engine.journal import read_records
from engine.keys import dev_keys, read_key
from engine.recovery import journal_path, restore_snapshot, snapshot_store, verify_data_dir
from engine.sequencer import decode_sequenced
from gateway.cli import main as cmx_main
from tests.integration.test_serve import ServeProcess, login, reply_to
from tests.integration.test_serve_chain import chain_status, wait_for

NS = 1_000_000_000
WINDOW_S = 8
UNITS = 2  # GPUs per node
PRICE = "2.500"
PRODUCTS = f"""
version = 1

[[products]]
underlying = "GPU.H100"
kind = "spot"
description = "NVIDIA H100 SXM 80 GB: 1 GPU for the next whole {WINDOW_S} s (tests)"
quantity_unit = "GPU-window"
price_unit = "USDC per GPU-window"
quote_currency = "USDC"
tick = "0.001"
lot_size = "1"
price_precision = 3
size_precision = 0
multiplier = 1
price_band_bp = 1500
reference_price = "2.50"
buyer_premium_lock_bp = 10000
seller_bond_bp = 2500
maker_fee_bp = 0
taker_fee_bp = 5
settlement = "physical"
delivery_window_seconds = {WINDOW_S}
"""


class Agents:
    """`cmx node-agent` processes, one per key file, logging to files."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, node: str, key_file: Path, port: int) -> None:
        self.logs[node] = key_file.with_suffix(".log")
        self.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "node-agent", "--key-file", str(key_file),
             "--url", f"ws://127.0.0.1:{port}/"],
            stdout=subprocess.DEVNULL, stderr=self.logs[node].open("wb"))

    def attested(self, node: str) -> bool:
        return " attested" in self.logs[node].read_text()

    def stop(self, node: str) -> None:
        proc = self.procs[node]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for node, proc in self.procs.items():
            if proc.poll() is None:
                self.stop(node)


@pytest.fixture
def agents() -> Iterator[Agents]:
    running = Agents()
    yield running
    running.stop_all()


def place(port: int, key: str, side: str, qty: int) -> dict[str, Any]:
    with connect(f"ws://127.0.0.1:{port}/") as ws:
        login(ws, key)
        ws.send(json.dumps({"op": "place", "id": 1, "symbol": "GPU.H100.SPOT", "side": side,
                            "price": PRICE, "qty": str(qty), "cl_ord_id": f"{side}-{qty}"}))
        return reply_to(ws, 1)


def journal_events(data_dir: Path) -> tuple[Exchange, list[ExchangeEvent]]:
    """Every event of the data directory's journal, replayed from its first snapshot."""
    exchange = restore_snapshot(snapshot_store(data_dir).snapshots()[0])
    events: list[ExchangeEvent] = []
    for _, record in read_records(journal_path(data_dir)):
        events += exchange.apply(decode_sequenced(record))
    return exchange, events


def test_a_delivery_settles_pro_rata_to_the_node_epochs_attested(
        tmp_path: Path, agents: Agents) -> None:
    products = tmp_path / "products.toml"
    products.write_text(PRODUCTS)
    data_dir = tmp_path / "data"
    serve = ServeProcess(data_dir, "--chain", "embedded", "--fix-port", "-1",
                         "--instruments", str(products), "--epoch-seconds", "1",
                         "--attest-difficulty", "16", "--batch-interval", "1")
    try:
        settled_run(serve, tmp_path, agents)
        assert chain_status(serve.port)["reconciled"] is True
    finally:
        agents.stop_all()
        if serve.proc.poll() is None:
            assert serve.stop() == 0
    check_journal(data_dir)


def settled_run(serve: ServeProcess, tmp_path: Path, agents: Agents) -> None:
    url = f"ws://127.0.0.1:{serve.port}/chain"
    keys = [key for _, key in dev_keys()]
    providers, buyer = keys[1:4], keys[6]
    for key in [*providers, buyer]:
        deposit(url, read_key(key), 1_000 * 10**6)
    nodes: dict[str, str] = {}  # node -> provider key
    for p, provider in enumerate(providers):
        for n in range(2):
            key_file = tmp_path / f"node-{p}-{n}.key"
            node = keygen(key_file).lower()
            register_node(url, read_key(provider), node, "GPU.H100", UNITS)
            nodes[node] = provider
            agents.start(node, key_file, serve.port)
    wait_for("every node's first attestation",
             lambda: all(agents.attested(node) for node in nodes), timeout=90)
    wait_for("the deposits credited",
             lambda: chain_status(serve.port)["last_credited_deposit_id"] >= 5, timeout=60)
    for provider in providers:
        placed = place(serve.port, provider, "sell", 2 * UNITS)
        assert placed["type"] == "order", placed
    bought = place(serve.port, buyer, "buy", 3 * 2 * UNITS)
    assert bought["type"] == "order" and bought["order"]["status"] == "filled", bought
    windows = {(d["window_start"], d["window_end"]) for d in open_deliveries(serve.port)}
    assert len(windows) == 1, windows  # one fill: one window for the three deliveries
    ((window_start, window_end),) = windows
    # halfway through the window, the first node of the first provider goes down
    stopped = min(node for node, provider in nodes.items() if provider == providers[0])
    time.sleep(max(0.0, (window_start + WINDOW_S * NS // 2 - time.time_ns()) / NS))
    agents.stop(stopped)
    (tmp_path / "stopped").write_text(f"{stopped} {time.time_ns()}")
    # a provider gives notice for a node whose window is sold: not before the window's end
    leaving = max(node for node, provider in nodes.items() if provider == providers[2])
    give_notice(serve.port, providers[2], leaving, window_end, tmp_path)
    bad_attestations_get_their_reason_codes(serve.port, tmp_path, keys[4])
    # the window ends, the engine waits one epoch for late attestations, the clock settles
    time.sleep(max(0.0, (window_end - time.time_ns()) / NS))
    wait_for("the deliveries settled", lambda: open_deliveries(serve.port) == [], timeout=60)


def open_deliveries(port: int) -> list[dict[str, Any]]:
    """The deliveries from nodes not settled yet, as `/api/providers` lists them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/providers", timeout=5) as reply:
        deliveries: list[dict[str, Any]] = json.loads(reply.read())["deliveries"]
        return deliveries


def give_notice(port: int, provider: str, node: str, window_end: int, tmp_path: Path) -> None:
    """`cmx provider deregister-node` refuses a time inside the window sold on the node and
    by default deregisters it from past the windows it may still sell."""
    command = ["provider", "deregister-node", "--port", str(port), "--key", provider,
               "--node", node]
    early = datetime.fromtimestamp(window_end // NS - 2, UTC).isoformat()
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        refused = cmx_main([*command, "--at", early])
        given = cmx_main(command)
    assert refused == 1 and "deliveries already sold hold" in err.getvalue(), err.getvalue()
    assert given == 0, err.getvalue()
    # from the window's end, or later if the development chain's clock is already past it
    # (it mines a block per transaction, at least a second apart)
    said = out.getvalue().split()
    assert said[:4] == ["node", node, "deregistered", "from"], said
    effective = datetime.fromisoformat(said[4].rstrip(":")).timestamp() * NS
    # and past the windows the node may sell until the exchange learns of it (ten minutes)
    assert effective >= window_end and effective >= time.time_ns() + 9 * 60 * NS
    (tmp_path / "notice").write_text(f"{node} {int(effective)}")


def bad_attestations_get_their_reason_codes(port: int, tmp_path: Path, provider: str) -> None:
    """A node the test attests for itself, through the websocket API: one good attestation,
    then the forged, replayed, wrong-beacon, wrong-key, late, unknown-node and above-target
    ones, each refused with its code, to that client only."""
    nodes, keys = [], []
    for name in ("silent", "own"):  # the first never gets an attestation accepted
        key_file = tmp_path / f"{name}-node.key"
        nodes.append(keygen(key_file).lower())
        keys.append(read_key_file(key_file))
        register_node(f"ws://127.0.0.1:{port}/chain", read_key(provider), nodes[-1],
                      "GPU.H100", 1)
    silent, node = nodes
    with connect(f"ws://127.0.0.1:{port}/") as ws:
        ws.recv(timeout=10)  # welcome
        ws.send(json.dumps({"op": "subscribe", "channel": "attest", "id": "sub"}))
        notices: list[dict[str, Any]] = []
        request = 0

        def attest(**fields: Any) -> dict[str, Any]:
            nonlocal request
            request += 1
            ws.send(json.dumps({"op": "attest", "id": request, **fields}))
            while True:
                message: dict[str, Any] = json.loads(ws.recv(timeout=10))
                if message.get("type") == "epoch":
                    notices.append(message)
                elif message.get("id") == request:
                    return message

        def valid(notice: dict[str, Any], node: str, signer: bytes) -> dict[str, Any]:
            beacon = bytes.fromhex(notice["beacon"][2:])
            solved = solve(notice["chain_id"], notice["registry"], node, notice["epoch"],
                           beacon, int(notice["target"], 16))
            assert solved is not None
            nonce, digest = solved
            return {"node": node, "epoch": notice["epoch"], "beacon": notice["beacon"],
                    "nonce": nonce, "signature": sign(signer, digest)}

        # the node is known once the bridge has sequenced its registration: until then,
        # unknown_node (an epoch later, the next notice)
        deadline = time.monotonic() + 30
        while True:
            while not notices:
                message = json.loads(ws.recv(timeout=10))
                if message.get("type") == "epoch":
                    notices.append(message)
            good = valid(notices[-1], node, keys[1])
            first = attest(**good)
            if first["type"] == "attested":
                break
            assert first["code"] == "unknown_node", first
            assert time.monotonic() < deadline, "the node never became known"
            current = notices[-1]["epoch"]
            while notices[-1]["epoch"] == current:
                message = json.loads(ws.recv(timeout=10))
                if message.get("type") == "epoch":
                    notices.append(message)
        notice = notices[-1]
        fresh = valid(notice, silent, keys[0])  # refused below: never a duplicate
        codes = {
            "replayed": attest(**good),
            "forged": attest(**{**fresh, "signature": "0x" + "11" * 65}),
            "wrong_key": attest(**valid(notice, silent, PrivateKey().secret)),
            "wrong_beacon": attest(**{**fresh, "beacon": "0x" + "ab" * 32}),
            "late": attest(**{**fresh, "epoch": notice["epoch"] - 2}),
            "unknown_node": attest(**{**fresh, "node": "0x" + "12" * 20}),
            "above_target": attest(**{**fresh, "nonce": next(
                n for n in range(1000) if int.from_bytes(attestation_digest(
                    notice["chain_id"], notice["registry"], silent, notice["epoch"],
                    bytes.fromhex(notice["beacon"][2:]), n), "big")
                >= int(notice["target"], 16))}),
            "negative_nonce": attest(**{**fresh, "nonce": -1}),
            "short_signature": attest(**{**fresh, "signature": "0x1234"}),
        }
    assert {name: reply.get("code") for name, reply in codes.items()} == {
        "replayed": "duplicate", "forged": "bad_signature", "wrong_key": "bad_signature",
        "wrong_beacon": "wrong_beacon", "late": "late", "unknown_node": "unknown_node",
        "above_target": "above_target", "negative_nonce": "invalid_request",
        "short_signature": "invalid_request"}
    assert all(reply["type"] == "error" and reply["msg"] for reply in codes.values())


def check_journal(data_dir: Path) -> None:
    stopped, stopped_at = (data_dir.parent / "stopped").read_text().split()
    exchange, events = journal_events(data_dir)
    epochs = {e.epoch: e for e in events if isinstance(e, EpochOpened)}
    attested = {(e.node, e.epoch) for e in events if isinstance(e, AttestationRecorded)}
    opened = {e.delivery_id: e for e in events if isinstance(e, DeliveryOpened)}
    allocation: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for e in events:
        if isinstance(e, DeliveryAllocated):
            allocation[e.delivery_id].append((e.node, e.units))
    settled = {e.delivery_id: e for e in events if isinstance(e, DeliverySettled)}
    leaving, effective = (data_dir.parent / "notice").read_text().split()
    assert [(e.node, e.effective_ts) for e in events if isinstance(e, NodeDeregistered)] == \
        [(leaving, int(effective))]
    assert len(opened) == 3 and settled.keys() == opened.keys()
    stopped_fraction = None
    for delivery_id, delivery in opened.items():
        window = [n for n, e in epochs.items()
                  if delivery.window_start <= e.start_ts < delivery.window_end]
        assert len(window) >= WINDOW_S // 2  # an epoch a second (a busy machine may skip)
        nodes = allocation[delivery_id]
        assert sorted(units for _, units in nodes) == [UNITS, UNITS]
        delivered = sum(units * sum((node, n) in attested for n in window)
                        for node, units in nodes)
        required = delivery.qty * len(window)
        outcome = settled[delivery_id]
        assert (outcome.delivered, outcome.required) == (delivered, required)
        # pro rata, to the micro-USDC, computed here from the contract's terms
        earned = delivery.premium * delivered // required
        fee = earned * 0 // 10_000  # the sellers rested: maker fee, 0 bp
        assert outcome.seller_fee == fee
        assert outcome.seller_paid == earned - fee
        assert outcome.buyer_refund == delivery.premium - earned
        assert outcome.buyer_compensation == delivery.bond * (required - delivered) // required
        assert outcome.bond_released == delivery.bond - outcome.buyer_compensation
        if stopped in dict(nodes):
            stopped_fraction = (delivered, required)
            up = [n for n in window if (stopped, n) in attested]
            assert up and all(epochs[n].start_ts < int(stopped_at) for n in up)
            assert len(up) < len(window)  # down for the second half
    assert stopped_fraction is not None and stopped_fraction[0] < stopped_fraction[1]
    # money: nothing made or lost, escrow all released
    assert exchange.ledger.conserved()
    assert exchange.deliveries == {}
    assert all(b.escrow == 0 for b in exchange.ledger.accounts.values())
    # the whole flow replayed from the journal reaches the state the server shut down with
    report = verify_data_dir(data_dir)
    final = snapshot_store(data_dir).snapshots()[-1]
    assert report.snapshots_checked >= 1 and final.seq == report.last_seq
    assert report.state_hash == final.state_hash == exchange.state_hash()
