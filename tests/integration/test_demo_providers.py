"""`cmx serve --demo` on the embedded chain: the demo providers' nodes are registered on chain,
their agents attest every epoch from a process of their own (one node misbehaving), and the
providers' spot sells become deliveries allocated to their attested nodes."""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from websockets.sync.client import connect

from chain_bridge.chain import ETHER, embedded
from chain_bridge.demo_providers import (
    demo_fleet,
    ensure_node_keys,
    register_demo_nodes,
    spawn_demo_agents,
    stop_demo_agents,
)
from chain_bridge.deployment import deploy
from engine.events import CommandRejected, OrderRejected
from engine.exchange import Exchange
from engine.keys import dev_keys
from engine.recovery import open_data_dir
from engine.sequencer import decode_sequenced
from tests.exchange_helpers import new_exchange
from tests.integration.test_serve import ServeProcess, login
from tests.integration.test_serve_chain import chain_status, wait_for

NODES = 13  # 3 providers x 4 spot underlyings, and the faulty one
FILLS_WANTED = 3


def provider_spot_sells(port: int, wanted: int, timeout: float = 40,
                        ) -> dict[tuple[str, int], str]:
    """Follow the fills of providers 0, 1 and 2 until ``wanted`` spot sells have filled; their
    symbols and trade ids, with the seller."""
    with ExitStack() as stack:
        sockets = []
        for address, key in dev_keys()[:3]:
            ws = stack.enter_context(connect(f"ws://127.0.0.1:{port}/"))
            sockets.append((address, ws))
            login(ws, key)
            ws.send(json.dumps({"op": "subscribe", "id": 2, "channel": "fills"}))
        sells: dict[tuple[str, int], str] = {}
        deadline = time.monotonic() + timeout
        while len(sells) < wanted:
            assert time.monotonic() < deadline, f"only {len(sells)} provider spot sells filled"
            for address, ws in sockets:
                try:
                    message: dict[str, Any] = json.loads(ws.recv(timeout=0.1))
                except TimeoutError:
                    continue
                if message.get("channel") == "fills" and message.get("type") == "update":
                    sells.update(((fill["symbol"], fill["trade_id"]), address)
                                 for fill in message["data"]
                                 if fill["side"] == "sell" and fill["symbol"].endswith(".SPOT"))
        return sells


def replay_refusals(data_dir: Path, exchange: Exchange) -> list[Any]:
    """Replay the journal on a fresh exchange: what was refused."""
    replayed = Exchange(sorted((m.instrument for m in exchange.markets.values()),
                               key=lambda i: i.instrument_id))
    _, journal, _ = open_data_dir(data_dir, lambda: [])
    try:
        refused = []
        for _, record in journal.read(1):
            refused += [e for e in replayed.apply(decode_sequenced(record))
                        if isinstance(e, OrderRejected | CommandRejected)]
    finally:
        journal.close()
    assert replayed.state_hash() == exchange.state_hash()
    return refused


def test_demo_providers_attest_and_their_spot_sells_deliver_from_their_nodes(
        tmp_path: Path, started: list[ServeProcess]) -> None:
    data = tmp_path / "data"
    serve = ServeProcess(data, "--chain", "embedded", "--demo", "--epoch-seconds", "1",
                         "--attest-difficulty", "16", "--fix-port", "-1")
    started.append(serve)
    wait_for("three epochs attested by the honest nodes",
             lambda: chain_status(serve.port)["attestations_accepted"] >= 3 * (NODES - 1),
             timeout=30)
    sells = provider_spot_sells(serve.port, FILLS_WANTED)
    accepted = chain_status(serve.port)["attestations_accepted"]
    wait_for("more attestations", lambda: chain_status(serve.port)["attestations_accepted"]
             >= accepted + NODES - 1, timeout=10)
    assert serve.stop() == 0
    log = serve.log.read_text()
    assert f"demo providers: {NODES} nodes ({NODES} registered now)" in log
    found = re.search(r"demo node agents \(process (\d+)\)", log)
    assert found is not None
    with pytest.raises(ProcessLookupError):  # the server stopped them
        os.kill(int(found.group(1)), 0)

    exchange, journal, _ = open_data_dir(data, lambda: [])
    journal.close()
    keys = ensure_node_keys(data / "chain" / "demo-nodes",
                            demo_fleet(exchange.markets.values()))
    providers = [address for address, _ in dev_keys()[:3]]
    nodes = exchange.uptime.nodes
    assert sorted(nodes) == sorted(k.address for k in keys)  # registered once each
    for key in keys:
        registered = nodes[key.address]
        assert (registered.provider, registered.underlying, registered.units) == \
            (providers[key.node.provider], key.node.underlying, key.node.units)
    # each provider spot sell is a delivery held wholly on the seller's nodes of its underlying
    deliveries = {(d.symbol, d.trade_id): d for d in exchange.deliveries.values()}
    for trade, seller in sells.items():
        delivery = deliveries[trade]
        assert delivery.seller == seller and delivery.allocation, delivery
        assert sum(units for _, units in delivery.allocation) == delivery.qty
        for node, _ in delivery.allocation:
            assert (nodes[node].provider, nodes[node].underlying) == \
                (seller, delivery.underlying)
    assert replay_refusals(data, exchange) == []  # the demo sent nothing to refuse

    agents_log = (data / "chain" / "demo-nodes" / "agents.log").read_text()
    (faulty,) = [k.address for k in keys if k.node.misbehaving]
    honest = [line for line in agents_log.splitlines() if faulty not in line]
    assert [line for line in honest if "attested" in line]
    # the honest nodes attest every epoch they can (an epoch the server announces past its
    # deadline, a busy server's, is late for everyone)
    assert not [line for line in honest if re.search(r"skipped|again instead|wrong", line)]
    assert not [line for line in honest if "refused" in line and "refused: late" not in line]
    faults = [line for line in agents_log.splitlines() if faulty in line and "WARNING" in line]
    assert faults, "the faulty node attested every epoch"
    for line in faults:
        assert re.search(r"skipped|again instead|no stale|wrong beacon|refused: (late|"
                         r"wrong_beacon) ", line), line

    # a restart reuses the keys, registers nothing again, and the nodes attest on
    again = ServeProcess(data, "--chain", "embedded", "--demo", "--epoch-seconds", "1",
                         "--attest-difficulty", "16", "--fix-port", "-1")
    started.append(again)
    wait_for("attestations after the restart", lambda: chain_status(again.port)
             ["attestations_accepted"] >= NODES - 1, timeout=20)
    assert again.stop() == 0
    assert f"demo providers: {NODES} nodes (0 registered now)" in again.log.read_text()
    restarted, journal, _ = open_data_dir(data, lambda: [])
    journal.close()
    assert sorted(restarted.uptime.nodes) == sorted(nodes)


def test_demo_nodes_are_registered_once(tmp_path: Path) -> None:
    chain = embedded()
    operator = Account.from_key("0x" + "a5" * 32)
    chain.fund(operator.address, 10 * ETHER)
    found = deploy(chain, operator, forced_withdrawal_delay_s=600)
    for address, _ in dev_keys()[:3]:
        chain.fund(chain.w3.to_checksum_address(address), 10 * ETHER)
    keys = ensure_node_keys(tmp_path / "keys", demo_fleet(new_exchange().markets.values()))
    assert register_demo_nodes(chain, found, keys) == [k.address for k in keys]
    assert register_demo_nodes(chain, found, keys) == []  # a restart registers nothing
    registry = chain.contract("UptimeRegistry", found.registry)
    for key in keys:
        provider, label, units, *_ = registry.functions.nodes(
            chain.w3.to_checksum_address(key.address)).call()
        assert str(provider).lower() == dev_keys()[key.node.provider][0]
        assert bytes(label).rstrip(b"\0").decode() == key.node.underlying
        assert units == key.node.units


def test_the_agents_process_stops_when_asked_or_when_its_parent_is_gone(
        tmp_path: Path) -> None:
    keys = ensure_node_keys(tmp_path / "keys", demo_fleet(new_exchange().markets.values()))
    log_path = tmp_path / "agents.log"
    unreachable = "ws://127.0.0.1:9/"  # nothing listens: the agents keep reconnecting
    process = spawn_demo_agents(unreachable, [k.path for k in keys[:2]], [keys[-1].path],
                                log_path)
    wait_for("the agents started", lambda: "3 node agents (1 misbehaving)" in
             log_path.read_text(), timeout=20)
    started = time.monotonic()
    assert stop_demo_agents(process) == 0
    assert time.monotonic() - started < 5
    # told that its parent is some other process, it sees itself orphaned and stops
    from chain_bridge.demo_providers import main  # noqa: PLC0415

    assert main(["--url", unreachable, "--parent-pid", str(os.getpid() + 10**6),
                 str(keys[0].path)]) == 0
