"""The node agent: its protocol core without sockets, then the real agent against a small
websocket server that speaks the ``attest`` channel and checks with a real `Collector`;
and ``cmx node-agent keygen``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import stat
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from eth_hash.auto import keccak
from websockets.asyncio.server import Server, ServerConnection, serve

from chain_bridge import cli
from chain_bridge.attestation import Attestation, address_of, digest, recover, target_of
from chain_bridge.collector import NS, Collector, Reason
from chain_bridge.node_agent import (
    AgentCore,
    Conduct,
    EpochNotice,
    NodeAgent,
    Send,
    Solve,
    Work,
    keygen,
    read_key_file,
)

KEY = keccak(b"agent test key")
NODE = address_of(KEY)
CHAIN_ID = 31337
REGISTRY = "0x" + "5f" * 20
EASY = target_of(8)
NEVER = 1  # no digest is below it: a solve that only ends when abandoned
EPOCH_NS = 60 * NS


def notice(epoch: int, target: int = EASY) -> dict[str, Any]:
    return {"channel": "attest", "type": "epoch", "epoch": epoch,
            "beacon": "0x" + keccak(f"beacon {epoch}".encode()).hex(),
            "target": f"0x{target:064x}", "deadline_ns": time.time_ns() + EPOCH_NS,
            "chain_id": CHAIN_ID, "registry": REGISTRY}


def encode(message: dict[str, Any]) -> bytes:
    return msgspec.json.encode(message)


def solve_now(work: Work) -> tuple[int, bytes]:
    solution = work.solve()
    assert solution is not None
    return solution


# --- the core, without sockets ------------------------------------------------------------


def test_subscribes_solves_signs_and_submits(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "cmx.node_agent")
    core = AgentCore(KEY)
    assert core.node == NODE
    assert core.connected() == [Send({"op": "subscribe", "channel": "attest", "id": 1})]
    assert core.receive(encode({"type": "subscribed", "id": 1, "channel": "attest"})) == []
    (action,) = core.receive(encode(notice(5)))
    assert isinstance(action, Solve)
    assert action.work.node == NODE and action.work.notice.epoch == 5
    nonce, found = solve_now(action.work)
    (send,) = core.solved(action.work, nonce, found, 0.25)
    assert isinstance(send, Send)
    message = send.message
    assert message == {"op": "attest", "id": 2, "node": NODE, "epoch": 5,
                       "beacon": notice(5)["beacon"], "nonce": nonce,
                       "signature": message["signature"]}
    assert found == digest(CHAIN_ID, REGISTRY, NODE, 5, bytes.fromhex(message["beacon"][2:]),
                           nonce)
    assert recover(found, bytes.fromhex(message["signature"][2:])) == NODE
    # what the agent sends is an attestation the collector accepts
    collector = Collector(chain_id=CHAIN_ID, registry=REGISTRY, target=EASY, epoch_ns=EPOCH_NS)
    collector.register(NODE, "0x" + "01" * 20, "GPU.H100", 8)
    collector.open_epoch(5, notice(5)["beacon"], 0, EPOCH_NS)
    att = msgspec.convert({k: v for k, v in message.items() if k not in ("op", "id")},
                          Attestation)
    assert collector.submit(att, 0).accepted
    assert "epoch 5 solved in 0.250 s" in caplog.text
    assert core.receive(encode({"type": "attested", "id": 2, "epoch": 5})) == []
    assert "epoch 5 attested" in caplog.text
    assert core.answered == 5 and core.attestation is None
    # the snapshot of the same epoch after a reconnect: nothing more to do
    assert core.connected() == [Send({"op": "subscribe", "channel": "attest", "id": 1})]
    assert core.receive(encode(notice(5))) == []


def test_a_newer_epoch_abandons_the_solve_and_old_ones_are_ignored() -> None:
    core = AgentCore(KEY)
    (first,) = core.receive(encode(notice(5)))
    (second,) = core.receive(encode(notice(6)))
    assert isinstance(first, Solve) and isinstance(second, Solve)
    assert second.work.notice.epoch == 6
    # epoch 5's solution arrives late: it is not sent
    assert core.solved(first.work, *solve_now(first.work), 1.0) == []
    assert core.receive(encode(notice(5))) == []
    assert core.receive(encode(notice(6))) == []  # the same epoch again (a later deadline)
    # the same epoch number with another beacon: the server's chain was reset
    (third,) = core.receive(encode({**notice(6), "beacon": "0x" + "ee" * 32}))
    assert isinstance(third, Solve) and third.work.notice.beacon == "0x" + "ee" * 32
    assert core.solved(second.work, *solve_now(second.work), 1.0) == []
    (send,) = core.solved(third.work, *solve_now(third.work), 1.0)
    assert isinstance(send, Send) and send.message["epoch"] == 6


def test_an_unanswered_attestation_is_sent_again_after_a_reconnect(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "cmx.node_agent")
    core = AgentCore(KEY)
    (solve,) = core.receive(encode(notice(7)))
    assert isinstance(solve, Solve)
    (send,) = core.solved(solve.work, *solve_now(solve.work), 1.0)
    assert isinstance(send, Send)
    core.disconnected()
    # the reply to the lost request never comes; a stray one with its id is ignored
    _, again = core.connected()
    assert isinstance(again, Send)
    assert again.message == {**send.message, "id": send.message["id"] + 1}
    assert core.receive(encode({"type": "attested", "id": send.message["id"], "epoch": 7})) \
        == []
    assert core.attestation is not None
    # the restarted server had it already
    assert core.receive(encode({"type": "error", "id": again.message["id"], "code": "duplicate",
                                "msg": "already attested"})) == []
    assert "epoch 7 was already attested" in caplog.text
    assert core.attestation is None and core.answered == 7


def test_refusals_and_odd_messages_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "cmx.node_agent")
    core = AgentCore(KEY)
    (solve,) = core.receive(encode(notice(8)))
    assert isinstance(solve, Solve)
    (send,) = core.solved(solve.work, *solve_now(solve.work), 1.0)
    assert isinstance(send, Send)
    refusal = {"type": "error", "id": send.message["id"], "code": "late", "msg": "too late"}
    assert core.receive(encode(refusal)) == []
    assert "epoch 8 refused: late (too late)" in caplog.text
    assert core.receive(encode({"type": "error", "id": 1, "code": "invalid_request",
                                "msg": "no such channel"})) == []
    assert "subscribing to the attest channel failed: invalid_request" in caplog.text
    for odd in (b"not json", b"[1, 2]", encode({"type": "welcome", "server": "cmx"}),
                encode({**notice(9), "beacon": "0x12"}), encode({"type": "attested", "id": "x"})):
        assert core.receive(odd) == []
    assert core.answered == 8 and core.work == solve.work


def test_an_agent_given_a_conduct_misbehaves_and_is_refused_with_the_reasons(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "cmx.node_agent")
    plan = {1: Conduct.ATTEST, 2: Conduct.STALE, 3: Conduct.ATTEST, 4: Conduct.STALE,
            5: Conduct.WRONG_BEACON, 6: Conduct.SKIP, 7: Conduct.ATTEST}
    core = AgentCore(KEY, plan.__getitem__)
    collector = Collector(chain_id=CHAIN_ID, registry=REGISTRY, target=EASY, epoch_ns=EPOCH_NS)
    collector.register(NODE, "0x" + "01" * 20, "GPU.H100", 8)
    core.connected()
    verdicts: dict[int, str] = {}
    for epoch in plan:
        collector.open_epoch(epoch, notice(epoch)["beacon"], epoch * EPOCH_NS,
                             (epoch + 1) * EPOCH_NS)
        collector.forget(epoch - 1)
        actions = core.receive(encode(notice(epoch)))
        if actions and isinstance(actions[0], Solve):
            work = actions[0].work
            actions = core.solved(work, *solve_now(work), 0.1)
        for action in actions:
            assert isinstance(action, Send)
            fields = {k: v for k, v in action.message.items() if k not in ("op", "id")}
            verdict = collector.submit(msgspec.convert(fields, Attestation),
                                       epoch * EPOCH_NS + 1)
            reply = {"type": "attested", "id": action.message["id"], "epoch": fields["epoch"]} \
                if verdict.accepted else {"type": "error", "id": action.message["id"],
                                          "code": verdict.reason, "msg": verdict.detail}
            assert core.receive(encode(reply)) == []
            verdicts[epoch] = verdict.reason or "attested"
        assert core.receive(encode(notice(epoch))) == []  # a reconnect changes nothing
    # epoch 2 had no attestation two epochs old to send again; epoch 4 sent epoch 1's
    assert verdicts == {1: "attested", 3: "attested", 4: Reason.LATE,
                        5: Reason.WRONG_BEACON, 7: "attested"}
    assert "epoch 2: not attested (no stale attestation to send)" in caplog.text
    assert "epoch 4: sending the attestation of epoch 1 again instead" in caplog.text
    assert "epoch 1 refused: late" in caplog.text
    assert "epoch 5: solving against a wrong beacon" in caplog.text
    assert "epoch 5 refused: wrong_beacon" in caplog.text
    assert "epoch 6: skipped, not attested" in caplog.text
    assert collector.attested(7) == {NODE} and core.answered == 7
    # each line names the node
    assert {r.name for r in caplog.records} == {f"cmx.node_agent.{NODE}"}


# --- the real agent on a websocket --------------------------------------------------------


class AttestServer:
    """The ``attest`` channel as the gateway serves it, checked by a real collector."""

    def __init__(self) -> None:
        self.collector = Collector(chain_id=CHAIN_ID, registry=REGISTRY, target=EASY,
                                   epoch_ns=EPOCH_NS)
        self.collector.register(NODE, "0x" + "01" * 20, "GPU.H100", 8)
        self.notice: dict[str, Any] | None = None
        self.subscribers: set[ServerConnection] = set()
        self.verdicts: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.attempts: list[int] = []

    async def open_epoch(self, epoch: int, target: int = EASY) -> None:
        self.notice = notice(epoch, target)
        self.collector.target = target
        self.collector.open_epoch(epoch, self.notice["beacon"], time.time_ns(),
                                  self.notice["deadline_ns"])
        for ws in list(self.subscribers):
            await ws.send(encode(self.notice).decode())

    async def handle(self, ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "welcome", "server": "cmx", "version": 1}))
        try:
            async for raw in ws:
                request = json.loads(raw)
                if request["op"] == "subscribe":
                    await ws.send(json.dumps({"type": "subscribed", "id": request["id"],
                                              "channel": "attest"}))
                    self.subscribers.add(ws)
                    if self.notice is not None:
                        await ws.send(encode(self.notice).decode())
                elif request["op"] == "attest":
                    await self.attest(ws, request)
        finally:
            self.subscribers.discard(ws)

    async def attest(self, ws: ServerConnection, request: dict[str, Any]) -> None:
        fields = {k: v for k, v in request.items() if k not in ("op", "id")}
        self.attempts.append(fields["epoch"])
        verdict = self.collector.submit(msgspec.convert(fields, Attestation), time.time_ns())
        if verdict.reason is None:
            reply = {"type": "attested", "id": request["id"], "epoch": fields["epoch"]}
        else:
            reply = {"type": "error", "id": request["id"], "code": verdict.reason.value,
                     "msg": verdict.detail}
        await ws.send(json.dumps(reply))
        await self.verdicts.put((fields["epoch"], verdict.reason or "attested"))

    async def next_verdict(self) -> tuple[int, str]:
        return await asyncio.wait_for(self.verdicts.get(), 20)


@asynccontextmanager
async def attest_server(server: AttestServer, port: int = 0) -> AsyncIterator[Server]:
    async with serve(server.handle, "127.0.0.1", port) as ws_server:
        yield ws_server


def port_of(ws_server: Server) -> int:
    port: int = next(iter(ws_server.sockets)).getsockname()[1]
    return port


@asynccontextmanager
async def running(agent: NodeAgent) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(agent.run())
    try:
        yield task
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)


def test_the_agent_attests_each_epoch_and_survives_a_server_restart() -> None:
    async def scenario() -> None:
        server = AttestServer()
        await server.open_epoch(1)
        async with attest_server(server) as ws_server:
            port = port_of(ws_server)
            agent = NodeAgent(KEY, f"ws://127.0.0.1:{port}/")
            async with running(agent):
                assert await server.next_verdict() == (1, "attested")
                await server.open_epoch(2)
                assert await server.next_verdict() == (2, "attested")
                ws_server.close()
                await ws_server.wait_closed()
                # the server is down through at least one failed reconnection
                await asyncio.sleep(1.0)
                restarted = AttestServer()
                await restarted.open_epoch(3)
                async with attest_server(restarted, port):
                    assert await restarted.next_verdict() == (3, "attested")
                    assert agent.core.answered == 3
        assert server.attempts == [1, 2] and restarted.attempts == [3]

    asyncio.run(scenario())


def test_a_newer_epoch_stops_the_running_solve() -> None:
    async def scenario() -> None:
        server = AttestServer()
        await server.open_epoch(1, target=NEVER)
        async with attest_server(server) as ws_server:
            agent = NodeAgent(KEY, f"ws://127.0.0.1:{port_of(ws_server)}/")
            async with running(agent):
                while agent.solver_thread is None:
                    await asyncio.sleep(0.01)
                hopeless = agent.solver_thread
                await asyncio.sleep(0.3)
                assert hopeless.is_alive()
                await server.open_epoch(2)
                assert await server.next_verdict() == (2, "attested")
                await asyncio.to_thread(hopeless.join, 5)
                assert not hopeless.is_alive()
        assert server.attempts == [2]

    asyncio.run(scenario())


def test_the_agent_keeps_retrying_until_a_server_appears() -> None:
    async def scenario() -> None:
        async with attest_server(AttestServer()) as probe:
            port = port_of(probe)  # a free port, closed again
        agent = NodeAgent(KEY, f"ws://127.0.0.1:{port}/")
        async with running(agent):
            await asyncio.sleep(1.0)  # refused at 0, 0.5 s (and 1.5 s)
            server = AttestServer()
            await server.open_epoch(4)
            async with attest_server(server, port):
                assert await server.next_verdict() == (4, "attested")

    asyncio.run(scenario())


def test_stopping_the_agent_stops_its_solve() -> None:
    async def scenario() -> threading.Thread:
        server = AttestServer()
        await server.open_epoch(1, target=NEVER)
        async with attest_server(server) as ws_server:
            agent = NodeAgent(KEY, f"ws://127.0.0.1:{port_of(ws_server)}/")
            async with running(agent):
                while agent.solver_thread is None:
                    await asyncio.sleep(0.01)
            thread = agent.solver_thread
            assert thread is not None
            return thread

    thread = asyncio.run(scenario())
    thread.join(5)
    assert not thread.is_alive()


# --- key files ----------------------------------------------------------------------------


def run_cmx(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="cmx")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.handler(args)
    return status


def test_keygen_makes_a_private_key_file_once(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.key"
    assert run_cmx("node-agent", "keygen", str(path)) == 0
    address = capsys.readouterr().out.strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = read_key_file(path)
    assert address == address_of(key)
    assert run_cmx("node-agent", "keygen", str(path)) == 1
    assert "exists" in capsys.readouterr().err
    assert read_key_file(path) == key
    assert keygen(tmp_path / "other.key") != address


def test_key_files_are_checked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    loose = tmp_path / "loose.key"
    loose.write_text("0x" + KEY.hex() + "\n")
    loose.chmod(0o644)
    assert read_key_file(loose) == KEY
    assert "can be read by other users" in caplog.text
    bad = tmp_path / "bad.key"
    bad.write_text("0x1234\n")
    with pytest.raises(ValueError, match="secp256k1"):
        read_key_file(bad)
    assert run_cmx("node-agent", "--key-file", str(bad), "--url", "ws://127.0.0.1:1/") == 2
    assert run_cmx("node-agent", "--url", "ws://127.0.0.1:1/") == 2


def test_epoch_notices_decode() -> None:
    decoded = msgspec.convert(notice(3), EpochNotice)
    assert decoded.epoch == 3 and int(decoded.target, 16) == EASY
