"""One websocket connection's protocol state, sans-I/O.

A `ClientSession` is fed each text frame (`receive`) and the clock (`tick`); it answers by
putting messages in its outbox, which the server drains to the socket. It never raises on
client input: every bad request becomes an `Error` to that client only. The outbox is bounded:
past ``outbox_soft`` queued messages its book updates are conflated into fresh snapshots, past
``outbox_hard`` the session asks to be closed as too slow.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable

import msgspec

from engine.commands import AmendOrder, CancelAll, CancelOrder, PlaceOrder, RequestWithdrawal
from engine.instruments import InstrumentError
from engine.messages import OrderType, SelfTradePrevention, Side, TimeInForce
from gateway import api
from gateway.api import Channel, ErrorCode
from gateway.auth import LoginError, Nonce, verify_login
from gateway.hub import Gateway, Session, Waiter
from gateway.market_data import SymbolBook
from gateway.orders import TrackedOrder
from gateway.rate_limit import TokenBucket

CLOSE_POLICY = 1008  # websocket close code: policy violation
CLOSE_TRY_AGAIN = 1013

_SIDES = {api.OrderSide.BUY: Side.BUY, api.OrderSide.SELL: Side.SELL}
_TYPES = {api.OrderKind.LIMIT: OrderType.LIMIT, api.OrderKind.MARKET: OrderType.MARKET,
          api.OrderKind.STOP_LIMIT: OrderType.STOP_LIMIT,
          api.OrderKind.STOP_MARKET: OrderType.STOP_MARKET}
_TIFS = {api.OrderTif.GTC: TimeInForce.GTC, api.OrderTif.IOC: TimeInForce.IOC,
         api.OrderTif.FOK: TimeInForce.FOK, api.OrderTif.GTD: TimeInForce.GTD}
_STPS = {api.Stp.CANCEL_NEWEST: SelfTradePrevention.CANCEL_NEWEST,
         api.Stp.CANCEL_OLDEST: SelfTradePrevention.CANCEL_OLDEST,
         api.Stp.CANCEL_BOTH: SelfTradePrevention.CANCEL_BOTH,
         api.Stp.DECREMENT: SelfTradePrevention.DECREMENT}
_USDC = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,6})?$")
_ORDER_OPS = (api.Place, api.Cancel, api.Amend, api.MassCancel, api.Withdraw)


class RequestError(Exception):
    """A request refused before it reached the engine."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def parse_usdc(text: str) -> int:
    """A positive USDC amount (up to 6 decimals) as micro-USDC."""
    if not _USDC.fullmatch(text):
        raise RequestError(ErrorCode.INVALID_AMOUNT,
                           f"amount {text!r} is not a plain decimal with at most 6 places")
    whole, _, fraction = text.partition(".")
    micro = int(whole) * 1_000_000 + int(fraction.ljust(6, "0") or "0")
    if micro <= 0:
        raise RequestError(ErrorCode.INVALID_AMOUNT, "amount must be positive")
    return micro


def _convert(convert: Callable[[str], int], text: str) -> int:
    try:
        return convert(text)
    except InstrumentError as exc:
        raise RequestError(exc.code.value.lower(), str(exc)) from None


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
            self._place(request, now_ns)
        elif isinstance(request, api.Cancel):
            self._cancel(request, now_ns)
        elif isinstance(request, api.Amend):
            self._amend(request, now_ns)
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
            account = self._account(now_ns)
            if request.symbol is not None:
                self._book(request.symbol)
            side = _SIDES[request.side] if request.side is not None else None
            self.gateway.submit(CancelAll(account, request.symbol, side),
                                Waiter(self, request.id, "mass_cancel", account))
        elif isinstance(request, api.CancelAllAfter):
            account = self._account(None)
            deadline = now_ns + request.timeout_ms * 1_000_000 if request.timeout_ms else 0
            self.gateway.cancel_all_after(account, deadline)
            self.reply(api.CancelAllAfterSet(request.id, request.timeout_ms,
                                             str(deadline) if deadline else ""))
        else:
            assert isinstance(request, api.Withdraw)
            account = self._account(now_ns)
            amount = parse_usdc(request.amount)
            gateway = self.gateway
            withdrawal_id = gateway.next_withdrawal_id
            gateway.next_withdrawal_id += 1
            gateway.submit(RequestWithdrawal(withdrawal_id, account, amount),
                           Waiter(self, request.id, "withdraw", account))

    def _account(self, now_ns: int | None) -> str:
        """The logged-in account, after the account-wide rate limit for order ops."""
        if self.account is None:
            raise RequestError(ErrorCode.NOT_LOGGED_IN, "log in first")
        if now_ns is not None and not self.gateway.account_allows(self.account, now_ns):
            raise RequestError(ErrorCode.RATE_LIMITED, "account rate limit exceeded")
        return self.account

    def _book(self, symbol: str) -> SymbolBook:
        book = self.gateway.books.get(symbol)
        if book is None:
            raise RequestError(ErrorCode.UNKNOWN_SYMBOL, f"unknown symbol {symbol!r}")
        return book

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

    def _place(self, request: api.Place, now_ns: int) -> None:
        account = self._account(now_ns)
        gateway = self.gateway
        existing = gateway.tracker.find(account, None, request.cl_ord_id)
        if existing is not None:  # idempotent: the live order, not a second one
            self.reply(api.OrderReply(request.id, "place",
                                      existing.view(gateway.books[existing.symbol])))
            return
        inflight = gateway.inflight.get((account, request.cl_ord_id))
        if inflight is not None:
            inflight.duplicates.append((self, request.id))
            return
        book = self._book(request.symbol)
        order_type = _TYPES[request.type]
        needs_price = order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
        needs_stop = order_type in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET)
        if needs_price != (request.price is not None):
            raise RequestError(ErrorCode.INVALID_REQUEST,
                               f"{request.type} orders {'need' if needs_price else 'take no'} "
                               "price")
        if needs_stop != (request.stop_price is not None):
            raise RequestError(ErrorCode.INVALID_REQUEST,
                               f"{request.type} orders {'need' if needs_stop else 'take no'} "
                               "stop_price")
        command = PlaceOrder(
            account, book.symbol, _SIDES[request.side],
            _convert(book.lots, request.qty),
            _convert(book.ticks, request.price) if request.price is not None else 0,
            order_type, _TIFS[request.tif], request.post_only,
            _convert(book.lots, request.display_qty)
            if request.display_qty is not None else 0,
            _convert(book.ticks, request.stop_price)
            if request.stop_price is not None else 0,
            request.expire_ts, _STPS[request.stp], request.cl_ord_id,
        )
        gateway.submit(command, Waiter(self, request.id, "place", account,
                                       cl_ord_id=request.cl_ord_id))

    def _cancel(self, request: api.Cancel, now_ns: int) -> None:
        account = self._account(now_ns)

        def cancel(order: TrackedOrder) -> None:
            self.gateway.submit(CancelOrder(account, order.symbol, order.order_id),
                                Waiter(self, request.id, "cancel", account, order.order_id))

        self._with_order(account, request.id, request.order_id, request.cl_ord_id, cancel)

    def _amend(self, request: api.Amend, now_ns: int) -> None:
        account = self._account(now_ns)
        if request.price is None and request.qty is None:
            raise RequestError(ErrorCode.INVALID_REQUEST, "amend needs price or qty")

        def amend(order: TrackedOrder) -> None:
            book = self._book(order.symbol)
            price = _convert(book.ticks, request.price) if request.price is not None \
                else order.price
            qty = _convert(book.lots, request.qty) if request.qty is not None \
                else order.remaining
            self.gateway.submit(AmendOrder(account, order.symbol, order.order_id, price, qty),
                                Waiter(self, request.id, "amend", account, order.order_id))

        self._with_order(account, request.id, request.order_id, request.cl_ord_id, amend)

    def _with_order(self, account: str, request_id: api.RequestId, order_id: int | None,
                    cl_ord_id: str | None, act: Callable[[TrackedOrder], None]) -> None:
        """Run ``act`` on the account's live order; for an order whose place is still on its
        way to the journal (named by ``cl_ord_id``), run it once the place is answered, so a
        cancel sent right after a place is not refused for arriving first."""
        if (order_id is None) == (cl_ord_id is None):
            raise RequestError(ErrorCode.INVALID_REQUEST, "give order_id or cl_ord_id")
        order = self.gateway.tracker.find(account, order_id, cl_ord_id)
        if order is not None:
            act(order)
            return
        placing = self.gateway.inflight.get((account, cl_ord_id)) if cl_ord_id else None
        if placing is None:
            raise RequestError(ErrorCode.UNKNOWN_ORDER, "no such live order of this account")

        def when_placed(placed: TrackedOrder | None) -> None:
            try:
                if placed is None or not placed.live:
                    raise RequestError(ErrorCode.UNKNOWN_ORDER,
                                       "no such live order of this account")
                act(placed)
            except RequestError as exc:
                self.error(request_id, exc.code, exc.msg)

        placing.then.append(when_placed)

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
