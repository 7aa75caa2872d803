"""The exchange's FIX 4.4 application: logon authentication and order entry, sans-I/O.

A `FixConnection` wraps one acceptor `gateway.fix_session.FixSession` (CompID ``CMX``). Its
Logon is authenticated by `gateway.fix_logon.check_logon` (553 account, 554 signature).
Cancel-on-disconnect is the acceptor's default or the Logon's 8013 (Y/N).

Orders go through `gateway.order_entry`, exactly as websocket orders do: NewOrderSingle D,
OrderCancelRequest F, OrderCancelReplaceRequest G, OrderMassCancelRequest q (answered by
OrderMassCancelReport r). ExecutionReports 8 are built from the account's own events once
they are durable (`gateway.hub.AccountListener`), so fills of resting orders, self-trade
prevention and expiry are reported as well; refusals of cancels and replaces are
OrderCancelReject 9. Outbound messages use stock FIX 4.4 tags only. Self-trade prevention on
D is 7928 (N cancel newest, O cancel oldest, B cancel both, D decrement); post-only is
ExecInst 18 containing 6; an iceberg's shown size is MaxFloor 111. MarketDataRequest V is
served by `gateway.fix_market_data`, MassQuote i and QuoteCancel Z by `gateway.fix_quotes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import msgspec

from engine.events import (
    ExchangeEvent,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderRejected,
    OrderTriggered,
    Reason,
    Trade,
)
from engine.messages import OrderType, Side
from gateway import api, order_entry
from gateway.fix_codec import Field, FixMessage, format_utc_timestamp, parse_utc_timestamp
from gateway.fix_logon import check_logon
from gateway.fix_market_data import MarketDataDesk
from gateway.fix_quotes import QuoteDesk
from gateway.fix_session import Action, Deliver, FixSession, LoggedOn, LoggedOut, SessionConfig
from gateway.fix_store import StoreOpener
from gateway.hub import Gateway, Session
from gateway.order_entry import RequestError
from gateway.rate_limit import RateLimit, TokenBucket

EXCHANGE_COMP_ID = "CMX"
ORDER_RATE = RateLimit(2_000, 4_000)
"""Application messages per second (and burst) per FIX session."""
_SIDES = {"1": api.OrderSide.BUY, "2": api.OrderSide.SELL}
_ORD_TYPES = {"1": api.OrderKind.MARKET, "2": api.OrderKind.LIMIT, "3": api.OrderKind.STOP_MARKET,
              "4": api.OrderKind.STOP_LIMIT}
_TIFS = {"0": api.OrderTif.GTC, "1": api.OrderTif.GTC, "3": api.OrderTif.IOC,
         "4": api.OrderTif.FOK, "6": api.OrderTif.GTD}
_STPS = {"N": api.Stp.CANCEL_NEWEST, "O": api.Stp.CANCEL_OLDEST, "B": api.Stp.CANCEL_BOTH,
         "D": api.Stp.DECREMENT}
_FIX_TYPES = {OrderType.LIMIT: "2", OrderType.MARKET: "1", OrderType.STOP_MARKET: "3",
              OrderType.STOP_LIMIT: "4"}
_FIX_SIDES = {Side.BUY: "1", Side.SELL: "2"}
_SIDE_CODES = frozenset(("1", "2", "3", "4", "5", "6", "7", "8", "9", "A", "B", "C", "D", "E",
                         "F", "G"))  # Side 54's values in FIX 4.4


@dataclass
class FixOrder:
    """What ExecutionReports need to know of an order beyond its events."""

    order_id: int
    cl_ord_id: str
    symbol: str
    side: Side
    order_type: OrderType
    qty: int
    price: int
    cum_qty: int = 0
    cum_value: int = 0  # ticks x lots filled
    leaves: int = 0
    status: str = "0"
    pending: list[tuple[str, str, str]] = field(default_factory=list)
    """Cancels and replaces sent and not yet done: (kind F/G, ClOrdID, OrigClOrdID)."""


@dataclass
class Pending:
    """A FIX request waiting for the gateway's answer."""

    msg_type: str
    cl_ord_id: str
    orig_cl_ord_id: str = ""
    order_id: int = 0
    mass_type: str = ""
    side: str = ""  # of a D: a refusal's ExecutionReport must carry 54 and 55
    symbol: str = ""


class FixAcceptor:
    """What every FIX connection of one server shares."""

    def __init__(self, gateway: Gateway, open_store: StoreOpener, *,
                 cancel_on_disconnect: bool = False,
                 rate_limit: RateLimit = ORDER_RATE,
                 config: SessionConfig | None = None) -> None:
        self.gateway = gateway
        self.open_store = open_store
        self.cancel_on_disconnect = cancel_on_disconnect
        self.rate_limit = rate_limit
        self.config = config or SessionConfig(autocommit=False)
        """Sessions do not commit their stores themselves: the I/O layer does, after the
        journal has the orders an input caused (see `gateway.fix_server`)."""
        self.bindings: dict[str, str] = {}  # SenderCompID -> account
        self.last_logon_ns: dict[str, int] = {}
        self.orders: dict[int, FixOrder] = {}
        self.connections: set[FixConnection] = set()


class FixConnection(Session):
    """One FIX connection: its session, its account, its requests."""

    def __init__(self, acceptor: FixAcceptor, emit: Callable[[list[Action]], None],
                 now_ns: int) -> None:
        self.acceptor = acceptor
        self.gateway = acceptor.gateway
        self.emit = emit
        self.account: str | None = None
        self.private: set[api.Channel] = set()
        self.placed: set[int] = set()
        self.cancel_on_disconnect = acceptor.cancel_on_disconnect
        self.session = FixSession.acceptor(EXCHANGE_COMP_ID, acceptor.open_store,
                                           self._logon_check, acceptor.config)
        self._now = now_ns
        self._bucket = TokenBucket(acceptor.rate_limit, now_ns)
        self._pending: dict[int, Pending] = {}
        self._reported: set[str] = set()  # ClOrdIDs whose New came from their events
        self._next_request = 1
        self.market_data = MarketDataDesk(self)
        self.quotes = QuoteDesk(self)
        self._desks: dict[str, MarketDataDesk | QuoteDesk] = {
            "V": self.market_data, "i": self.quotes, "Z": self.quotes}
        acceptor.connections.add(self)

    @property
    def now_ns(self) -> int:
        """The time of the latest input."""
        return self._now

    # --- I/O layer calls ----------------------------------------------------------------------

    def connection_made(self, now_ns: int) -> list[Action]:
        """The transport is up."""
        return self._handle(self.session.connection_made(now_ns), now_ns)

    def on_bytes(self, data: bytes, now_ns: int) -> list[Action]:
        """Bytes from the counterparty."""
        return self._handle(self.session.on_bytes(data, now_ns), now_ns)

    def on_timer(self, now_ns: int) -> list[Action]:
        """Heartbeats and timeouts."""
        return self._handle(self.session.on_timer(now_ns), now_ns)

    def connection_lost(self, now_ns: int) -> list[Action]:
        """The transport went away."""
        return self._handle(self.session.connection_lost(now_ns), now_ns)

    def _handle(self, actions: list[Action], now_ns: int) -> list[Action]:
        self._now = now_ns
        out: list[Action] = []
        for action in actions:
            if isinstance(action, Deliver):
                out.extend(self._application(action.message))
            elif isinstance(action, LoggedOn):
                self._logged_on(action.message)
                out.append(action)
            elif isinstance(action, LoggedOut):
                self._logged_out()
                out.append(action)
            else:
                out.append(action)
        return out

    # --- logon ----------------------------------------------------------------------------------

    def _logon_check(self, logon: FixMessage) -> str | None:
        return check_logon(logon, self._now, self.acceptor.bindings,
                           self.acceptor.last_logon_ns)

    def _logged_on(self, logon: FixMessage) -> None:
        self.account = (logon.get(553) or "").lower()
        flag = logon.get(8013)
        if flag in ("Y", "N"):
            self.cancel_on_disconnect = flag == "Y"
        self.gateway.login(self, self.account)
        self.gateway.account_listeners.setdefault(self.account, set()).add(self)

    def _logged_out(self) -> None:
        if self.account is not None:
            self.gateway.account_listeners.get(self.account, set()).discard(self)
        self.gateway.disconnect(self, self.cancel_on_disconnect)
        self.acceptor.connections.discard(self)

    # --- application messages -------------------------------------------------------------

    def _application(self, message: FixMessage) -> list[Action]:
        kind = message.msg_type
        desk = self._desks.get(kind)
        if desk is None and kind not in ("D", "F", "G", "q"):
            return self._business_reject(message, "3", f"MsgType {kind} is not supported")
        if desk is None and not message.get(11):
            return self.session.reject(message, 1, self._now, tag=11,
                                       text="required tag 11 missing")
        if not self._bucket.take(self._now):
            return (desk or self).refuse(message, "rate limit exceeded")
        if desk is not None:
            return desk.handle(message)
        account = self.account
        assert account is not None, "delivered only after logon"
        request_id = self._next_request
        self._next_request += 1
        try:
            if kind == "D":
                return self._new_order(message, account, request_id)
            if kind == "F":
                return self._cancel(message, account, request_id)
            if kind == "G":
                return self._replace(message, account, request_id)
            return self._mass_cancel(message, account, request_id)
        except RequestError as exc:
            self._pending.pop(request_id, None)
            return self.refuse(message, exc.msg, exc.code)
        except msgspec.ValidationError as exc:
            self._pending.pop(request_id, None)
            return self.refuse(message, str(exc))

    def _new_order(self, message: FixMessage, account: str, request_id: int) -> list[Action]:
        side = _SIDES.get(message.get(54) or "")
        kind = _ORD_TYPES.get(message.get(40) or "")
        tif = _TIFS.get(message.get(59) or "1")
        stp = _STPS.get(message.get(7928) or "N")
        if side is None or kind is None or tif is None or stp is None:
            raise RequestError("invalid_request", "unsupported Side, OrdType, TimeInForce or "
                               "SelfTradePrevention (7928)")
        expire = message.get(126)
        expire_ns = parse_utc_timestamp(expire) if expire else 0
        request = msgspec.convert({
            "id": request_id, "symbol": message.get(55) or "", "side": side,
            "qty": message.get(38) or "", "cl_ord_id": message.get(11), "type": kind,
            "price": message.get(44), "stop_price": message.get(99), "tif": tif,
            "expire_ts": expire_ns or 0, "post_only": "6" in (message.get(18) or ""),
            "display_qty": message.get(111), "stp": stp,
        }, api.Place)
        existing = self.gateway.tracker.find(account, None, request.cl_ord_id)
        if existing is not None:  # the live order, not a second one: report its status
            self._status(self._adopt(existing.order_id), request.cl_ord_id)
            return []
        self._pending[request_id] = Pending("D", request.cl_ord_id, side=message.get(54) or "",
                                            symbol=request.symbol)
        order_entry.place(self.gateway, self, account, request)
        return []

    def _order_of(self, message: FixMessage, account: str) -> FixOrder:
        orig = message.get(41) or ""
        order_id = message.get_int(37)
        for order in self.acceptor.orders.values():
            if order.cl_ord_id == orig and order_id in (None, order.order_id):
                tracked = self.gateway.tracker.orders.get(order.order_id)
                if tracked is not None and tracked.account == account:
                    return order
        tracked = self.gateway.tracker.find(account, order_id, None if order_id else orig)
        if tracked is None:
            raise RequestError("unknown_order", f"no live order {orig or order_id}")
        return self._adopt(tracked.order_id)

    def _adopt(self, order_id: int) -> FixOrder:
        """The FIX state of an order placed elsewhere (the websocket API, a past run)."""
        known = self.acceptor.orders.get(order_id)
        if known is not None:
            return known
        tracked = self.gateway.tracker.orders[order_id]
        order = FixOrder(order_id, tracked.cl_ord_id, tracked.symbol, tracked.side,
                         tracked.order_type, tracked.qty, tracked.price, tracked.filled,
                         tracked.filled * tracked.price, tracked.remaining,
                         "1" if tracked.filled else "0")
        self.acceptor.orders[order_id] = order
        return order

    def _cancel(self, message: FixMessage, account: str, request_id: int) -> list[Action]:
        order = self._order_of(message, account)
        cl_ord_id = message.get(11) or ""
        self._pending[request_id] = Pending("F", cl_ord_id, order.cl_ord_id, order.order_id)
        order.pending.append(("F", cl_ord_id, order.cl_ord_id))
        order_entry.cancel(self.gateway, self, account,
                           api.Cancel(id=request_id, order_id=order.order_id))
        return []

    def _replace(self, message: FixMessage, account: str, request_id: int) -> list[Action]:
        order = self._order_of(message, account)
        book = order_entry.book_of(self.gateway, order.symbol)
        total = order_entry.convert(book.lots, message.get(38) or "")
        if total <= order.cum_qty:
            raise RequestError("invalid_quantity", "OrderQty must exceed the filled quantity")
        cl_ord_id = message.get(11) or ""
        self._pending[request_id] = Pending("G", cl_ord_id, order.cl_ord_id, order.order_id)
        order.pending.append(("G", cl_ord_id, order.cl_ord_id))
        order_entry.amend(self.gateway, self, account, api.Amend(
            id=request_id, order_id=order.order_id, price=message.get(44),
            qty=book.qty(total - order.cum_qty)))
        return []

    def _mass_cancel(self, message: FixMessage, account: str, request_id: int) -> list[Action]:
        mass_type = message.get(530) or ""
        if mass_type not in ("1", "7"):
            raise RequestError("invalid_request", "MassCancelRequestType 530 must be 1 "
                               "(by symbol) or 7 (all orders)")
        symbol = message.get(55) if mass_type == "1" else None
        side = _SIDES.get(message.get(54) or "")
        self._pending[request_id] = Pending("q", message.get(11) or "", mass_type=mass_type)
        order_entry.mass_cancel(self.gateway, self, account, api.MassCancel(
            id=request_id, symbol=symbol, side=side))
        return []

    # --- answers ------------------------------------------------------------------------------

    def send(self, payload: str, book_symbol: str | None = None) -> None:
        """Public channel messages: market data of this connection's subscriptions."""
        self.market_data.on_public(payload, book_symbol)

    def reply(self, message: msgspec.Struct) -> None:
        """The gateway's answer to one of this connection's requests."""
        request_id = getattr(message, "id", None)
        if isinstance(request_id, str):  # the quotes' orders
            self.quotes.reply(message)
            return
        pending = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if pending is None:
            return
        if isinstance(message, api.MassCancelled):
            self.out("r", [(11, pending.cl_ord_id), (37, f"MC{request_id}"),
                            (530, pending.mass_type), (531, pending.mass_type),
                            (533, message.cancelled)])
        elif isinstance(message, api.Error):
            if pending.msg_type in ("F", "G"):
                order = self.acceptor.orders.get(pending.order_id)
                if order is not None:
                    order.pending = [p for p in order.pending if p[1] != pending.cl_ord_id]
                self._cancel_reject(pending, order, message.msg,
                                    1 if message.code == "unknown_order" else 99)
            elif pending.msg_type == "q":
                self.out("r", [(11, pending.cl_ord_id), (37, "NONE"),
                                (530, pending.mass_type), (531, "0"), (58, message.msg)])
            # a refused D was reported from its OrderRejected event
        elif isinstance(message, api.OrderReply) and pending.msg_type == "D" and \
                message.order is not None:
            if pending.cl_ord_id in self._reported:
                self._reported.discard(pending.cl_ord_id)
            else:  # a second D with the ClOrdID of an order still in flight
                order = self._adopt_live(message.order.order_id)
                if order is not None:
                    self._status(order, pending.cl_ord_id)

    def on_account_event(self, event: ExchangeEvent, seq: int, index: int, ts: int) -> None:
        """Turn the account's own order events into ExecutionReports."""
        account = self.account
        exec_id = f"{seq}.{index}"
        if isinstance(event, OrderAccepted):
            accepted = FixOrder(event.order_id, event.client_order_id, event.symbol,
                                event.side, event.order_type, event.qty, event.price,
                                leaves=event.qty)
            self.acceptor.orders[event.order_id] = accepted
            self._reported.add(event.client_order_id)
            self._report(accepted, exec_id, "0", ts)
        elif isinstance(event, OrderRejected) and event.order_id == 0:
            placing = next((p for p in self._pending.values()
                            if p.msg_type == "D" and p.cl_ord_id == event.client_order_id),
                           None)
            self._reject_order(event.client_order_id, f"refused: {event.reason}",
                               placing.side if placing else "", event.symbol, ts)
        elif isinstance(event, Trade):
            for order_id, remaining, who in ((event.maker_order_id, event.maker_remaining,
                                              event.maker_account),
                                             (event.taker_order_id, event.taker_remaining,
                                              event.taker_account)):
                if who != account:
                    continue
                filled = self._adopt_live(order_id)
                if filled is None:
                    continue
                filled.cum_qty += event.qty
                filled.cum_value += event.qty * event.price
                filled.leaves = remaining
                filled.status = "2" if remaining == 0 else "1"
                self._report(filled, f"{exec_id}.{order_id}", "F", ts,
                             last=(event.price, event.qty))
                if remaining == 0:
                    self.acceptor.orders.pop(order_id, None)
        elif isinstance(event, OrderCancelled):
            order = self._adopt_live(event.order_id)
            if order is None:
                return
            order.leaves = event.remaining
            if event.remaining:
                order.qty = order.cum_qty + event.remaining
                self._report(order, exec_id, "D", ts)
                return
            order.status = "C" if event.reason == Reason.EXPIRED else "4"
            cl, orig = order.cl_ord_id, ""
            for kind, pending_cl, pending_orig in order.pending:
                if kind == "F":
                    cl, orig = pending_cl, pending_orig
            self._report(order, exec_id, order.status, ts, cl=cl, orig=orig)
            self.acceptor.orders.pop(event.order_id, None)
        elif isinstance(event, OrderAmended):
            order = self._adopt_live(event.order_id)
            if order is None:
                return
            orig = order.cl_ord_id
            replaces = [p for p in order.pending if p[0] == "G"]
            if replaces:
                order.cl_ord_id, orig = replaces[0][1], replaces[0][2]
                order.pending.remove(replaces[0])
            order.price, order.leaves = event.price, event.qty
            order.qty = order.cum_qty + event.qty
            self._report(order, exec_id, "5", ts, orig=orig)
        elif isinstance(event, OrderTriggered):
            order = self._adopt_live(event.order_id)
            if order is not None:
                self._report(order, exec_id, "L", ts)

    def _adopt_live(self, order_id: int) -> FixOrder | None:
        if order_id in self.acceptor.orders:
            return self.acceptor.orders[order_id]
        if order_id in self.gateway.tracker.orders:
            return self._adopt(order_id)
        return None

    # --- outbound messages --------------------------------------------------------------------

    def out(self, msg_type: str, body: list[Field]) -> None:
        """Send an application message."""
        self.emit(self.session.send(msg_type, body, self._now))

    def _report(self, order: FixOrder, exec_id: str, exec_type: str, ts: int, *,
                cl: str | None = None, orig: str = "",
                last: tuple[int, int] | None = None) -> None:
        book = self.gateway.books[order.symbol]
        body: list[Field] = [
            (37, order.order_id), (11, cl or order.cl_ord_id or str(order.order_id))]
        if orig:
            body.append((41, orig))
        body += [(17, exec_id), (150, exec_type), (39, order.status), (55, order.symbol),
                 (54, _FIX_SIDES[order.side]), (38, book.qty(order.qty)),
                 (40, _FIX_TYPES[order.order_type])]
        if order.price:
            body.append((44, book.price(order.price)))
        if last is not None:
            body += [(31, book.price(last[0])), (32, book.qty(last[1]))]
        body += [(151, book.qty(order.leaves)), (14, book.qty(order.cum_qty)),
                 (6, self._average(order)), (60, format_utc_timestamp(ts))]
        self.out("8", body)

    def _average(self, order: FixOrder) -> str:
        if not order.cum_qty:
            return "0"
        spec = self.gateway.books[order.symbol].instrument
        ticks = Decimal(order.cum_value) / Decimal(order.cum_qty)
        return f"{ticks * spec.tick:.{spec.price_precision + 4}f}".rstrip("0").rstrip(".")

    def _status(self, order: FixOrder, cl_ord_id: str) -> None:
        self._report(order, f"S{order.order_id}.{self._now}", "I", self._now, cl=cl_ord_id)

    def _reject_order(self, cl_ord_id: str, text: str, side: str, symbol: str,
                      ts: int | None = None) -> None:
        body: list[Field] = [(37, "NONE"), (11, cl_ord_id), (17, f"R{self._now}.{cl_ord_id}"),
                             (150, "8"), (39, "8"), (103, 99)]
        if symbol:
            body.append((55, symbol))
        body += [(54, side if side in _SIDE_CODES else "1"), (151, "0"), (14, "0"), (6, "0"),
                 (58, text[:200]), (60, format_utc_timestamp(ts or self._now))]
        self.out("8", body)

    def _cancel_reject(self, pending: Pending, order: FixOrder | None, text: str,
                       reason: int) -> None:
        self.out("9", [(37, order.order_id if order else "NONE"), (11, pending.cl_ord_id),
                        (41, pending.orig_cl_ord_id or "NONE"),
                        (39, order.status if order else "8"),
                        (434, "1" if pending.msg_type == "F" else "2"),
                        (102, reason), (58, text[:200])])

    def refuse(self, message: FixMessage, text: str, code: str = "") -> list[Action]:
        """Refuse an order entry message with the answer FIX prescribes for its type."""
        kind = message.msg_type
        cl_ord_id = message.get(11) or "NONE"
        if kind == "D":
            self._reject_order(cl_ord_id, text, message.get(54) or "", message.get(55) or "")
        elif kind in ("F", "G"):
            self._cancel_reject(Pending(kind, cl_ord_id, message.get(41) or ""), None, text,
                                1 if code == "unknown_order" else 99)
        else:
            self.out("r", [(11, cl_ord_id), (37, "NONE"), (530, message.get(530) or "7"),
                            (531, "0"), (58, text[:200])])
        return []

    def _business_reject(self, message: FixMessage, reason: str, text: str) -> list[Action]:
        return self.session.send("j", [(45, message.get_int(34) or 0), (372, message.msg_type),
                                       (380, reason), (58, text)], self._now)
