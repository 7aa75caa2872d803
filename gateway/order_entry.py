"""Order entry shared by the websocket API and the FIX acceptor.

Each operation checks and converts a request (`gateway.api.Place`, ``Cancel``, ``Amend``,
``MassCancel``, ``Withdraw``) for a logged-in account and submits the engine command with a
`Waiter`, so the answer reaches the requesting `Session` once the command is durable. A
request refused here raises `RequestError` (a stable code and a message for the client).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from engine.commands import AmendOrder, CancelAll, CancelOrder, PlaceOrder, RequestWithdrawal
from engine.instruments import InstrumentError
from engine.messages import OrderType, SelfTradePrevention, Side, TimeInForce
from gateway import api
from gateway.api import ErrorCode
from gateway.hub import Gateway, Session, Waiter
from gateway.market_data import SymbolBook
from gateway.orders import TrackedOrder

SIDES = {api.OrderSide.BUY: Side.BUY, api.OrderSide.SELL: Side.SELL}
TYPES = {api.OrderKind.LIMIT: OrderType.LIMIT, api.OrderKind.MARKET: OrderType.MARKET,
         api.OrderKind.STOP_LIMIT: OrderType.STOP_LIMIT,
         api.OrderKind.STOP_MARKET: OrderType.STOP_MARKET}
TIFS = {api.OrderTif.GTC: TimeInForce.GTC, api.OrderTif.IOC: TimeInForce.IOC,
        api.OrderTif.FOK: TimeInForce.FOK, api.OrderTif.GTD: TimeInForce.GTD}
STPS = {api.Stp.CANCEL_NEWEST: SelfTradePrevention.CANCEL_NEWEST,
        api.Stp.CANCEL_OLDEST: SelfTradePrevention.CANCEL_OLDEST,
        api.Stp.CANCEL_BOTH: SelfTradePrevention.CANCEL_BOTH,
        api.Stp.DECREMENT: SelfTradePrevention.DECREMENT}
_USDC = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,6})?$")


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


def convert(conversion: Callable[[str], int], text: str) -> int:
    """A price or size text in ticks or lots; refusals become `RequestError`."""
    try:
        return conversion(text)
    except InstrumentError as exc:
        raise RequestError(exc.code.value.lower(), str(exc)) from None


def book_of(gateway: Gateway, symbol: str) -> SymbolBook:
    """The symbol's market data book, or `RequestError` for an unknown symbol."""
    book = gateway.books.get(symbol)
    if book is None:
        raise RequestError(ErrorCode.UNKNOWN_SYMBOL, f"unknown symbol {symbol!r}")
    return book


def place(gateway: Gateway, session: Session, account: str, request: api.Place) -> None:
    """Enter an order; a live (or in-flight) order with the same client id is answered
    instead of making a second one."""
    existing = gateway.tracker.find(account, None, request.cl_ord_id)
    if existing is not None:
        session.reply(api.OrderReply(request.id, "place",
                                     existing.view(gateway.books[existing.symbol])))
        return
    inflight = gateway.inflight.get((account, request.cl_ord_id))
    if inflight is not None:
        inflight.duplicates.append((session, request.id))
        return
    book = book_of(gateway, request.symbol)
    order_type = TYPES[request.type]
    needs_price = order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
    needs_stop = order_type in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET)
    if needs_price != (request.price is not None):
        raise RequestError(ErrorCode.INVALID_REQUEST,
                           f"{request.type} orders {'need' if needs_price else 'take no'} price")
    if needs_stop != (request.stop_price is not None):
        raise RequestError(ErrorCode.INVALID_REQUEST,
                           f"{request.type} orders {'need' if needs_stop else 'take no'} "
                           "stop_price")
    command = PlaceOrder(
        account, book.symbol, SIDES[request.side],
        convert(book.lots, request.qty),
        convert(book.ticks, request.price) if request.price is not None else 0,
        order_type, TIFS[request.tif], request.post_only,
        convert(book.lots, request.display_qty) if request.display_qty is not None else 0,
        convert(book.ticks, request.stop_price) if request.stop_price is not None else 0,
        request.expire_ts, STPS[request.stp], request.cl_ord_id,
    )
    gateway.submit(command, Waiter(session, request.id, "place", account,
                                   cl_ord_id=request.cl_ord_id))


def cancel(gateway: Gateway, session: Session, account: str, request: api.Cancel) -> None:
    """Cancel one of the account's orders."""

    def submit(order: TrackedOrder) -> None:
        gateway.submit(CancelOrder(account, order.symbol, order.order_id),
                       Waiter(session, request.id, "cancel", account, order.order_id))

    with_order(gateway, session, account, request.id, request.order_id, request.cl_ord_id,
               submit)


def amend(gateway: Gateway, session: Session, account: str, request: api.Amend) -> None:
    """Change a resting order's price and/or open quantity."""
    if request.price is None and request.qty is None:
        raise RequestError(ErrorCode.INVALID_REQUEST, "amend needs price or qty")

    def submit(order: TrackedOrder) -> None:
        book = book_of(gateway, order.symbol)
        price = convert(book.ticks, request.price) if request.price is not None \
            else order.price
        qty = convert(book.lots, request.qty) if request.qty is not None else order.remaining
        gateway.submit(AmendOrder(account, order.symbol, order.order_id, price, qty),
                       Waiter(session, request.id, "amend", account, order.order_id))

    with_order(gateway, session, account, request.id, request.order_id, request.cl_ord_id,
               submit)


def with_order(gateway: Gateway, session: Session, account: str, request_id: api.RequestId,
               order_id: int | None, cl_ord_id: str | None,
               act: Callable[[TrackedOrder], None]) -> None:
    """Run ``act`` on the account's live order; for an order whose place is still on its way
    to the journal (named by ``cl_ord_id``), run it once the place is answered, so a cancel
    sent right after a place is not refused for arriving first."""
    if (order_id is None) == (cl_ord_id is None):
        raise RequestError(ErrorCode.INVALID_REQUEST, "give order_id or cl_ord_id")
    order = gateway.tracker.find(account, order_id, cl_ord_id)
    if order is not None:
        act(order)
        return
    placing = gateway.inflight.get((account, cl_ord_id)) if cl_ord_id else None
    if placing is None:
        raise RequestError(ErrorCode.UNKNOWN_ORDER, "no such live order of this account")

    def when_placed(placed: TrackedOrder | None) -> None:
        try:
            if placed is None or not placed.live:
                raise RequestError(ErrorCode.UNKNOWN_ORDER,
                                   "no such live order of this account")
            act(placed)
        except RequestError as exc:
            session.reply(api.Error(request_id, exc.code, exc.msg))

    placing.then.append(when_placed)


def mass_cancel(gateway: Gateway, session: Session, account: str,
                request: api.MassCancel) -> None:
    """Cancel the account's orders, on one symbol or all, on one side or both."""
    if request.symbol is not None:
        book_of(gateway, request.symbol)
    side = SIDES[request.side] if request.side is not None else None
    gateway.submit(CancelAll(account, request.symbol, side),
                   Waiter(session, request.id, "mass_cancel", account))


def withdraw(gateway: Gateway, session: Session, account: str, request: api.Withdraw) -> None:
    """Take free collateral out, to be paid on chain in the next clearing batch."""
    amount = parse_usdc(request.amount)
    withdrawal_id = gateway.next_withdrawal_id
    gateway.next_withdrawal_id += 1
    gateway.submit(RequestWithdrawal(withdrawal_id, account, amount),
                   Waiter(session, request.id, "withdraw", account))
