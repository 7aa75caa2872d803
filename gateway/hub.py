"""The gateway's shared state, sans-I/O: it submits the sessions' commands to the sequencer and
turns the released events into replies, market data and private channel messages.

`Gateway` is driven by its server: `submit` from sessions, `publish` with what the sequencer
released (only durable commands' events ever reach a client), `tick` with the clock. Everything
it sends goes into sessions' outboxes (`gateway.session.ClientSession.send`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from engine.commands import CancelAll, CancelOrder, ExchangeCommand
from engine.events import (
    BalanceChanged,
    CommandRejected,
    ExchangeEvent,
    FinalSettlement,
    IndexFixed,
    InstrumentHalted,
    InstrumentListed,
    MarkPrice,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderRejected,
    OrderTriggered,
    PositionChanged,
    Reason,
    Trade,
    WithdrawalRequested,
)
from engine.events import BookUpdate as LevelChanged
from engine.exchange import Exchange
from engine.instruments import Instrument
from engine.messages import Side
from engine.sequencer import Released, Sequencer
from gateway.api import (
    Attest,
    BalanceView,
    Channel,
    Error,
    FillView,
    InstrumentsMessage,
    InstrumentView,
    MassCancelled,
    OrderReply,
    PositionView,
    PrivateMessage,
    RequestId,
    WithdrawalAccepted,
)
from gateway.market_data import SymbolBook, side_name, usdc
from gateway.orders import OrderTracker, TrackedOrder
from gateway.rate_limit import RateLimit, TokenBucket

_encode = msgspec.json.Encoder().encode


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The gateway's protections; every number is per second or a count of messages."""

    orders_per_connection: RateLimit = RateLimit(2_000, 4_000)
    orders_per_account: RateLimit = RateLimit(5_000, 10_000)
    messages_per_connection: RateLimit = RateLimit(5_000, 10_000)
    abuse_strikes: int = 1_000
    """Rate-limited requests in a row before the connection is closed."""
    outbox_soft: int = 2_000
    """Queued messages past which book channels are conflated to fresh snapshots."""
    outbox_hard: int = 10_000
    """Queued messages past which a connection is closed as too slow."""
    heartbeat_ns: int = 1_000_000_000


@dataclass
class Waiter:
    """A request waiting for its command's events: who asked, and what for."""

    session: Session
    request_id: RequestId
    op: str
    account: str
    order_id: int = 0
    duplicates: list[tuple[Session, RequestId]] = field(default_factory=list)
    cl_ord_id: str = ""
    cancel_when_done: bool = False
    """The connection closed with cancel-on-disconnect before the place was answered."""
    then: list[Callable[[TrackedOrder | None], None]] = field(default_factory=list)
    """What to do with the placed order (None if refused) once the place is answered."""


class Session:
    """What the hub needs of a connection (see `gateway.session.ClientSession`)."""

    account: str | None
    private: set[Channel]
    placed: set[int]

    def send(self, payload: str, book_symbol: str | None = None) -> None:
        """Queue a message for the client."""
        raise NotImplementedError

    def reply(self, message: msgspec.Struct) -> None:
        """Queue a reply for the client."""
        self.send(_encode(message).decode())


AttestHandler = Callable[[Attest, int], tuple[str, str] | None]
"""An attestation and the time (ns) in; None when accepted, else (reason code, detail)."""


class AccountListener(Protocol):
    """Something that follows an account's own events as they are released (the FIX
    acceptor builds its ExecutionReports from them)."""

    def on_account_event(self, event: ExchangeEvent, seq: int, index: int, ts: int) -> None:
        """One event of the account, once durable: the ``index``-th event of command
        ``seq`` (together unique for ever), stamped ``ts``."""


def accounts_of(event: ExchangeEvent) -> tuple[str, ...]:
    """The accounts whose own orders, fills or money an event is about."""
    if isinstance(event, Trade):
        if event.maker_account == event.taker_account:
            return (event.maker_account,)
        return (event.maker_account, event.taker_account)
    if isinstance(event, OrderAccepted | OrderRejected | OrderCancelled | OrderAmended
                  | OrderTriggered | BalanceChanged | PositionChanged | WithdrawalRequested
                  | CommandRejected):
        return (event.account,)
    return ()


class Gateway:
    """Sessions, subscriptions, order tracking and fan-out around one sequencer."""

    def __init__(self, sequencer: Sequencer, *, limits: Limits | None = None,
                 clock: Callable[[], int] = time.time_ns,
                 market_data_interval_ns: int = 0) -> None:
        self.sequencer = sequencer
        self.exchange: Exchange = sequencer.exchange
        self.limits = limits or Limits()
        self.clock = clock
        self.books: dict[str, SymbolBook] = {}
        for _, market in sorted(self.exchange.markets.items()):
            self._add_book(market.instrument)
        self.tracker = OrderTracker(self.exchange.orders.values())
        self.sessions: set[Session] = set()
        self.book_subscribers: dict[tuple[str, int], set[Session]] = {}
        self.trade_subscribers: dict[str, set[Session]] = {}
        self.ticker_subscribers: dict[str, set[Session]] = {}
        self.instrument_subscribers: set[Session] = set()
        self.by_account: dict[str, set[Session]] = {}
        self.private_seq: dict[tuple[str, Channel], int] = {}
        self.waiting: dict[int, Waiter] = {}
        self.inflight: dict[tuple[str, str], Waiter] = {}
        self._account_buckets: dict[str, TokenBucket] = {}
        self.dead_man: dict[str, int] = {}
        """Each account's cancel-all-after deadline (ns); it outlives the connection that set
        it, since a vanished client is what the switch is for."""
        self.next_withdrawal_id = max(self.exchange.withdrawals_seen, default=0) + 1
        self._touched: dict[int, TrackedOrder] = {}
        self.account_listeners: dict[str, set[AccountListener]] = {}
        self.market_data_interval_ns = market_data_interval_ns
        """0: book, trade and ticker messages go out with each publish; else they wait in
        ``dirty`` for `flush_market_data`, which the server calls at most this often, so a
        busy book sends one update per interval however many commands touched it."""
        self.dirty: dict[str, SymbolBook] = {}
        self._dirty_ts = 0
        self.attest_subscribers: set[Session] = set()
        self.attest_epoch: str | None = None
        """The current epoch's ``attest`` channel message, sent to each new subscriber."""
        self.attest_handler: AttestHandler | None = None
        """Checks an attestation (the chain service sets it); returns why it was refused."""
        self.event_listeners: list[Callable[[ExchangeEvent, int], None]] = []
        """Called with every released event and its command's time, in sequence order
        (other parts of the process: the chain service's record of settled deliveries)."""

    def _add_book(self, instrument: Instrument) -> None:
        market = self.exchange.markets[instrument.symbol]
        book = SymbolBook(instrument, market.book.depth(Side.BUY, 1 << 30),
                          market.book.depth(Side.SELL, 1 << 30), market.mark)
        book.halted, book.settled = market.halted, market.settled
        last = market.book.last_price
        book.last = last or None
        fixes = [(day, price) for (underlying, day), price in self.exchange.fixes.items()
                 if underlying == instrument.underlying]
        book.index = max(fixes)[1] if fixes else None
        self.books[instrument.symbol] = book

    # --- order entry ------------------------------------------------------------------------

    def account_allows(self, account: str, now_ns: int) -> bool:
        """The account's order rate limit, shared by all its connections."""
        bucket = self._account_buckets.get(account)
        if bucket is None:
            bucket = self._account_buckets[account] = TokenBucket(
                self.limits.orders_per_account, now_ns)
        return bucket.take(now_ns)

    def submit(self, command: ExchangeCommand, waiter: Waiter | None = None) -> int:
        """Sequence ``command``; ``waiter`` gets the reply once its events are released."""
        seq = self.sequencer.submit(command)
        if waiter is not None:
            self.waiting[seq] = waiter
            if waiter.cl_ord_id:
                self.inflight[(waiter.account, waiter.cl_ord_id)] = waiter
        return seq

    def login(self, session: Session, account: str) -> None:
        """Note that ``session`` acts for ``account``."""
        self.by_account.setdefault(account, set()).add(session)

    def disconnect(self, session: Session, cancel_on_disconnect: bool) -> None:
        """Forget a closed connection; cancel its live orders if it asked for that."""
        self.sessions.discard(session)
        for subscribers in (*self.book_subscribers.values(), *self.trade_subscribers.values(),
                            *self.ticker_subscribers.values(), self.instrument_subscribers,
                            self.attest_subscribers):
            subscribers.discard(session)
        for key in [k for k, s in self.book_subscribers.items() if not s]:
            del self.book_subscribers[key]
            self.books[key[0]].views.pop(key[1], None)
        account = session.account
        if account is None:
            return
        self.by_account.get(account, set()).discard(session)
        if cancel_on_disconnect:
            for order_id in sorted(session.placed):
                order = self.tracker.orders.get(order_id)
                if order is not None and order.account == account:
                    self.submit(CancelOrder(account, order.symbol, order_id))
            for waiter in self.waiting.values():  # places not answered yet
                if waiter.session is session and waiter.op == "place":
                    waiter.cancel_when_done = True

    def cancel_all_after(self, account: str, deadline_ns: int) -> None:
        """Arm the account's dead-man's switch for ``deadline_ns`` (0 turns it off)."""
        if deadline_ns:
            self.dead_man[account] = deadline_ns
        else:
            self.dead_man.pop(account, None)

    def publish_attest(self, payload: str) -> None:
        """Send a new epoch to the ``attest`` channel (and keep it for late subscribers)."""
        self.attest_epoch = payload
        for session in self.attest_subscribers:
            session.send(payload)

    def tick(self, now_ns: int) -> None:
        """Fire the dead-man's switches that are due: cancel every order of their accounts."""
        for account, deadline in list(self.dead_man.items()):
            if now_ns >= deadline:
                del self.dead_man[account]
                self.submit(CancelAll(account))

    # --- subscriptions ------------------------------------------------------------------------

    def instruments_snapshot(self) -> str:
        """The whole registry, encoded."""
        views = [self._instrument_view(b) for b in self.books.values()]
        return _encode(InstrumentsMessage("instruments", "snapshot", views)).decode()

    def _instrument_view(self, book: SymbolBook) -> InstrumentView:
        spec = book.instrument
        expiry = spec.expiry
        state = "settled" if book.settled else "halted" if book.halted else "open"
        return InstrumentView(
            spec.symbol, spec.underlying, str(spec.kind), str(spec.settlement),
            spec.description, spec.quantity_unit, spec.price_unit, str(spec.tick),
            str(spec.lot_size), spec.price_precision, spec.size_precision,
            book.price(spec.min_price_ticks), book.price(spec.max_price_ticks), state,
            f"{expiry.year:04d}-{expiry.month:02d}" if expiry else None,
            str(expiry.last_trade_ns) if expiry else None,
        )

    def private_snapshot(self, account: str, channel: Channel) -> str:
        """A private channel's current state for the account, at its current seq."""
        seq = self.private_seq.get((account, channel), 0)
        data: list[msgspec.Struct] = []
        if channel == Channel.ORDERS:
            data = [o.view(self.books[o.symbol]) for o in self.tracker.orders.values()
                    if o.account == account]
        elif channel == Channel.BALANCES:
            b = self.exchange.ledger.accounts.get(account)
            if b is not None:
                data = [BalanceView(usdc(b.available), usdc(b.reserved), usdc(b.margin),
                                    usdc(b.escrow))]
        elif channel == Channel.POSITIONS:
            for symbol, market in sorted(self.exchange.markets.items()):
                p = market.positions.get(account)
                if p is not None and (p.qty or p.realized_pnl):
                    data.append(self._position_view(symbol, p.qty, p.entry_value,
                                                    p.realized_pnl))
        return _encode(PrivateMessage(channel.value, "snapshot", seq, data)).decode()

    def _position_view(self, symbol: str, qty: int, entry_value: int,
                       realized_pnl: int) -> PositionView:
        book = self.books[symbol]
        lots = book.qty(abs(qty)) if qty else "0"
        entry = None
        if qty:  # the average entry, rounded half up to a tick
            value, count = abs(entry_value), abs(qty)
            entry = book.price(max(1, (2 * value + count) // (2 * count)))
        return PositionView(symbol, f"-{lots}" if qty < 0 else lots, entry, usdc(realized_pnl))

    # --- what the sequencer released ------------------------------------------------------

    def publish(self, released: list[Released]) -> None:
        """Send replies, market data and private updates for released commands."""
        if not released:
            return
        private: dict[tuple[str, Channel], list[msgspec.Struct]] = {}
        changed: dict[str, SymbolBook] = {}
        listed: list[SymbolBook] = []
        for item in released:
            self._touched.clear()
            for event_listener in self.event_listeners:
                for event in item.events:
                    event_listener(event, item.ts)
            listeners = self.account_listeners
            for index, event in enumerate(item.events):
                if listeners:  # before the tracker applies it: they see the order as it was
                    for account in accounts_of(event):
                        for listener in listeners.get(account, ()):
                            listener.on_account_event(event, item.seq, index, item.ts)
                self._apply(event, item.ts, private, changed, listed)
            waiter = self.waiting.pop(item.seq, None)
            if waiter is not None:
                self._answer(waiter, item.events)
        ts = released[-1].ts
        if self.market_data_interval_ns:
            self.dirty.update(changed)
            self._dirty_ts = ts
        else:
            for book in changed.values():
                self._publish_book(book, ts)
        if listed:
            message = _encode(InstrumentsMessage(
                "instruments", "update", [self._instrument_view(b) for b in listed])).decode()
            for session in self.instrument_subscribers:
                session.send(message)
        for (account, channel), items in private.items():
            seq = self.private_seq.get((account, channel), 0) + 1
            self.private_seq[(account, channel)] = seq
            message = _encode(PrivateMessage(channel.value, "update", seq, items)).decode()
            for session in self.by_account.get(account, ()):
                if channel in session.private:
                    session.send(message)

    def _apply(self, event: ExchangeEvent, ts: int,
               private: dict[tuple[str, Channel], list[msgspec.Struct]],
               changed: dict[str, SymbolBook], listed: list[SymbolBook]) -> None:
        tracker = self.tracker
        if isinstance(event, LevelChanged):
            book = self.books[event.symbol]
            book.apply_level(event)
            changed[event.symbol] = book
        elif isinstance(event, Trade):
            book = self.books[event.symbol]
            book.apply_trade(event, ts)
            changed[event.symbol] = book
            maker, taker = tracker.traded(event)
            for order, fee, liquidity in ((maker, event.maker_fee, "maker"),
                                          (taker, event.taker_fee, "taker")):
                if order is None:
                    continue
                self._order_changed(order, private)
                fills = self._listened(private, order.account, Channel.FILLS)
                if fills is not None:
                    fills.append(FillView(
                        event.trade_id, order.order_id, order.cl_ord_id, event.symbol,
                        side_name(order.side), book.price(event.price), book.qty(event.qty),
                        usdc(fee), liquidity, str(ts)))
        elif isinstance(event, OrderAccepted):
            self._order_changed(tracker.accepted(event), private)
        elif isinstance(event, OrderCancelled):
            self._order_changed(tracker.cancelled(event), private)
        elif isinstance(event, OrderAmended):
            self._order_changed(tracker.amended(event), private)
        elif isinstance(event, OrderTriggered):
            self._order_changed(tracker.triggered(event), private)
        elif isinstance(event, BalanceChanged):
            balances = self._listened(private, event.account, Channel.BALANCES)
            if balances is not None:
                balances.append(BalanceView(usdc(event.available), usdc(event.reserved),
                                            usdc(event.margin), usdc(event.escrow)))
        elif isinstance(event, PositionChanged):
            positions = self._listened(private, event.account, Channel.POSITIONS)
            if positions is not None:
                positions.append(self._position_view(event.symbol, event.qty,
                                                     event.entry_value, event.realized_pnl))
        elif isinstance(event, MarkPrice):
            book = self.books[event.symbol]
            book.mark = event.price
            book.ticker_changed = True
            changed[event.symbol] = book
        elif isinstance(event, IndexFixed):
            for book in self.books.values():
                if book.instrument.underlying == event.underlying:
                    book.index = event.price
                    book.ticker_changed = True
                    changed[book.symbol] = book
        elif isinstance(event, InstrumentListed):
            self._add_book(self.exchange.markets[event.symbol].instrument)
            listed.append(self.books[event.symbol])
        elif isinstance(event, InstrumentHalted | FinalSettlement):
            book = self.books[event.symbol]
            book.halted = True
            book.settled = book.settled or isinstance(event, FinalSettlement)
            listed.append(book)

    def _order_changed(self, order: TrackedOrder | None,
                       private: dict[tuple[str, Channel], list[msgspec.Struct]]) -> None:
        if order is None:
            return
        self._touched[order.order_id] = order
        orders = self._listened(private, order.account, Channel.ORDERS)
        if orders is not None:
            orders.append(order.view(self.books[order.symbol]))

    def _listened(self, private: dict[tuple[str, Channel], list[msgspec.Struct]],
                  account: str, channel: Channel) -> list[msgspec.Struct] | None:
        """The batch of ``channel`` messages for ``account``, or None when none of its
        connections subscribed to it (nothing is built, and its seq stays put)."""
        items = private.get((account, channel))
        if items is None:
            sessions = self.by_account.get(account)
            if not sessions or not any(channel in s.private for s in sessions):
                return None
            items = private[(account, channel)] = []
        return items

    def flush_market_data(self) -> None:
        """Publish what changed in the books since the last flush."""
        dirty, self.dirty = self.dirty, {}
        for book in dirty.values():
            self._publish_book(book, self._dirty_ts)

    def _publish_book(self, book: SymbolBook, ts: int) -> None:
        symbol = book.symbol
        if book.changed:
            book.changed = False
            for depth, view in list(book.views.items()):
                update = view.refresh(ts)
                if update is not None:
                    for session in self.book_subscribers.get((symbol, depth), ()):
                        session.send(update, symbol)
        if book.new_trades:
            message = book.trades_message("update", book.new_trades)
            book.new_trades = []
            for session in self.trade_subscribers.get(symbol, ()):
                session.send(message)
        if book.ticker_changed:
            book.ticker_changed = False
            subscribers = self.ticker_subscribers.get(symbol)
            if subscribers:
                book.roll_volume(ts)
                message = book.ticker("update", ts)
                for session in subscribers:
                    session.send(message)

    def _answer(self, waiter: Waiter, events: list[ExchangeEvent]) -> None:
        if waiter.cl_ord_id:
            self.inflight.pop((waiter.account, waiter.cl_ord_id), None)
        reply: msgspec.Struct | None = None
        for event in events:
            if isinstance(event, OrderRejected | CommandRejected) and \
                    event.account == waiter.account:
                reply = Error(waiter.request_id, str(event.reason),
                              f"{waiter.op} refused: {event.reason}")
                break
        if reply is None:
            if waiter.op == "mass_cancel":
                count = sum(1 for e in events if isinstance(e, OrderCancelled)
                            and e.reason == Reason.MASS_CANCEL and e.remaining == 0)
                reply = MassCancelled(waiter.request_id, count)
            elif waiter.op == "withdraw":
                done = next(e for e in events if isinstance(e, WithdrawalRequested))
                reply = WithdrawalAccepted(waiter.request_id, done.withdrawal_id,
                                           usdc(done.amount))
            else:
                order_id = waiter.order_id or next(
                    (e.order_id for e in events if isinstance(e, OrderAccepted)), 0)
                order = self._touched.get(order_id) or self.tracker.orders.get(order_id)
                if order is None:
                    reply = Error(waiter.request_id, "unknown_order",
                                  f"{waiter.op}: order {order_id} is no longer live")
                else:
                    if waiter.cancel_when_done and order.live:
                        self.submit(CancelOrder(order.account, order.symbol, order.order_id))
                    elif waiter.op == "place":
                        waiter.session.placed.add(order.order_id)
                    reply = OrderReply(waiter.request_id, waiter.op,
                                       order.view(self.books[order.symbol]))
        waiter.session.reply(reply)
        for session, request_id in waiter.duplicates:
            session.reply(msgspec.structs.replace(reply, id=request_id))
        if waiter.then:
            placed = self.tracker.orders.get(reply.order.order_id) \
                if isinstance(reply, OrderReply) and reply.order is not None else None
            for then in waiter.then:
                then(placed)
