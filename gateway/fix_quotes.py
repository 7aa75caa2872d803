"""FIX 4.4 quoting for one connection: MassQuote i (answered by MassQuoteAcknowledgement b)
and QuoteCancel Z.

A quote entry (QuoteEntryID 299 on Symbol 55) is up to two orders of the account: a bid
(BidPx 132, BidSize 134 or DefBidSize 293) and an offer (OfferPx 133, OfferSize 135 or
DefOfferSize 294), each a post-only GTC limit order entered through `gateway.order_entry`
with the client order id ``Q:<QuoteEntryID>:B`` or ``Q:<QuoteEntryID>:S``. A later quote for
the same QuoteEntryID replaces the earlier one: a side with a price and a size above zero
amends the live order (or places one), a side without either cancels it. An amend the engine
refuses (a post-only price that would cross, say) cancels that side, so a refused update never
leaves the old quote standing. Fills are ExecutionReports, as for any order.

The acknowledgement waits for the engine's answer to every order the quote touched:
QuoteStatus 297 = 0 (accepted) unless every entry failed (5, rejected). Failed entries are
listed with QuoteEntryRejectReason 368 (values of QuoteRejectReason 300: 1 unknown symbol,
2 exchange closed, 8 invalid price, 5 unknown quote, 99 other); with QuoteResponseLevel
301 = 2 every entry is listed. QuoteCancel 298 = 1 cancels the quotes on the symbols of its
295 entries, 4 all of the account's quotes; its acknowledgement is b with 297 = 1 or 4 once
the cancels are done (5 if one was refused).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from gateway import api, order_entry
from gateway.fix_admin import SessionRejectReason
from gateway.fix_codec import Field, FieldGroup, FixMessage, GroupError, group_fields
from gateway.fix_market_data import INSTRUMENT_TAGS
from gateway.fix_session import Action
from gateway.order_entry import RequestError
from gateway.orders import TrackedOrder

if TYPE_CHECKING:
    from gateway.fix_app import FixConnection

PREFIX = "Q:"
ACCEPTED, CANCELED_FOR_SYMBOL, CANCELED_ALL, REJECTED = "0", "1", "4", "5"  # QuoteStatus 297
ACK_EACH_ENTRY = "2"  # QuoteResponseLevel 301
# QuoteRejectReason 300 / QuoteEntryRejectReason 368
UNKNOWN_SYMBOL, EXCHANGE_CLOSED, QUOTE_EXCEEDS_LIMIT, UNKNOWN_QUOTE = 1, 2, 3, 5
INVALID_PRICE, OTHER = 8, 99
_REASONS = {"unknown_symbol": UNKNOWN_SYMBOL, "instrument_halted": EXCHANGE_CLOSED,
            "invalid_price": INVALID_PRICE, "price_out_of_band": INVALID_PRICE,
            "off_tick": INVALID_PRICE, "would_cross": INVALID_PRICE, "post_only": INVALID_PRICE,
            "unknown_order": UNKNOWN_QUOTE}
_ENTRY_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")
_ENTRY_TAGS = (299, *INSTRUMENT_TAGS, 132, 133, 134, 135, 62, 188, 190, 189, 191, 631, 632,
               633, 634, 60, 336, 625, 64, 40, 193, 192, 642, 643, 15)
_SET_TAGS = (302, 311, 309, 305, 367, 304, 893, 295, *_ENTRY_TAGS)
_SIDES = ((api.OrderSide.BUY, 132, 134, 293), (api.OrderSide.SELL, 133, 135, 294))


def quote_order_id(entry_id: str, side: api.OrderSide) -> str:
    """The client order id of one side of a quote entry."""
    return f"{PREFIX}{entry_id}:{'B' if side == api.OrderSide.BUY else 'S'}"


def _is_zero(text: str) -> bool:
    return text.strip("0.") == ""


@dataclass
class EntryResult:
    """How one quote entry fared."""

    entry_id: str
    symbol: str
    reason: int = 0
    text: str = ""

    def fail(self, reason: int, text: str) -> None:
        """Note the first failure of the entry."""
        if not self.reason:
            self.reason, self.text = reason, text


@dataclass
class Acknowledgement:
    """A MassQuote or QuoteCancel waiting for the engine's answers to its orders."""

    quote_id: str
    status: str
    each_entry: bool = False
    sets: list[tuple[str, list[EntryResult]]] = field(default_factory=list)
    outstanding: int = 0
    text: str = ""


@dataclass
class Request:
    """One order operation of a quote: what it answers for."""

    ack: Acknowledgement
    entry: EntryResult | None
    operation: api.Place | api.Amend | api.Cancel


class QuoteDesk:
    """MassQuote and QuoteCancel of one `FixConnection`."""

    def __init__(self, connection: FixConnection) -> None:
        self.connection = connection
        self.gateway = connection.gateway
        self.symbols: dict[str, str] = {}
        """Client order id -> symbol of the quote orders this connection entered."""
        self._requests: dict[str, Request] = {}
        self._next = 1

    def handle(self, message: FixMessage) -> list[Action]:
        """A MassQuote i or QuoteCancel Z."""
        connection = self.connection
        tags = (117, 296) if message.msg_type == "i" else (117, 298)
        for tag in tags:
            if not message.get(tag):
                return connection.session.reject(
                    message, SessionRejectReason.REQUIRED_TAG_MISSING, connection.now_ns,
                    tag=tag, text=f"required tag {tag} missing")
        try:
            if message.msg_type == "i":
                self._mass_quote(message)
            else:
                self._cancel(message)
        except GroupError as exc:
            return connection.session.reject(
                message, SessionRejectReason.INCORRECT_NUM_IN_GROUP, connection.now_ns,
                tag=exc.count_tag, text=str(exc))
        return []

    def refuse(self, message: FixMessage, text: str) -> list[Action]:
        """Refuse a quote message the connection will not take now (its rate limit)."""
        self.connection.out("b", [(117, message.get(117) or "NONE"), (297, REJECTED),
                                  (300, QUOTE_EXCEEDS_LIMIT), (58, text[:200])])
        return []

    # --- MassQuote ----------------------------------------------------------------------------

    def _mass_quote(self, message: FixMessage) -> None:
        ack = Acknowledgement(message.get(117) or "", ACCEPTED,
                              message.get(301) == ACK_EACH_ENTRY)
        for quote_set in message.groups(296, _SET_TAGS):
            results = []
            for entry in quote_set.groups(295, _ENTRY_TAGS):
                result = EntryResult(entry.get(299) or "", entry.get(55) or "")
                results.append(result)
                try:
                    self._quote(ack, result, entry, message)
                except RequestError as exc:
                    result.fail(_REASONS.get(exc.code, OTHER), exc.msg)
            ack.sets.append((quote_set.get(302) or "", results))
        self._settle(ack)

    def _quote(self, ack: Acknowledgement, result: EntryResult, entry: FieldGroup,
               message: FixMessage) -> None:
        """Bring both sides of one entry to what it asks for (checked before any is sent)."""
        account = self._account()
        if not _ENTRY_ID.fullmatch(result.entry_id):
            raise RequestError("invalid_request", "QuoteEntryID 299 must be 1-32 of "
                                                  "A-Z a-z 0-9 _ . -")
        book = order_entry.book_of(self.gateway, result.symbol)
        wanted: dict[api.OrderSide, tuple[str, str, int, int] | None] = {}
        live: dict[api.OrderSide, TrackedOrder | None] = {}
        for side, price_tag, size_tag, default_tag in _SIDES:
            price, size = entry.get(price_tag), entry.get(size_tag) or message.get(default_tag)
            wanted[side] = (price, size, order_entry.convert(book.ticks, price),
                            order_entry.convert(book.lots, size)) \
                if price and size and not _is_zero(size) else None
            cl_ord_id = quote_order_id(result.entry_id, side)
            order = live[side] = self.gateway.tracker.find(account, None, cl_ord_id)
            symbol = order.symbol if order is not None else self.symbols.get(cl_ord_id)
            if symbol not in (None, result.symbol) and self._exists(account, cl_ord_id):
                raise RequestError("invalid_request", f"QuoteEntryID {result.entry_id} "
                                                      f"quotes {symbol}; cancel it first")
        offer, bid = live[api.OrderSide.SELL], wanted[api.OrderSide.BUY]
        sides = list(wanted)
        if offer is not None and bid is not None and bid[2] >= offer.price:
            sides.reverse()  # move the offer up out of the new bid's way first
        for side in sides:
            quote, order = wanted[side], live[side]
            cl_ord_id = quote_order_id(result.entry_id, side)
            if quote is None:
                if self._exists(account, cl_ord_id):
                    self._submit(ack, result, api.Cancel(cl_ord_id=cl_ord_id))
            elif order is None and not self._exists(account, cl_ord_id):
                self.symbols[cl_ord_id] = result.symbol
                self._submit(ack, result, api.Place(
                    symbol=result.symbol, side=side, qty=quote[1], cl_ord_id=cl_ord_id,
                    price=quote[0], post_only=True))
            elif order is None or (quote[2], quote[3]) != (order.price, order.remaining):
                self._submit(ack, result, api.Amend(cl_ord_id=cl_ord_id, price=quote[0],
                                                    qty=quote[1]))

    def _exists(self, account: str, cl_ord_id: str) -> bool:
        return self.gateway.tracker.find(account, None, cl_ord_id) is not None or \
            (account, cl_ord_id) in self.gateway.inflight

    def _submit(self, ack: Acknowledgement, entry: EntryResult | None,
                request: api.Place | api.Amend | api.Cancel) -> None:
        """Enter one order operation of ``ack`` under a request id of its own, so its answer
        comes back to `reply`."""
        request_id = f"{PREFIX}{self._next}"
        self._next += 1
        request = msgspec.structs.replace(request, id=request_id)
        self._requests[request_id] = Request(ack, entry, request)
        ack.outstanding += 1
        gateway, connection, account = self.gateway, self.connection, self._account()
        try:
            if isinstance(request, api.Place):
                order_entry.place(gateway, connection, account, request)
            elif isinstance(request, api.Amend):
                order_entry.amend(gateway, connection, account, request)
            else:
                order_entry.cancel(gateway, connection, account, request)
        except RequestError:
            del self._requests[request_id]
            ack.outstanding -= 1
            raise

    def _account(self) -> str:
        account = self.connection.account
        assert account is not None, "quotes are delivered only after logon"
        return account

    # --- QuoteCancel ------------------------------------------------------------------------

    def _cancel(self, message: FixMessage) -> None:
        kind = message.get(298)
        ack = Acknowledgement(message.get(117) or "",
                              CANCELED_ALL if kind == "4" else CANCELED_FOR_SYMBOL)
        symbols: set[str] | None = None
        if kind == "1":
            symbols = {g.get(55) or "" for g in message.groups(295, INSTRUMENT_TAGS)}
            unknown = sorted(s for s in symbols if s not in self.gateway.books)
            if unknown or not symbols:
                self._answer(Acknowledgement(ack.quote_id, REJECTED, text=(
                    f"unknown symbol {unknown[0]!r}" if unknown else
                    "QuoteCancelType 1 needs symbols in NoQuoteEntries 295")), UNKNOWN_SYMBOL)
                return
        elif kind != "4":
            self._answer(Acknowledgement(ack.quote_id, REJECTED, text=(
                "QuoteCancelType 298 must be 1 (symbols) or 4 (all quotes)")), OTHER)
            return
        account = self._account()
        quoted = {cl: order.symbol for (who, cl), order_id in
                  self.gateway.tracker.by_client_id.items()
                  if who == account and cl.startswith(PREFIX)
                  and (order := self.gateway.tracker.orders.get(order_id)) is not None}
        quoted.update((cl, self.symbols.get(cl, "")) for who, cl in self.gateway.inflight
                      if who == account and cl.startswith(PREFIX))
        for cl_ord_id, symbol in sorted(quoted.items()):
            if symbols is None or symbol in symbols:
                self._submit(ack, None, api.Cancel(cl_ord_id=cl_ord_id))
        self._settle(ack)

    # --- answers ------------------------------------------------------------------------------

    def reply(self, message: msgspec.Struct) -> None:
        """The gateway's answer to one of the quote orders' operations."""
        request = self._requests.pop(str(getattr(message, "id", "")), None)
        if request is None:
            return
        ack, operation = request.ack, request.operation
        ack.outstanding -= 1
        code, text = "", ""
        if isinstance(message, api.Error):
            code, text = message.code, message.msg
        elif isinstance(message, api.OrderReply) and message.order is not None and \
                message.order.status in ("cancelled", "rejected") and \
                not isinstance(operation, api.Cancel):  # a post-only quote that would cross
            code = message.order.reason or ""
            text = f"{operation.cl_ord_id} {message.order.status}: {code}"
        if code and not (isinstance(operation, api.Cancel) and code == "unknown_order"):
            if request.entry is not None:
                request.entry.fail(_REASONS.get(code, OTHER), text)
            else:
                ack.status, ack.text = REJECTED, text
            if isinstance(operation, api.Amend) and isinstance(message, api.Error) and \
                    code != "unknown_order":
                with contextlib.suppress(RequestError):  # unless it is gone already
                    self._submit(ack, request.entry, api.Cancel(cl_ord_id=operation.cl_ord_id))
        self._settle(ack)

    def _settle(self, ack: Acknowledgement) -> None:
        if ack.outstanding:
            return
        if ack.sets and all(r.reason for _, results in ack.sets for r in results):
            ack.status = REJECTED
        self._answer(ack, OTHER)

    def _answer(self, ack: Acknowledgement, reason: int) -> None:
        body: list[Field] = [(117, ack.quote_id), (297, ack.status)]
        if ack.status == REJECTED and not ack.sets:
            body.append((300, reason))
        failed = next((r for _, results in ack.sets for r in results if r.reason), None)
        text = ack.text or (failed.text if failed is not None else "")
        if text:
            body.append((58, text[:200]))
        sets: list[list[Field]] = []
        for set_id, results in ack.sets:
            listed: list[list[Field]] = []
            for r in results:
                if r.reason or ack.each_entry:
                    listed.append([(299, r.entry_id or "NONE"), (55, r.symbol or "NONE")])
                    if r.reason:
                        listed[-1].append((368, r.reason))
            if listed:
                sets.append([(302, set_id or "NONE"), *group_fields(295, listed)])
        if sets:
            body += group_fields(296, sets)
        self.connection.out("b", body)
