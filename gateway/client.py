"""The reference trader client for the websocket API (asyncio).

`TraderClient` connects, logs in with an account key (or a delegated API key), enters and
manages orders, and keeps a `gateway.local_book.LocalBook` per subscribed book, asking the
server to ``resync`` a symbol on any gap or checksum mismatch. Each request method allocates
the request ``id``, awaits the reply with that id and raises `RequestRefused` on an error
reply. `send_nowait` is the open-loop path for load generators: it queues a request and
returns its id at once; the reply goes to the ``on_ack`` callback.

Channel messages other than the client's own bookkeeping go to the ``on_message`` callback, or
else to the `TraderClient.messages` queue. Book messages are delivered after they are applied
to their local book.

    client = TraderClient()
    await client.connect("ws://127.0.0.1:8765/")
    await client.login(private_key)
    await client.subscribe("book", ["GPU.H100.SPOT"], depth=10)
    order = await client.place("GPU.H100.SPOT", "buy", "1", "2.400")
    await client.cancel(order.order_id)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway import api
from gateway.auth import address_of, delegation_text, login_text, sign_text
from gateway.local_book import BookStatus, LocalBook

AnyReply = (api.Error | api.Welcome | api.ChallengeIssued | api.LoggedIn | api.Pong
            | api.Subscribed | api.Unsubscribed | api.OrderReply | api.MassCancelled
            | api.CancelAllAfterSet | api.WithdrawalAccepted)
AckCallback = Callable[[int, Any], None]
"""Called with a `send_nowait` request's id and its reply (an `AnyReply` struct)."""


class _Envelope(msgspec.Struct):
    """What a frame is: replies carry a reply ``type``, channel messages a ``channel`` (and a
    ``type`` such as snapshot or update); subscription replies carry both."""

    type: str = ""
    channel: str = ""


_envelope = msgspec.json.Decoder(_Envelope)
_reply = msgspec.json.Decoder(AnyReply)
_REPLY_TYPES = frozenset(str(t.__struct_config__.tag) for t in AnyReply.__args__)
_channels: dict[str, msgspec.json.Decoder[Any]] = {
    "book": msgspec.json.Decoder(api.BookMessage),
    "trades": msgspec.json.Decoder(api.TradesMessage),
    "ticker": msgspec.json.Decoder(api.TickerMessage),
    "instruments": msgspec.json.Decoder(api.InstrumentsMessage),
    "heartbeat": msgspec.json.Decoder(api.Heartbeat),
}
_private = msgspec.json.Decoder(api.PrivateMessage)
_encode = msgspec.json.Encoder().encode


class RequestRefused(Exception):  # noqa: N818 (the name says what happened)
    """The server answered a request with an error."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg


def delegate(account_key: str | bytes, key: str, expires: int) -> api.Delegation:
    """The account's signed grant letting API key ``key`` (an address) trade for it until
    ``expires`` (Unix seconds)."""
    account = address_of(account_key)
    return api.Delegation(key.lower(), expires,
                          sign_text(account_key, delegation_text(account, key, expires)))


class TraderClient:
    """One websocket connection to the exchange, with its requests and local books."""

    def __init__(self, *, on_message: Callable[[Any], None] | None = None,
                 on_ack: AckCallback | None = None, keep_books: bool = True) -> None:
        self.on_message = on_message
        self.on_ack = on_ack
        self.keep_books = keep_books
        """False: book messages are only checked for ``seq`` continuity (a gap still asks
        for a resync) and passed on, with no local book and no checksum: for a client that
        only watches updates go by, at a fraction of the cost."""
        self.book_seqs: dict[str, int] = {}
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        """Channel messages (and replies nobody waits for) when there is no ``on_message``."""
        self.books: dict[str, LocalBook] = {}
        self.account: str | None = None
        self.gaps = 0
        """Book gaps seen (by ``prev_seq`` or a heartbeat's ``seq``)."""
        self.checksum_failures = 0
        self.resyncs = 0
        self._ids = itertools.count(1)
        self._order_ids = itertools.count(1)
        self._cl_prefix = secrets.token_hex(4)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._acks: set[int] = set()
        self._outbox: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._nonce: str | None = None

    # --- connection ---------------------------------------------------------------------------

    async def connect(self, url: str) -> api.Welcome:
        """Open the connection; returns the server's welcome (with a login nonce)."""
        self._ws = await connect(url, max_size=None, compression=None, ping_interval=None)
        welcome = _reply.decode(await self._ws.recv(decode=False))
        if not isinstance(welcome, api.Welcome):
            raise RequestRefused("protocol", f"expected a welcome, got {welcome!r}")
        self._nonce = welcome.nonce
        self._tasks = [asyncio.create_task(self._read(self._ws)),
                       asyncio.create_task(self._write(self._ws))]
        return welcome

    async def close(self) -> None:
        """Send what is queued, then close; requests still waiting fail with
        `ConnectionClosed`."""
        if self._ws is not None:
            while self._outbox and not self._tasks[1].done():
                await asyncio.sleep(0.001)
            await self._ws.close()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def close_status(self) -> tuple[int | None, str] | None:
        """None while the connection is open (or not yet made); once closed, the close code
        and reason (code None if the connection dropped without a close frame)."""
        if self._ws is None or not self._tasks or not self._tasks[0].done():
            return None
        return self._ws.close_code, self._ws.close_reason or ""

    async def wait_closed(self) -> None:
        """Wait until the server closes the connection."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _write(self, ws: ClientConnection) -> None:
        outbox = self._outbox
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self._wake.wait()
                self._wake.clear()
                while outbox:
                    await ws.send(outbox.popleft(), text=True)

    async def _read(self, ws: ClientConnection) -> None:
        failure: Exception
        try:
            async for frame in ws:
                self.handle_frame(frame)
            failure = ws.protocol.close_exc
        except ConnectionClosed as exc:
            failure = exc
        except Exception as exc:  # a frame this client cannot handle: give up the connection
            failure = exc
            await ws.close(1002, "client could not handle a message")
        self._tasks[1].cancel()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(failure)
        self._waiting.clear()

    # --- requests -----------------------------------------------------------------------------

    def send_nowait(self, request: dict[str, Any]) -> int:
        """Queue ``request`` (its ``id`` is set here) without waiting; its reply goes to
        ``on_ack``. Returns the id."""
        request_id = self._queue(request)
        self._acks.add(request_id)
        return request_id

    def _queue(self, request: dict[str, Any]) -> int:
        if self._ws is None:
            raise RuntimeError("not connected")
        request_id = next(self._ids)
        request["id"] = request_id
        self._outbox.append(_encode(request))
        self._wake.set()
        return request_id

    async def request(self, request: dict[str, Any]) -> Any:
        """Send ``request`` and return its reply; raise `RequestRefused` on an error."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[self._queue(request)] = future
        return await future

    def next_cl_ord_id(self) -> str:
        """A fresh client order id, unique to this client."""
        return f"{self._cl_prefix}-{next(self._order_ids)}"

    async def login(self, private_key: str | bytes, *, account: str | None = None,
                    delegation: api.Delegation | None = None,
                    cancel_on_disconnect: bool = False) -> api.LoggedIn:
        """Log in: as the key's own account, or as ``account`` with a delegated API key
        (``private_key`` is then the API key and ``delegation`` the account's grant)."""
        account = (account or address_of(private_key)).lower()
        nonce, self._nonce = self._nonce, None
        if nonce is None:
            challenge: api.ChallengeIssued = await self.request({"op": "challenge"})
            nonce = challenge.nonce
        request: dict[str, Any] = {
            "op": "login", "account": account, "nonce": nonce,
            "signature": sign_text(private_key, login_text(account, nonce)),
            "cancel_on_disconnect": cancel_on_disconnect,
        }
        if delegation is not None:
            request["delegation"] = msgspec.to_builtins(delegation)
        reply: api.LoggedIn = await self.request(request)
        self.account = reply.account
        return reply

    async def place(self, symbol: str, side: str, qty: str, price: str | None = None, *,
                    cl_ord_id: str | None = None, order_type: str = "limit",
                    tif: str = "gtc", **options: Any) -> api.OrderView:
        """Enter an order; ``options`` are the other `gateway.api.Place` fields (stop_price,
        post_only, display_qty, expire_ts, stp). Returns the order as accepted."""
        request = {"op": "place", "symbol": symbol, "side": side, "qty": qty,
                   "cl_ord_id": cl_ord_id or self.next_cl_ord_id(), "type": order_type,
                   "tif": tif, **options}
        if price is not None:
            request["price"] = price
        return await self._order(request)

    async def cancel(self, order_id: int | None = None, *,
                     cl_ord_id: str | None = None) -> api.OrderView:
        """Cancel an order by exchange id or client id."""
        return await self._order(_ids({"op": "cancel"}, order_id, cl_ord_id))

    async def amend(self, order_id: int | None = None, *, cl_ord_id: str | None = None,
                    price: str | None = None, qty: str | None = None) -> api.OrderView:
        """Change a resting order's price and/or open quantity."""
        request = _ids({"op": "amend"}, order_id, cl_ord_id)
        request.update(_present(price=price, qty=qty))
        return await self._order(request)

    async def _order(self, request: dict[str, Any]) -> api.OrderView:
        reply: api.OrderReply = await self.request(request)
        assert reply.order is not None
        return reply.order

    async def mass_cancel(self, symbol: str | None = None, side: str | None = None) -> int:
        """Cancel the account's orders (on one symbol and/or side); returns how many."""
        reply: api.MassCancelled = await self.request(
            {"op": "mass_cancel", **_present(symbol=symbol, side=side)})
        return reply.cancelled

    async def cancel_all_after(self, timeout_ms: int) -> api.CancelAllAfterSet:
        """Arm (or with 0 disarm) the dead-man's switch."""
        reply: api.CancelAllAfterSet = await self.request(
            {"op": "cancel_all_after", "timeout_ms": timeout_ms})
        return reply

    async def withdraw(self, amount: str) -> api.WithdrawalAccepted:
        """Withdraw ``amount`` USDC of free collateral."""
        reply: api.WithdrawalAccepted = await self.request({"op": "withdraw", "amount": amount})
        return reply

    async def ping(self) -> int:
        """Round trip to the server; returns the server's time (ns). Everything the server
        queued for this connection before the pong has arrived when this returns."""
        reply: api.Pong = await self.request({"op": "ping"})
        return int(reply.ts)

    async def subscribe(self, channel: str, symbols: Iterable[str] = (),
                        depth: int = 10) -> api.Subscribed:
        """Subscribe to a channel; book subscriptions get a `LocalBook` per symbol."""
        symbols = list(symbols)
        request: dict[str, Any] = {"op": "subscribe", "channel": channel}
        if symbols:
            request["symbols"] = symbols
        if channel == api.Channel.BOOK:
            request["depth"] = depth
            for symbol in symbols:
                if self.keep_books:
                    self.books[symbol] = LocalBook(symbol, depth)
        reply: api.Subscribed = await self.request(request)
        return reply

    async def unsubscribe(self, channel: str, symbols: Iterable[str] = ()) -> None:
        """End a subscription (for ``symbols``, or the whole channel)."""
        symbols = list(symbols)
        await self.request({"op": "unsubscribe", "channel": channel, "symbols": symbols})
        if channel == api.Channel.BOOK:
            for symbol in symbols or list(self.books):
                self.books.pop(symbol, None)

    # --- input --------------------------------------------------------------------------------

    def handle_frame(self, frame: str | bytes) -> None:
        """Handle one frame from the server (the reader task calls this for each)."""
        envelope = _envelope.decode(frame)
        if envelope.type in _REPLY_TYPES:
            self._on_reply(_reply.decode(frame))
            return
        message = _channels.get(envelope.channel, _private).decode(frame)
        if isinstance(message, api.BookMessage):
            if not self.keep_books:
                last = self.book_seqs.get(message.symbol)
                self.book_seqs[message.symbol] = message.seq
                if message.type == "update" and last is not None and message.prev_seq != last:
                    self._check(message.symbol, BookStatus.GAP)
            else:
                book = self.books.get(message.symbol)
                if book is None:
                    return  # a late update of a book no longer subscribed
                self._check(message.symbol, book.apply(message))
        elif isinstance(message, api.Heartbeat):
            for symbol, seq in message.seqs.items():
                book = self.books.get(symbol)
                if book is not None:
                    self._check(symbol, book.check_heartbeat(seq))
            return
        self._deliver(message)

    def _check(self, symbol: str, status: BookStatus) -> None:
        if not status.needs_resync:
            return
        if status == BookStatus.CHECKSUM:
            self.checksum_failures += 1
        else:
            self.gaps += 1
        self.resyncs += 1
        self._queue({"op": "resync", "symbol": symbol})

    def _on_reply(self, reply: Any) -> None:
        request_id = reply.id
        future = self._waiting.pop(request_id, None) if isinstance(request_id, int) else None
        if future is not None:
            if future.done():
                return
            if isinstance(reply, api.Error):
                future.set_exception(RequestRefused(reply.code, reply.msg))
            else:
                future.set_result(reply)
        elif request_id in self._acks:
            self._acks.discard(request_id)
            if self.on_ack is not None:
                self.on_ack(request_id, reply)
        else:
            self._deliver(reply)

    def _deliver(self, message: Any) -> None:
        if self.on_message is not None:
            self.on_message(message)
        else:
            self.messages.put_nowait(message)


def _present(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _ids(request: dict[str, Any], order_id: int | None, cl_ord_id: str | None
         ) -> dict[str, Any]:
    request.update(_present(order_id=order_id, cl_ord_id=cl_ord_id))
    return request
