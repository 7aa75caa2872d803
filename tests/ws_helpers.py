"""Builders shared by the gateway tests: an exchange behind a `Gateway`, sans-I/O sessions,
and a websocket client for a real `ExchangeServer`.

A `Floor` owns one data directory's sequencer and gateway. Sans-I/O tests feed a
`ClientSession` frames with `Floor.send` (which pumps the sequencer's released events through
the gateway and returns the session's decoded output); integration tests start the server with
`serving` and talk to it through `WsClient`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from engine.commands import CreditDeposit, PlaceOrder, SetCapacity
from engine.journal import FsyncPolicy, read_records
from engine.recovery import journal_path
from engine.sequencer import decode_sequenced
from gateway.auth import address_of, delegation_text, login_text, sign_text
from gateway.hub import Gateway, Limits
from gateway.serve import open_sequencer
from gateway.server import ExchangeServer
from gateway.session import ClientSession

Message = dict[str, Any]

ALICE_KEY = "0x" + "a1" * 32
BOB_KEY = "0x" + "b0" * 32
CAROL_KEY = "0x" + "c3" * 32
API_KEY = "0x" + "d4" * 32
ALICE = address_of(ALICE_KEY)
BOB = address_of(BOB_KEY)
CAROL = address_of(CAROL_KEY)
SPOT = "GPU.H100.SPOT"
FUNDS = 1_000_000 * 1_000_000  # a million USDC
NS = 1_000_000_000


def decode(frames: Iterable[str]) -> list[Message]:
    """Each frame as a JSON object (fails the test if one is not)."""
    out = []
    for frame in frames:
        value = json.loads(frame)
        assert isinstance(value, dict), frame
        out.append(value)
    return out


def login_request(key: str, nonce: str, request_id: int = 1, **fields: Any) -> Message:
    """A login for the account of ``key``, signing ``nonce``."""
    account = address_of(key)
    return {"op": "login", "id": request_id, "account": account, "nonce": nonce,
            "signature": sign_text(key, login_text(account, nonce)), **fields}


def delegated_login_request(account_key: str, api_key: str, nonce: str, expires: int,
                            *, grantor_key: str | None = None) -> Message:
    """A login for ``account_key``'s account by ``api_key``, with a delegation signed by
    ``grantor_key`` (default: the account's own key) valid until ``expires`` (Unix s)."""
    account = address_of(account_key)
    key = address_of(api_key)
    grant = sign_text(grantor_key or account_key, delegation_text(account, key, expires))
    return {"op": "login", "id": 1, "account": account, "nonce": nonce,
            "signature": sign_text(api_key, login_text(account, nonce)),
            "delegation": {"key": key, "expires": expires, "signature": grant}}


def place_request(cl_ord_id: str, side: str = "buy", price: str = "2.400", qty: str = "1",
                  request_id: int | str = 1, symbol: str = SPOT, **fields: Any) -> Message:
    """A limit order on ``symbol`` (default the H100 spot market)."""
    return {"op": "place", "id": request_id, "symbol": symbol, "side": side, "qty": qty,
            "price": price, "cl_ord_id": cl_ord_id, **fields}


def of_type(messages: Iterable[Message], kind: str) -> list[Message]:
    """The messages whose ``type`` is ``kind``."""
    return [m for m in messages if m.get("type") == kind]


def reply_to(messages: Iterable[Message], request_id: int | str) -> Message:
    """The one reply carrying ``id`` ``request_id`` (channel messages carry no ``id``)."""
    found = [m for m in messages if "id" in m and m["id"] == request_id]
    assert len(found) == 1, (request_id, list(messages))
    return found[0]


def journaled_orders(data_dir: Path) -> list[PlaceOrder]:
    """Every order placement in the data directory's journal, in order."""
    records = (decode_sequenced(r).command for _, r in read_records(journal_path(data_dir)))
    return [c for c in records if isinstance(c, PlaceOrder)]


class Floor:
    """One exchange and its gateway over a data directory, driven by the test."""

    def __init__(self, data_dir: Path, limits: Limits | None = None) -> None:
        self.data_dir = data_dir
        self.sequencer = open_sequencer(data_dir, fsync=FsyncPolicy.NONE)
        self.gateway = Gateway(self.sequencer, limits=limits)
        self.exchange = self.gateway.exchange
        self._deposits = 0

    def pump(self) -> None:
        """Make everything submitted durable and publish it, and what publishing submitted."""
        while released := self.sequencer.sync():
            self.gateway.publish(released)

    def fund(self, *accounts: str, amount: int = FUNDS) -> None:
        """Credit each account ``amount`` micro-USDC."""
        for account in accounts:
            self._deposits += 1
            self.gateway.submit(CreditDeposit(self._deposits, account, amount))
        self.pump()

    def capacity(self, account: str, units: int = 1_000, underlying: str = "GPU.H100") -> None:
        """Let ``account`` sell ``units`` of ``underlying`` per window."""
        self.gateway.submit(SetCapacity(account, underlying, units))
        self.pump()

    def session(self, now_ns: int) -> ClientSession:
        """A new connection; its welcome is read and dropped (see `welcome`)."""
        return ClientSession(self.gateway, now_ns)

    def send(self, session: ClientSession, frame: Message | str | bytes,
             now_ns: int) -> list[Message]:
        """Feed one frame, pump the gateway, and return everything the session queued."""
        text = frame if isinstance(frame, str | bytes) else json.dumps(frame)
        session.receive(text, now_ns)
        self.pump()
        return decode(session.drain())

    def logged_in(self, key: str, now_ns: int, **fields: Any) -> ClientSession:
        """A new connection logged in with ``key``."""
        session = self.session(now_ns)
        welcome = decode(session.drain())[0]
        reply = self.send(session, login_request(key, welcome["nonce"], **fields), now_ns)
        assert reply[0]["type"] == "logged_in", reply
        return session

    def live_orders(self, account: str) -> dict[str, int]:
        """The account's orders on the engine's books: client order id -> order id."""
        return {o.placed.client_order_id: o.order_id for o in self.exchange.orders.values()
                if o.placed is not None and o.placed.account == account}

    def close(self) -> None:
        """Release the journal."""
        self.sequencer.journal.close()


# --- a real server ------------------------------------------------------------------------


@asynccontextmanager
async def serving(floor: Floor, clock: Callable[[], int] = time.time_ns
                  ) -> AsyncIterator[ExchangeServer]:
    """The floor's gateway behind a websocket server on a free loopback port."""
    server = ExchangeServer(floor.gateway, port=0, clock=clock)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def settle(server: ExchangeServer) -> None:
    """Commit and publish what was submitted outside a connection (deposits, capacity)."""
    server.pump()
    for _ in range(200):
        await asyncio.sleep(0.005)
        if server.gateway.sequencer.journal.durable_seq == server.gateway.exchange.last_seq:
            break
    await asyncio.sleep(0.01)


class WsClient:
    """A websocket client that keeps the channel messages it reads past while waiting for a
    reply."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[Message] = []
        self.welcome: Message = {}
        self._next_id = 1000

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int, **options: Any) -> AsyncIterator[WsClient]:
        """Connect and read the welcome."""
        async with connect(f"ws://127.0.0.1:{port}/", max_size=None, **options) as ws:
            client = cls(ws)
            client.welcome = await client.next()
            assert client.welcome["type"] == "welcome"
            yield client

    async def next(self, timeout: float = 5.0) -> Message:
        """The next message."""
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        message = json.loads(frame)
        assert isinstance(message, dict), frame
        self.seen.append(message)
        return message

    async def until(self, accept: Callable[[Message], bool], timeout: float = 5.0) -> Message:
        """The first message (from now on) that ``accept`` takes."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next(timeout)
                if accept(message):
                    return message

    async def request(self, message: Message | str | bytes,
                      request_id: int | str | None = None) -> Message:
        """Send a frame and wait for the reply with its ``id`` (``request_id`` for raw
        frames; None waits for the next error without an id)."""
        if isinstance(message, dict):
            if "id" not in message:
                self._next_id += 1
                message = {**message, "id": self._next_id}
            request_id = message["id"]
            await self.ws.send(json.dumps(message))
        else:
            await self.ws.send(message)
        return await self.until(lambda m: "id" in m and m["id"] == request_id)

    async def login(self, key: str, **fields: Any) -> Message:
        """Log in with ``key``; fails the test if refused."""
        reply = await self.request(login_request(key, self.welcome["nonce"], 1, **fields))
        assert reply["type"] == "logged_in", reply
        return reply
