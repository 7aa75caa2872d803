"""One websocket connection's protocol state, sans-I/O.

A `ClientSession` is fed each text frame (`receive`) and the clock (`tick`); it answers by
putting messages in its outbox, which the server drains to the socket. It never raises on
client input: every bad request becomes an `Error` to that client only. The outbox is bounded:
past ``outbox_soft`` queued messages its book updates are conflated into fresh snapshots, past
``outbox_hard`` the session asks to be closed as too slow.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import msgspec

from gateway import api, order_entry
from gateway.api import Channel, ErrorCode
from gateway.auth import LoginError, Nonce, verify_login
from gateway.hub import Gateway, Session
from gateway.market_data import SymbolBook
from gateway.order_entry import RequestError
from gateway.rate_limit import TokenBucket

CLOSE_POLICY = 1008  # websocket close code: policy violation
CLOSE_TRY_AGAIN = 1013

_ORDER_OPS = (api.Place, api.Cancel, api.Amend, api.MassCancel, api.Withdraw)


class ClientSession(Session):
    """The state of one connection: login, subscriptions, limits and outbox."""

    def __init__(self, gateway: Gateway, now_ns: int) -> None:
        self.gateway = gateway
        self.limits = gateway.limits
        self.account: str | None = None
        self.key: str | None = None
        self.cancel_on_disconnect = False
        self.private: set[Channel] = set()
        self.placed: set[int] = set()
        self.books: dict[str, int] = {}  # subscribed symbol -> depth
        self.outbox: deque[tuple[str | None, str]] = deque()
        self.wakeup: Callable[[], None] = lambda: None
        self.direct: Callable[[str], bool] | None = None
        """Set by the server: write a message to the socket at once if nothing is queued
        and the socket takes it without blocking (returns False otherwise)."""
        self.writing = False  # the server's writer holds a message it has not written yet
        self.close_reason: tuple[int, str] | None = None
        self.nonce = Nonce(now_ns)
        self.last_sent_ns = now_ns
        self.now_ns = now_ns
        self._orders = TokenBucket(self.limits.orders_per_connection, now_ns)
        self._messages = TokenBucket(self.limits.messages_per_connection, now_ns)
        self._strikes = 0
        gateway.sessions.add(self)
        self.reply(api.Welcome(None, nonce=self.nonce.value,
                               nonce_expires_ts=str(self.nonce.expires_ns)))

    # --- output -------------------------------------------------------------------------------

    def send(self, payload: str, book_symbol: str | None = None) -> None:
        """Queue a message; conflate or give up on a reader that is too far behind."""
        if self.close_reason is not None:
            return
        if not self.outbox and not self.writing and self.direct is not None and \
                self.direct(payload):
            self.last_sent_ns = self.now_ns
            return
        self.outbox.append((book_symbol, payload))
        if len(self.outbox) > self.limits.outbox_soft:
            self._conflate()
            if len(self.outbox) > self.limits.outbox_hard:
                self.outbox.clear()  # hopeless: what is queued would never be read
                self.close(CLOSE_TRY_AGAIN, "slow consumer: too many messages queued")
        self.wakeup()

    def _conflate(self) -> None:
        kept = deque(item for item in self.outbox if item[0] is None)
        for symbol, depth in self.books.items():
            kept.append((symbol, self.gateway.books[symbol].view(depth).snapshot()))
        self.outbox = kept

    def pop(self) -> str | None:
        """The oldest queued message, or None. The server writes one at a time, so whatever
        waits behind a blocked socket stays in the outbox, under its limits."""
        if not self.outbox:
            return None
        self.last_sent_ns = self.now_ns
        return self.outbox.popleft()[1]

    def drain(self) -> list[str]:
        """Everything queued, in order; the outbox is then empty."""
        frames = [payload for _, payload in self.outbox]
        self.outbox.clear()
        if frames:
            self.last_sent_ns = self.now_ns
        return frames

    def close(self, code: int, reason: str) -> None:
        """Ask the server to close the connection (with an error message first)."""
        if self.close_reason is None:
            self.outbox.append((None, msgspec.json.encode(
                api.Error(None, "closing", reason)).decode()))
            self.close_reason = (code, reason)
            self.wakeup()

    def error(self, request_id: api.RequestId, code: str, msg: str) -> None:
        """Refuse a request."""
        self.reply(api.Error(request_id, code, msg))

    # --- input --------------------------------------------------------------------------------

    def receive(self, frame: str | bytes, now_ns: int) -> None:
        """Handle one frame from the client."""
        self.now_ns = now_ns
        if self.close_reason is not None:
            return
        try:
            request = api.request_decoder.decode(frame)
        except msgspec.ValidationError as exc:
            self.error(_request_id(frame), ErrorCode.INVALID_REQUEST, str(exc))
            return
        except msgspec.DecodeError as exc:
            self.error(None, ErrorCode.INVALID_REQUEST, f"malformed JSON: {exc}")
            return
        if not self._messages.take(now_ns) or (
                isinstance(request, _ORDER_OPS) and not self._orders.take(now_ns)):
            self._strike(request.id)
            return
        self._strikes = 0
        try:
            self._dispatch(request, now_ns)
        except RequestError as exc:
            self.error(request.id, exc.code, exc.msg)

    def _strike(self, request_id: api.RequestId) -> None:
        self._strikes += 1
        if self._strikes > self.limits.abuse_strikes:
            self.close(CLOSE_POLICY, "rate limit exceeded repeatedly")
        else:
            self.error(request_id, ErrorCode.RATE_LIMITED, "rate limit exceeded")

    def _dispatch(self, request: api.ClientRequest, now_ns: int) -> None:
        if isinstance(request, api.Place):
            order_entry.place(self.gateway, self, self._account(now_ns), request)
        elif isinstance(request, api.Cancel):
            order_entry.cancel(self.gateway, self, self._account(now_ns), request)
        elif isinstance(request, api.Amend):
            order_entry.amend(self.gateway, self, self._account(now_ns), request)
        elif isinstance(request, api.Subscribe):
            self._subscribe(request)
        elif isinstance(request, api.Unsubscribe):
            self._unsubscribe(request)
        elif isinstance(request, api.Resync):
            depth = self.books.get(request.symbol)
            if depth is None:
                raise RequestError(ErrorCode.NOT_SUBSCRIBED,
                                   f"not subscribed to book {request.symbol}")
            self.send(self.gateway.books[request.symbol].view(depth).snapshot(), request.symbol)
        elif isinstance(request, api.Ping):
            self.reply(api.Pong(request.id, str(now_ns)))
        elif isinstance(request, api.Challenge):
            self.nonce = Nonce(now_ns)
            self.reply(api.ChallengeIssued(request.id, self.nonce.value,
                                           str(self.nonce.expires_ns)))
        elif isinstance(request, api.Login):
            self._login(request, now_ns)
        elif isinstance(request, api.MassCancel):
            order_entry.mass_cancel(self.gateway, self, self._account(now_ns), request)
        elif isinstance(request, api.CancelAllAfter):
            account = self._account(None)
            deadline = now_ns + request.timeout_ms * 1_000_000 if request.timeout_ms else 0
            self.gateway.cancel_all_after(account, deadline)
            self.reply(api.CancelAllAfterSet(request.id, request.timeout_ms,
                                             str(deadline) if deadline else ""))
        elif isinstance(request, api.Attest):
            self._attest(request, now_ns)
        else:
            assert isinstance(request, api.Withdraw)
            order_entry.withdraw(self.gateway, self, self._account(now_ns), request)

    def _attest(self, request: api.Attest, now_ns: int) -> None:
        handler = self.gateway.attest_handler
        if handler is None:
            raise RequestError(ErrorCode.UNAVAILABLE, "this exchange runs without a chain")
        refused = handler(request, now_ns)
        if refused is not None:
            raise RequestError(*refused)
        self.reply(api.Attested(request.id, request.node.lower(), request.epoch))

    def _account(self, now_ns: int | None) -> str:
        """The logged-in account, after the account-wide rate limit for order ops."""
        if self.account is None:
            raise RequestError(ErrorCode.NOT_LOGGED_IN, "log in first")
        if now_ns is not None and not self.gateway.account_allows(self.account, now_ns):
            raise RequestError(ErrorCode.RATE_LIMITED, "account rate limit exceeded")
        return self.account

    def _book(self, symbol: str) -> SymbolBook:
        return order_entry.book_of(self.gateway, symbol)

    def _login(self, request: api.Login, now_ns: int) -> None:
        if self.account is not None:
            raise RequestError(ErrorCode.ALREADY_LOGGED_IN, f"already logged in as "
                                                            f"{self.account}")
        if not self.nonce.take(request.nonce, now_ns):
            raise RequestError(ErrorCode.LOGIN_FAILED, "unknown, expired or spent nonce; "
                                                       "ask for a new one with challenge")
        delegation = request.delegation
        try:
            key = verify_login(
                request.account, request.signature, request.nonce,
                delegated_key=delegation.key if delegation else None,
                expires=delegation.expires if delegation else None,
                delegation_signature=delegation.signature if delegation else None,
                now_ns=now_ns)
        except LoginError as exc:
            raise RequestError(ErrorCode.LOGIN_FAILED, str(exc)) from None
        self.account = request.account.lower()
        self.key = key
        self.cancel_on_disconnect = request.cancel_on_disconnect
        self.gateway.login(self, self.account)
        self.reply(api.LoggedIn(request.id, self.account, key, self.cancel_on_disconnect))

    # --- subscriptions ----------------------------------------------------------------------

    def _subscribe(self, request: api.Subscribe) -> None:
        channel = request.channel
        gateway = self.gateway
        if channel in api.PRIVATE_CHANNELS:
            account = self._account(None)
            if request.symbols:
                raise RequestError(ErrorCode.INVALID_REQUEST,
                                   f"{channel} takes no symbols")
            self.private.add(channel)
            self.reply(api.Subscribed(request.id, channel.value, []))
            if channel != Channel.FILLS:
                self.send(gateway.private_snapshot(account, channel))
            return
        if channel == Channel.ATTEST:
            gateway.attest_subscribers.add(self)
            self.reply(api.Subscribed(request.id, channel.value, []))
            if gateway.attest_epoch is not None:
                self.send(gateway.attest_epoch)
            return
        if channel == Channel.INSTRUMENTS:
            gateway.instrument_subscribers.add(self)
            self.reply(api.Subscribed(request.id, channel.value, []))
            self.send(gateway.instruments_snapshot())
            return
        if not request.symbols:
            raise RequestError(ErrorCode.INVALID_REQUEST, f"{channel} needs symbols")
        for symbol in request.symbols:
            self._book(symbol)
        self.reply(api.Subscribed(request.id, channel.value, list(request.symbols),
                                  request.depth if channel == Channel.BOOK else None))
        for symbol in request.symbols:
            book = gateway.books[symbol]
            if channel == Channel.BOOK:
                self._drop_book(symbol)
                self.books[symbol] = request.depth
                gateway.book_subscribers.setdefault((symbol, request.depth), set()).add(self)
                self.send(book.view(request.depth).snapshot(), symbol)
            elif channel == Channel.TRADES:
                gateway.trade_subscribers.setdefault(symbol, set()).add(self)
                self.send(book.trades_message("snapshot", list(book.trades)))
            else:
                gateway.ticker_subscribers.setdefault(symbol, set()).add(self)
                book.roll_volume(self.now_ns)
                self.send(book.ticker("snapshot", self.now_ns))

    def _drop_book(self, symbol: str) -> None:
        depth = self.books.pop(symbol, None)
        if depth is None:
            return
        subscribers = self.gateway.book_subscribers.get((symbol, depth))
        if subscribers is not None:
            subscribers.discard(self)
            if not subscribers:
                del self.gateway.book_subscribers[(symbol, depth)]
                self.gateway.books[symbol].views.pop(depth, None)

    def _unsubscribe(self, request: api.Unsubscribe) -> None:
        channel = request.channel
        gateway = self.gateway
        if channel in api.PRIVATE_CHANNELS:
            self.private.discard(channel)
        elif channel == Channel.ATTEST:
            gateway.attest_subscribers.discard(self)
        elif channel == Channel.INSTRUMENTS:
            gateway.instrument_subscribers.discard(self)
        else:
            table = gateway.trade_subscribers if channel == Channel.TRADES else \
                gateway.ticker_subscribers
            symbols = request.symbols or (list(self.books) if channel == Channel.BOOK else
                                          [s for s, subs in table.items() if self in subs])
            for symbol in symbols:
                if channel == Channel.BOOK:
                    self._drop_book(symbol)
                else:
                    table.get(symbol, set()).discard(self)
        self.reply(api.Unsubscribed(request.id, channel.value, list(request.symbols)))

    # --- time -------------------------------------------------------------------------------

    def tick(self, now_ns: int) -> None:
        """Heartbeat an idle connection."""
        self.now_ns = now_ns
        if now_ns - self.last_sent_ns >= self.limits.heartbeat_ns and not self.outbox:
            seqs = {s: self.gateway.books[s].view(d).seq for s, d in sorted(self.books.items())}
            self.send(msgspec.json.encode(api.Heartbeat("heartbeat", "heartbeat", str(now_ns),
                                                        seqs)).decode())
            self.last_sent_ns = now_ns

    def closed(self) -> None:
        """The connection is gone: unsubscribe, and cancel orders if asked to."""
        self.gateway.disconnect(self, self.cancel_on_disconnect)


def _request_id(frame: str | bytes) -> api.RequestId:
    """The ``id`` of a request that failed validation, if it can be read at all."""
    try:
        value = msgspec.json.decode(frame)
    except msgspec.DecodeError:
        return None
    request_id = value.get("id") if isinstance(value, dict) else None
    return request_id if isinstance(request_id, int | str) else None
