"""`cmx node-agent`: the program a provider runs on each node. It follows the exchange's
epochs over the websocket API, solves each epoch's proof of work, signs it with the node key
and submits it; it survives reconnects and server restarts and logs every solve.

Protocol (the gateway's ``attest`` channel):

* after connecting: ``{"op": "subscribe", "channel": "attest", "id": 1}``;
* the server announces each epoch (a snapshot on subscribe, then one per new epoch):
  ``{"channel": "attest", "type": "epoch", "epoch": N, "beacon": "0x..", "target": "0x..",
  "deadline_ns": T, "chain_id": C, "registry": "0x.."}``;
* the agent answers with ``{"op": "attest", "id": K, "node": .., "epoch": N, "beacon": ..,
  "nonce": n, "signature": ..}``;
* and the server replies ``{"type": "attested", "id": K, "epoch": N}`` or
  ``{"type": "error", "id": K, "code": "<reason>", "msg": ".."}``.

`AgentCore` is the protocol without I/O (epoch in → work to do, solution in → message to
send, reply in → log line); `NodeAgent` runs it on a websocket with the solving in a worker
thread, so the connection stays alive while a solve runs. Each agent logs as
``cmx.node_agent.<node address>``.

An honest agent attests every epoch. Given a ``conduct`` (epoch → `Conduct`), an agent can
also misbehave on purpose, as the demo's faulty node does (`chain_bridge.demo_providers`):
skip an epoch, send a stale attestation again, or solve against a wrong beacon; the server
refuses the last two with their reason codes (``late``, ``wrong_beacon``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from coincurve import PrivateKey

from chain_bridge.attestation import Address, Hash32, Uint64, address_of, sign, solve

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

log = logging.getLogger("cmx.node_agent")

SUBSCRIBE_ID = 1
INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
SIGNED_KEPT = 3
"""Attestations an agent keeps after signing them (a stale one is sent from these)."""


class Conduct(StrEnum):
    """What an agent does with a new epoch. An honest agent always attests it; the others are
    faults given to a node on purpose, for demonstrations and tests."""

    ATTEST = "attest"
    SKIP = "skip"
    """Send nothing: the epoch goes unattested."""
    STALE = "stale"
    """Send again an attestation of an epoch before the previous one (refused ``late``);
    with none in hand, send nothing."""
    WRONG_BEACON = "wrong_beacon"
    """Solve and sign against a beacon that is not the epoch's (refused ``wrong_beacon``)."""


class EpochNotice(msgspec.Struct, frozen=True):
    """The server's announcement of an epoch to attest (the ``type``/``channel`` keys and
    anything else in the message are not needed)."""

    epoch: Uint64
    beacon: Hash32
    target: Hash32
    deadline_ns: int
    chain_id: int
    registry: Address


class Reply(msgspec.Struct, frozen=True):
    """A reply to one of the agent's requests."""

    type: str
    id: int | None = None
    code: str = ""
    msg: str = ""


class Work(msgspec.Struct, frozen=True):
    """One solve: the node's proof of work for ``notice``'s epoch."""

    node: str
    notice: EpochNotice

    def solve(self, stop: threading.Event | None = None) -> tuple[int, bytes] | None:
        """The nonce and digest (None if ``stop`` was set first)."""
        n = self.notice
        return solve(n.chain_id, n.registry, self.node, n.epoch, bytes.fromhex(n.beacon[2:]),
                     int(n.target, 16), stop=stop)


class Send(msgspec.Struct, frozen=True):
    """Send ``message`` to the server (dropped if the connection is down: `AgentCore`
    sends what is still unanswered when it comes back)."""

    message: dict[str, Any]


class Solve(msgspec.Struct, frozen=True):
    """Start solving ``work``, abandoning any solve in progress."""

    work: Work


Action = Send | Solve


class AgentCore:
    """The agent's protocol state: the newest epoch, its solution, the request awaiting a
    reply. Fed messages and solutions, it answers with `Action`s and logs what happens.
    ``conduct`` says what to do with each new epoch (default: attest every one)."""

    def __init__(self, key: bytes, conduct: Callable[[int], Conduct] | None = None) -> None:
        self._key = key
        self.node = address_of(key)
        self.log = log.getChild(self.node)
        self.conduct = conduct
        self.notice: EpochNotice | None = None
        """The newest epoch announced, as announced."""
        self.work: Work | None = None
        self.attestation: dict[str, Any] | None = None
        """The current epoch's signed attestation, until the server answers it."""
        self.answered: int | None = None
        """The newest epoch the server has answered (attested or refused)."""
        self._next_id = SUBSCRIBE_ID + 1
        self._waiting: dict[int, int] = {}  # request id -> epoch
        self._signed: list[dict[str, Any]] = []  # the last SIGNED_KEPT, oldest first

    def connected(self) -> list[Action]:
        """A connection is open: subscribe, and resend an attestation left unanswered."""
        actions: list[Action] = [
            Send({"op": "subscribe", "channel": "attest", "id": SUBSCRIBE_ID})]
        if self.attestation is not None:
            actions.append(self._send(self.attestation))
        return actions

    def disconnected(self) -> None:
        """The connection is gone: replies to what was sent will not come."""
        self._waiting.clear()

    def receive(self, raw: bytes | str) -> list[Action]:
        """One message from the server."""
        try:
            message = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            self.log.warning("not JSON from the server: %.200r", raw)
            return []
        if not isinstance(message, dict):
            return []
        try:
            if message.get("channel") == "attest" and message.get("type") == "epoch":
                return self._epoch(msgspec.convert(message, EpochNotice))
            if message.get("type") in ("attested", "error"):
                self._reply(msgspec.convert(message, Reply))
        except msgspec.ValidationError as exc:
            self.log.warning("unexpected message from the server (%s): %.200r", exc, raw)
        return []

    def solved(self, work: Work, nonce: int, found: bytes, seconds: float) -> list[Action]:
        """The worker found ``nonce`` for ``work`` in ``seconds``: sign and submit it, if
        that is still the epoch to attest."""
        if work != self.work:
            return []
        epoch = work.notice.epoch
        self.log.info("epoch %d solved in %.3f s (nonce %d, %.0f hashes/s)", epoch, seconds,
                      nonce, (nonce + 1) / max(seconds, 1e-9))
        self.attestation = {"node": self.node, "epoch": epoch, "beacon": work.notice.beacon,
                            "nonce": nonce, "signature": sign(self._key, found)}
        self._signed = [*self._signed[1 - SIGNED_KEPT:], self.attestation]
        return [self._send(self.attestation)]

    def _epoch(self, notice: EpochNotice) -> list[Action]:
        current = self.notice
        if current is not None and (notice.epoch < current.epoch
                                    or _same_puzzle(notice, current)):
            return []  # an old epoch, or the snapshot of the one in hand after a reconnect
        if notice.epoch == self.answered:
            return []
        if current is not None and self.attestation is not None:
            self.log.warning("epoch %d left unanswered: epoch %d has begun", current.epoch,
                             notice.epoch)
        self.notice = notice
        self.attestation = None
        conduct = self.conduct(notice.epoch) if self.conduct is not None else Conduct.ATTEST
        if conduct == Conduct.STALE:
            stale = next((a for a in reversed(self._signed) if a["epoch"] < notice.epoch - 1),
                         None)
            self.work = None
            if stale is None:
                self.log.warning("epoch %d: not attested (no stale attestation to send)",
                                 notice.epoch)
                return []
            self.log.warning("epoch %d: sending the attestation of epoch %d again instead",
                             notice.epoch, stale["epoch"])
            return [self._send(stale)]
        if conduct == Conduct.SKIP:
            self.work = None
            self.log.warning("epoch %d: skipped, not attested", notice.epoch)
            return []
        if conduct == Conduct.WRONG_BEACON:
            last = int(notice.beacon[-2:], 16) ^ 1
            notice = msgspec.structs.replace(notice, beacon=f"{notice.beacon[:-2]}{last:02x}")
            self.log.warning("epoch %d: solving against a wrong beacon", notice.epoch)
        self.work = Work(self.node, notice)
        self.log.info("epoch %d: solving (target %s, deadline in %.1f s)", notice.epoch,
                      notice.target, (notice.deadline_ns - time.time_ns()) / 1e9)
        return [Solve(self.work)]

    def _send(self, attestation: dict[str, Any]) -> Send:
        request_id = self._next_id
        self._next_id += 1
        self._waiting[request_id] = attestation["epoch"]
        return Send({"op": "attest", "id": request_id, **attestation})

    def _reply(self, reply: Reply) -> None:
        if reply.id == SUBSCRIBE_ID:
            if reply.type == "error":
                self.log.error("subscribing to the attest channel failed: %s %s",
                               reply.code, reply.msg)
            return
        epoch = self._waiting.pop(reply.id, None) if reply.id is not None else None
        if epoch is None:
            return
        self.answered = epoch if self.answered is None else max(self.answered, epoch)
        if self.attestation is not None and self.attestation["epoch"] == epoch:
            self.attestation = None
        if reply.type == "attested":
            self.log.info("epoch %d attested", epoch)
        elif reply.code == "duplicate":
            self.log.info("epoch %d was already attested", epoch)
        else:
            self.log.warning("epoch %d refused: %s (%s)", epoch, reply.code, reply.msg)


def _same_puzzle(a: EpochNotice, b: EpochNotice) -> bool:
    """Whether the two notices ask for the same proof of work (a deadline may move)."""
    return msgspec.structs.replace(a, deadline_ns=b.deadline_ns) == b


class _Solver:
    """Runs one solve at a time on a worker thread; starting a new one stops the old."""

    def __init__(self, done: Callable[[Work, int, bytes, float], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self._done = done
        self._loop = loop
        self._stop: threading.Event | None = None
        self.thread: threading.Thread | None = None

    def start(self, work: Work) -> None:
        self.cancel()
        stop = self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(work, stop),
                                       name=f"solve-{work.notice.epoch}", daemon=True)
        self.thread.start()

    def cancel(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def _run(self, work: Work, stop: threading.Event) -> None:
        started = time.perf_counter()
        solution = work.solve(stop)
        if solution is None:
            log.getChild(work.node).info("epoch %d: solve abandoned after %.3f s",
                                         work.notice.epoch, time.perf_counter() - started)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the agent stopped
            self._loop.call_soon_threadsafe(self._done, work, *solution,
                                            time.perf_counter() - started)


class NodeAgent:
    """`AgentCore` on a websocket to ``url``, reconnecting with backoff (0.5 s doubling to
    10 s) until `stop`; ``conduct`` as `AgentCore` takes it."""

    def __init__(self, key: bytes, url: str,
                 conduct: Callable[[int], Conduct] | None = None) -> None:
        self.core = AgentCore(key, conduct)
        self.url = url
        self._outbox: asyncio.Queue[dict[str, Any]] | None = None
        self._stopping = asyncio.Event()
        self._solver: _Solver | None = None

    async def run(self) -> None:
        """Attest every epoch until `stop` is called."""
        from websockets.asyncio.client import connect  # noqa: PLC0415 (only when running)
        from websockets.exceptions import InvalidHandshake, InvalidURI  # noqa: PLC0415

        stopping = self._stopping
        self._solver = _Solver(self._solved, asyncio.get_running_loop())
        log = self.core.log
        log.info("node %s, exchange %s", self.core.node, self.url)
        backoff = INITIAL_BACKOFF_S
        try:
            while not stopping.is_set():
                try:
                    async with connect(self.url, open_timeout=10, max_size=2**20) as ws:
                        log.info("connected to %s", self.url)
                        backoff = INITIAL_BACKOFF_S
                        await self._session(ws, stopping)
                    log.info("disconnected from %s", self.url)
                except InvalidURI:
                    raise
                except (OSError, TimeoutError, InvalidHandshake) as exc:
                    log.warning("cannot connect to %s: %s", self.url, exc or type(exc).__name__)
                if not stopping.is_set():
                    log.info("reconnecting in %.1f s", backoff)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            self._solver.cancel()

    def stop(self) -> None:
        """Ends `run` (from the loop's thread); before it, `run` returns at once."""
        self._stopping.set()

    @property
    def solver_thread(self) -> threading.Thread | None:
        """The thread of the latest solve (finished once the solve is done or abandoned)."""
        return self._solver.thread if self._solver is not None else None

    async def _session(self, ws: ClientConnection, stopping: asyncio.Event) -> None:
        from websockets.exceptions import ConnectionClosed  # noqa: PLC0415

        self._outbox = outbox = asyncio.Queue[dict[str, Any]]()
        self._perform(self.core.connected())

        async def read() -> None:
            async for raw in ws:
                self._perform(self.core.receive(raw))

        async def write() -> None:
            while True:
                await ws.send(msgspec.json.encode(await outbox.get()).decode())

        tasks = {asyncio.create_task(read()), asyncio.create_task(write()),
                 asyncio.create_task(stopping.wait())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                with contextlib.suppress(ConnectionClosed):
                    task.result()
        finally:
            self._outbox = None
            self.core.disconnected()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                if self._outbox is not None:
                    self._outbox.put_nowait(action.message)
            elif self._solver is not None:
                self._solver.start(action.work)

    def _solved(self, work: Work, nonce: int, found: bytes, seconds: float) -> None:
        self._perform(self.core.solved(work, nonce, found, seconds))


# --- key files and the command --------------------------------------------------------------


def keygen(path: Path) -> str:
    """Writes a fresh node key to ``path`` (mode 0600; never over an existing file) and
    returns the node's address."""
    key = PrivateKey().secret
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("0x" + key.hex() + "\n")
    return address_of(key)


def read_key_file(path: Path) -> bytes:
    """The node key in ``path`` (0x hex); warns if others may read the file."""
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text.removeprefix("0x"))
        if len(key) != 32:
            raise ValueError("not 32 bytes")
        PrivateKey(key)  # in range
    except ValueError as exc:
        raise ValueError(f"{path} does not hold a secp256k1 private key (0x hex)") from exc
    if path.stat().st_mode & 0o077:
        log.warning("%s can be read by other users: chmod 600 it", path)
    return key


def main(key_file: Path, url: str) -> int:
    """``cmx node-agent``: run until SIGINT or SIGTERM."""
    import signal  # noqa: PLC0415

    try:
        key = read_key_file(key_file)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    agent = NodeAgent(key, url)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, agent.stop)
        await agent.run()

    from websockets.exceptions import InvalidURI  # noqa: PLC0415

    try:
        asyncio.run(run())
    except InvalidURI as exc:
        log.error("%s", exc)
        return 2
    return 0
