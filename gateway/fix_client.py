"""A FIX 4.4 client for market makers (asyncio), on the project's sans-I/O session layer.

`FixClient` is an initiator that logs on to the exchange's acceptor (CompID ``CMX``) with an
EIP-191 signature over ``SendingTime|MsgSeqNum|SenderCompID|TargetCompID`` of its Logon: by
the account's key (553 = the account), or by an API key the account delegated (then 95/96
RawData carries ``key,expires,grant``, see `gateway.client.delegate`).

Its session store outlives connections: with ``store_dir`` a `gateway.fix_store.FileStore`
keeps sequence numbers and sent messages on disk, so a restarted client (or a reconnect after
the exchange restarted) continues its numbers and both sides recover what the other missed by
ResendRequest; without it a `MemoryStore` lasts as long as the client object. When the
connection drops the client reconnects with exponential backoff. Requests made while
disconnected are stored under their sequence numbers and reach the exchange by resend after
the next logon.

Application messages from the exchange (ExecutionReport 8, OrderCancelReject 9,
OrderMassCancelReport r, BusinessMessageReject j, session Reject 3) are delivered in
sequence order, each exactly once, resends included, to ``on_message`` or else to the
`FixClient.messages` queue.

    client = FixClient("127.0.0.1", 9878, key, sender_comp_id="MM1", store_dir=Path("fix"))
    await client.start()
    cl_ord_id = client.new_order("GPU.H100.F2701", "buy", "1", "2.400")
    report = await client.messages.get()
    client.replace(cl_ord_id, "2.405", "2")
    client.mass_cancel()
    await client.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import api
from gateway.auth import address_of, sign_text
from gateway.fix_codec import Field, FixMessage, format_utc_timestamp
from gateway.fix_session import (
    Action,
    Deliver,
    Disconnect,
    FixSession,
    LoggedOn,
    LoggedOut,
    Rejected,
    Send,
    SessionConfig,
)
from gateway.fix_store import FileStore, MemoryStore, SessionStore

log = logging.getLogger(__name__)

EXCHANGE_COMP_ID = "CMX"
TIMER_S = 0.2
READ_SIZE = 64 * 1024
SIDES = {"buy": "1", "sell": "2"}
ORD_TYPES = {"market": "1", "limit": "2", "stop_market": "3", "stop_limit": "4"}
TIME_IN_FORCE = {"gtc": "1", "ioc": "3", "fok": "4", "gtd": "6"}
STP_MODES = {"cancel_newest": "N", "cancel_oldest": "O", "cancel_both": "B", "decrement": "D"}
TERMINAL_STATUSES = frozenset({"2", "4", "8", "C"})
"""OrdStatus values after which an order is gone: filled, cancelled, rejected, expired."""

MessageCallback = Callable[[FixMessage], None]


class LogonRefused(Exception):  # noqa: N818 (the name says what happened)
    """The exchange refused the first Logon (bad signature, CompID bound elsewhere...)."""


@dataclass
class _Order:
    """What a cancel or replace of an order needs to repeat (FIX 4.4 requires them)."""

    symbol: str
    side: str


class FixClient:
    """One FIX session to the exchange, kept up across connection losses."""

    def __init__(
        self,
        host: str,
        port: int,
        key: str,
        *,
        sender_comp_id: str,
        store_dir: Path | None = None,
        account: str | None = None,
        delegation: api.Delegation | None = None,
        cancel_on_disconnect: bool | None = None,
        on_message: MessageCallback | None = None,
        config: SessionConfig | None = None,
        backoff_s: tuple[float, float] = (0.1, 5.0),
        fsync: bool = True,
    ) -> None:
        """``key`` signs the Logon: the account's key, or with ``account`` and
        ``delegation`` an API key the account delegated. ``cancel_on_disconnect`` is sent
        as 8013 Y/N when given. ``backoff_s`` is the first and the longest pause between
        connection attempts."""
        self.host = host
        self.port = port
        self.key = key
        self.account = (account or address_of(key)).lower()
        self.delegation = delegation
        self.sender_comp_id = sender_comp_id
        self.cancel_on_disconnect = cancel_on_disconnect
        self.on_message = on_message
        self.config = config or SessionConfig(heartbeat_s=10)
        self.backoff_s = backoff_s
        self.store: SessionStore = (
            FileStore(store_dir, fsync=fsync) if store_dir is not None else MemoryStore())
        self.messages: asyncio.Queue[FixMessage] = asyncio.Queue()
        """Application messages when there is no ``on_message``."""
        self.session = self._new_session()
        self.logons = 0
        """Logons completed so far (a reconnect adds one)."""
        self.last_disconnect = ""
        """Why the last connection ended."""
        self._logged_on = asyncio.Event()
        self._orders: dict[str, _Order] = {}
        self._ids = itertools.count(1)
        self._id_prefix = f"{sender_comp_id}-{time.time_ns():x}-"
        self._writer: asyncio.StreamWriter | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._connection_closed = asyncio.Event()
        self._first_refusal: asyncio.Future[str] | None = None

    # --- life cycle -----------------------------------------------------------------------

    @property
    def logged_on(self) -> bool:
        """Whether the session is logged on right now."""
        return self.session.logged_on

    async def start(self, timeout_s: float = 30.0) -> None:
        """Connect and log on (keeps reconnecting in the background afterwards). Raises
        `LogonRefused` if the exchange refuses the Logon, TimeoutError if no logon happens
        within ``timeout_s``."""
        refusal: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._first_refusal = refusal
        self._runner = asyncio.create_task(self._run())
        logged_on = asyncio.create_task(self._logged_on.wait())
        waiters: set[asyncio.Future[Any]] = {logged_on, refusal}
        try:
            done, _ = await asyncio.wait(waiters, timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            logged_on.cancel()
        if refusal in done:
            await self._stop_runner()
            raise LogonRefused(refusal.result())
        if not done:
            await self._stop_runner()
            raise TimeoutError(f"no FIX logon to {self.host}:{self.port} in {timeout_s} s")
        self._first_refusal = None

    async def wait_logged_on(self, timeout_s: float = 30.0) -> None:
        """Wait until the session is logged on (after a reconnect, say)."""
        await asyncio.wait_for(self._logged_on.wait(), timeout_s)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Log out (waiting up to ``timeout_s`` for the answer), stop reconnecting and close
        the store."""
        self._closing = True
        if self.session.logged_on:
            self._carry(self.session.logout(time.time_ns()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connection_closed.wait(), timeout_s)
        await self._stop_runner()
        self.store.close()

    async def _stop_runner(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    def _new_session(self) -> FixSession:
        return FixSession.initiator(self.sender_comp_id, EXCHANGE_COMP_ID, self.store,
                                    self._logon_fields, self.config)

    def _logon_fields(self, sending_time: str, seq: int) -> Sequence[Field]:
        text = f"{sending_time}|{seq}|{self.sender_comp_id}|{EXCHANGE_COMP_ID}"
        fields: list[Field] = [(553, self.account), (554, sign_text(self.key, text))]
        if self.delegation is not None:
            grant = f"{self.delegation.key},{self.delegation.expires}," \
                    f"{self.delegation.signature}"
            fields = [(95, len(grant)), (96, grant), *fields]
        if self.cancel_on_disconnect is not None:
            fields.append((8013, "Y" if self.cancel_on_disconnect else "N"))
        return fields

    async def _run(self) -> None:
        """Connect, serve the connection, and reconnect with backoff until closed."""
        first, longest = self.backoff_s
        pause = first
        while not self._closing:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                self.last_disconnect = f"connect failed: {exc}"
            else:
                logons = self.logons
                await self._serve(reader, writer)
                if self.logons > logons:
                    pause = first
            if self._closing:
                return
            await asyncio.sleep(pause)
            pause = min(longest, pause * 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._connection_closed.clear()
        self.session = self._new_session()
        timer = asyncio.create_task(self._timer(self.session))
        try:
            self._carry(self.session.connection_made(time.time_ns()))
            while not self.session.closed:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                self._carry(self.session.on_bytes(data, time.time_ns()))
        except ConnectionError as exc:
            self.last_disconnect = f"connection error: {exc}"
        finally:
            timer.cancel()
            if not self.session.closed:
                self._carry(self.session.connection_lost(time.time_ns()))
                self.last_disconnect = self.last_disconnect or "connection lost"
            self._writer = None
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._connection_closed.set()

    async def _timer(self, session: FixSession) -> None:
        while not session.closed:
            await asyncio.sleep(TIMER_S)
            self._carry(session.on_timer(time.time_ns()))

    def _carry(self, actions: list[Action]) -> None:
        """Carry out a session's actions: write, deliver, note logons and disconnects."""
        for action in actions:
            if isinstance(action, Send):
                if self._writer is not None and not self._writer.is_closing():
                    self._writer.write(action.data)
            elif isinstance(action, Deliver | Rejected):
                self._deliver(action.message)
            elif isinstance(action, LoggedOn):
                self.logons += 1
                self._logged_on.set()
            elif isinstance(action, LoggedOut):
                self._logged_on.clear()
                self.last_disconnect = action.reason
            elif isinstance(action, Disconnect):
                self.last_disconnect = action.reason
                if self.logons == 0 and self._first_refusal is not None \
                        and not self._first_refusal.done():
                    self._first_refusal.set_result(action.reason)
                if self._writer is not None:
                    self._writer.close()

    def _deliver(self, message: FixMessage) -> None:
        if message.msg_type == "8" and message.get(39) in TERMINAL_STATUSES:
            for tag in (11, 41):
                self._orders.pop(message.get(tag) or "", None)
        elif message.msg_type == "9":
            self._orders.pop(message.get(11) or "", None)
        if self.on_message is not None:
            try:
                self.on_message(message)
            except Exception:  # the session must outlive a failing handler
                log.exception("on_message failed on %r", message)
        else:
            self.messages.put_nowait(message)

    # --- requests ---------------------------------------------------------------------------

    def next_cl_ord_id(self) -> str:
        """A fresh ClOrdID, unique across this client's runs."""
        return f"{self._id_prefix}{next(self._ids)}"

    def send(self, msg_type: str, body: Sequence[Field]) -> None:
        """Send an application message. While disconnected it is stored under its number
        and goes out by resend after the next logon."""
        self._carry(self.session.send(msg_type, body, time.time_ns()))

    def new_order(
        self,
        symbol: str,
        side: str,
        qty: str,
        price: str | None = None,
        *,
        order_type: str = "limit",
        tif: str = "gtc",
        post_only: bool = False,
        stp: str | None = None,
        cl_ord_id: str | None = None,
    ) -> str:
        """NewOrderSingle D; ``side`` buy/sell, ``order_type`` a key of `ORD_TYPES`,
        ``tif`` of `TIME_IN_FORCE`, ``stp`` of `STP_MODES`. Returns its ClOrdID."""
        cl_ord_id = cl_ord_id or self.next_cl_ord_id()
        body: list[Field] = [(11, cl_ord_id), (55, symbol), (54, SIDES[side]),
                             (60, _now()), (38, qty), (40, ORD_TYPES[order_type]),
                             (59, TIME_IN_FORCE[tif])]
        if price is not None:
            body.append((44, price))
        if post_only:
            body.append((18, "6"))
        if stp is not None:
            body.append((7928, STP_MODES[stp]))
        self._orders[cl_ord_id] = _Order(symbol, side)
        self.send("D", body)
        return cl_ord_id

    def cancel(self, orig_cl_ord_id: str, *, cl_ord_id: str | None = None) -> str:
        """OrderCancelRequest F of the order whose current ClOrdID is ``orig_cl_ord_id``.
        Returns the cancel's ClOrdID. Raises KeyError for an order this client does not
        know as live."""
        order = self._orders[orig_cl_ord_id]
        cl_ord_id = cl_ord_id or self.next_cl_ord_id()
        self._orders[cl_ord_id] = order
        self.send("F", [(41, orig_cl_ord_id), (11, cl_ord_id), (55, order.symbol),
                        (54, SIDES[order.side]), (60, _now())])
        return cl_ord_id

    def replace(self, orig_cl_ord_id: str, price: str, qty: str, *,
                cl_ord_id: str | None = None) -> str:
        """OrderCancelReplaceRequest G: new price and total quantity. Returns the new
        ClOrdID, which names the order once the exchange confirms (150=5). Raises KeyError
        for an order this client does not know as live."""
        order = self._orders[orig_cl_ord_id]
        cl_ord_id = cl_ord_id or self.next_cl_ord_id()
        self._orders[cl_ord_id] = order
        self.send("G", [(41, orig_cl_ord_id), (11, cl_ord_id), (55, order.symbol),
                        (54, SIDES[order.side]), (60, _now()), (38, qty), (40, "2"),
                        (44, price)])
        return cl_ord_id

    def mass_cancel(self, symbol: str | None = None) -> str:
        """OrderMassCancelRequest q for ``symbol`` (all symbols if None); the exchange
        answers with an OrderMassCancelReport r. Returns its ClOrdID."""
        cl_ord_id = self.next_cl_ord_id()
        body: list[Field] = [(11, cl_ord_id), (530, "1" if symbol else "7")]
        if symbol:
            body.append((55, symbol))
        body.append((60, _now()))
        self.send("q", body)
        return cl_ord_id


def _now() -> str:
    return format_utc_timestamp(time.time_ns())
