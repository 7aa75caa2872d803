"""FIX 4.4 market data for one connection: MarketDataRequest V, answered with
MarketDataSnapshotFullRefresh W per symbol and then MarketDataIncrementalRefresh X, or with
MarketDataRequestReject Y.

A subscription (263=1) joins the same book views as a websocket ``book`` subscription
(`gateway.hub.Gateway.book_subscribers`, one `gateway.market_data.BookView` per symbol and
depth): the view's published updates reach `MarketDataDesk.on_public` as encoded JSON and are
translated into X entries. MarketDepth 264 = 0 is the full book (the 500-level view); other
depths round up to the next view (10, 25, 100, 500); deeper requests are refused. Entry types
267/269 are 0 bid, 1 offer, 2 trade; only incremental updates (265=1) are offered. Levels are
keyed by side and price: a level first sent is 279=0 (new), a later size 279=1 (change), a
level gone or pushed below the depth 279=2 (delete). A symbol has at most one subscription per
connection: a new request for it replaces the old one; 263=2 with the MDReqID ends one.

FIX 4.4's stock dictionary has no sequence field in X (RptSeq 83 is not defined there), so
no view ``seq`` is sent: the session's MsgSeqNum already delivers updates in order and without
gaps, and a client that doubts its book sends V again for a fresh W.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from engine.messages import Side
from gateway.api import BookMessage, TradesMessage
from gateway.fix_admin import SessionRejectReason
from gateway.fix_codec import Field, FixMessage, GroupError, group_fields
from gateway.fix_session import Action
from gateway.market_data import SymbolBook

if TYPE_CHECKING:
    from gateway.fix_app import FixConnection

BID, OFFER, TRADE = "0", "1", "2"  # MDEntryType 269
NEW, CHANGE, DELETE = "0", "1", "2"  # MDUpdateAction 279
DEPTHS = (10, 25, 100, 500)
FULL_BOOK = 500

# MDReqRejReason 281
UNKNOWN_SYMBOL = "0"
DUPLICATE_MD_REQ_ID = "1"
INSUFFICIENT_BANDWIDTH = "2"
UNSUPPORTED_SUBSCRIPTION_TYPE = "4"
UNSUPPORTED_MARKET_DEPTH = "5"
UNSUPPORTED_UPDATE_TYPE = "6"
UNSUPPORTED_ENTRY_TYPE = "8"

INSTRUMENT_TAGS = (55, 65, 48, 22, 454, 455, 456, 460, 461, 167, 762, 200, 541, 207, 107)
"""Symbol first, then the Instrument component's tags a client may add to 146 entries."""
_book_decoder = msgspec.json.Decoder(BookMessage)
_trades_decoder = msgspec.json.Decoder(TradesMessage)


class _Channel(msgspec.Struct):
    channel: str


_channel_decoder = msgspec.json.Decoder(_Channel)


class MarketDataRequestError(Exception):
    """A MarketDataRequest refused as a whole (MDReqRejReason 281 and a text)."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text


def view_depth(market_depth: int) -> int:
    """The book view serving a MarketDepth 264 (0 = full book); MarketDataRequestError past the
    deepest view."""
    if market_depth == 0:
        return FULL_BOOK
    for depth in DEPTHS:
        if market_depth <= depth:
            return depth
    raise MarketDataRequestError(UNSUPPORTED_MARKET_DEPTH,
                             f"MarketDepth {market_depth} is deeper than {FULL_BOOK}")


@dataclass
class Subscription:
    """One symbol's live market data on this connection, and the levels the client holds."""

    md_req_id: str
    symbol: str
    depth: int
    entry_types: frozenset[str]
    levels: dict[str, dict[str, str]] = field(default_factory=lambda: {BID: {}, OFFER: {}})
    """MDEntryType -> price text -> size text, as last sent."""


class MarketDataDesk:
    """Market data requests and subscriptions of one `FixConnection`."""

    def __init__(self, connection: FixConnection) -> None:
        self.connection = connection
        self.gateway = connection.gateway
        self.subscriptions: dict[str, Subscription] = {}

    # --- requests -------------------------------------------------------------------------

    def handle(self, message: FixMessage) -> list[Action]:
        """A MarketDataRequest V."""
        connection = self.connection
        for tag in (262, 263, 264):
            if not message.get(tag):
                return connection.session.reject(
                    message, SessionRejectReason.REQUIRED_TAG_MISSING, connection.now_ns,
                    tag=tag, text=f"required tag {tag} missing")
        try:
            types = [g.get(269) or "" for g in message.groups(267, (269,))]
            symbols = [g.get(55) or "" for g in message.groups(146, INSTRUMENT_TAGS)]
        except GroupError as exc:
            return connection.session.reject(
                message, SessionRejectReason.INCORRECT_NUM_IN_GROUP, connection.now_ns,
                tag=exc.count_tag, text=str(exc))
        md_req_id = message.get(262) or ""
        try:
            self._request(message, md_req_id, types, symbols)
        except MarketDataRequestError as exc:
            self._reject(md_req_id, exc.reason, exc.text)
        return []

    def refuse(self, message: FixMessage, text: str) -> list[Action]:
        """Refuse a request the connection will not serve now (its rate limit)."""
        self._reject(message.get(262) or "NONE", INSUFFICIENT_BANDWIDTH, text)
        return []

    def _request(self, message: FixMessage, md_req_id: str, types: list[str],
                 symbols: list[str]) -> None:
        kind = message.get(263)
        if kind == "2":
            if not self.unsubscribe(md_req_id):
                raise MarketDataRequestError(UNSUPPORTED_SUBSCRIPTION_TYPE,
                                         f"no market data subscription {md_req_id}")
            return
        if kind not in ("0", "1"):
            raise MarketDataRequestError(UNSUPPORTED_SUBSCRIPTION_TYPE,
                                     "SubscriptionRequestType 263 must be 0, 1 or 2")
        market_depth = message.get_int(264)
        if market_depth is None or market_depth < 0:
            raise MarketDataRequestError(UNSUPPORTED_MARKET_DEPTH,
                                     "MarketDepth 264 must be a count (0 = full book)")
        depth = view_depth(market_depth)
        if kind == "1" and message.get(265) not in (None, "1"):
            raise MarketDataRequestError(UNSUPPORTED_UPDATE_TYPE,
                                     "only incremental refresh (265=1) is offered")
        if not types or any(t not in (BID, OFFER, TRADE) for t in types):
            raise MarketDataRequestError(UNSUPPORTED_ENTRY_TYPE,
                                     "MDEntryType 269 must be 0 (bid), 1 (offer) or 2 (trade)")
        if not symbols:
            raise MarketDataRequestError(UNKNOWN_SYMBOL, "NoRelatedSym 146 names no symbol")
        for symbol in symbols:
            if symbol not in self.gateway.books:
                raise MarketDataRequestError(UNKNOWN_SYMBOL, f"unknown symbol {symbol!r}")
        if kind == "1" and any(s.md_req_id == md_req_id for s in self.subscriptions.values()):
            raise MarketDataRequestError(DUPLICATE_MD_REQ_ID,
                                     f"MDReqID {md_req_id} is already subscribed")
        entry_types = frozenset(types)
        for symbol in dict.fromkeys(symbols):
            book = self.gateway.books[symbol]
            if kind == "0":
                self._snapshot(md_req_id, book, entry_types, book.top(Side.BUY, depth),
                               book.top(Side.SELL, depth), None)
            else:
                self._subscribe(Subscription(md_req_id, symbol, depth, entry_types))

    def _subscribe(self, subscription: Subscription) -> None:
        symbol, depth = subscription.symbol, subscription.depth
        self._drop(symbol)
        self.subscriptions[symbol] = subscription
        gateway, connection = self.gateway, self.connection
        gateway.book_subscribers.setdefault((symbol, depth), set()).add(connection)
        if TRADE in subscription.entry_types:
            gateway.trade_subscribers.setdefault(symbol, set()).add(connection)
        book = gateway.books[symbol]
        view = book.view(depth)
        self._snapshot(subscription.md_req_id, book, subscription.entry_types,
                       sorted(view.bids.items(), reverse=True), sorted(view.asks.items()),
                       subscription)

    def unsubscribe(self, md_req_id: str) -> bool:
        """End the subscriptions of ``md_req_id``; False if there were none."""
        symbols = [s for s, sub in self.subscriptions.items() if sub.md_req_id == md_req_id]
        for symbol in symbols:
            self._drop(symbol)
        return bool(symbols)

    def _drop(self, symbol: str) -> None:
        subscription = self.subscriptions.pop(symbol, None)
        if subscription is None:
            return
        gateway, connection = self.gateway, self.connection
        key = (symbol, subscription.depth)
        subscribers = gateway.book_subscribers.get(key)
        if subscribers is not None:
            subscribers.discard(connection)
            if not subscribers:
                del gateway.book_subscribers[key]
                gateway.books[symbol].views.pop(subscription.depth, None)
        gateway.trade_subscribers.get(symbol, set()).discard(connection)

    # --- outbound ---------------------------------------------------------------------------

    def _snapshot(self, md_req_id: str, book: SymbolBook, entry_types: frozenset[str],
                  bids: Iterable[tuple[int, int]], asks: Iterable[tuple[int, int]],
                  subscription: Subscription | None) -> None:
        entries: list[list[Field]] = []
        for entry_type, levels in ((BID, bids), (OFFER, asks)):
            if entry_type not in entry_types:
                continue
            for price, qty in levels:
                px, size = book.price(price), book.qty(qty)
                entries.append([(269, entry_type), (270, px), (271, size)])
                if subscription is not None:
                    subscription.levels[entry_type][px] = size
        if TRADE in entry_types and book.trades:
            last = book.trades[-1]
            entries.append([(269, TRADE), (270, last.price), (271, last.qty)])
        self.connection.out("W", [(262, md_req_id), (55, book.symbol),
                                  *group_fields(268, entries)])

    def _reject(self, md_req_id: str, reason: str, text: str) -> None:
        self.connection.out("Y", [(262, md_req_id), (281, reason), (58, text[:200])])

    def on_public(self, payload: str, book_symbol: str | None) -> None:
        """A public channel message the gateway sent this connection: book updates of the
        subscribed views (``book_symbol`` set) and trades, as X."""
        if book_symbol is not None:
            subscription = self.subscriptions.get(book_symbol)
            if subscription is not None:
                update = _book_decoder.decode(payload)
                self._book_update(subscription, update)
            return
        if _channel_decoder.decode(payload).channel != "trades":
            return
        trades = _trades_decoder.decode(payload)
        subscription = self.subscriptions.get(trades.symbol)
        if subscription is None or TRADE not in subscription.entry_types:
            return
        self._increment(subscription, [
            [(279, NEW), (269, TRADE), (55, trades.symbol), (270, t.price), (271, t.qty)]
            for t in trades.trades])

    def _book_update(self, subscription: Subscription, update: BookMessage) -> None:
        entries: list[list[Field]] = []
        symbol = subscription.symbol
        for entry_type, changes in ((BID, update.bids), (OFFER, update.asks)):
            if entry_type not in subscription.entry_types:
                continue
            sent = subscription.levels[entry_type]
            for px, size in changes:
                if size == "0":
                    if sent.pop(px, None) is not None:
                        entries.append([(279, DELETE), (269, entry_type), (55, symbol),
                                        (270, px)])
                    continue
                action = CHANGE if px in sent else NEW
                sent[px] = size
                entries.append([(279, action), (269, entry_type), (55, symbol), (270, px),
                                (271, size)])
        self._increment(subscription, entries)

    def _increment(self, subscription: Subscription, entries: list[list[Field]]) -> None:
        if entries:
            self.connection.out("X", [(262, subscription.md_req_id),
                                      *group_fields(268, entries)])
