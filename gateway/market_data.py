"""Public market data built from the exchange's events: books by depth, trades, tickers.

Each symbol keeps its full level-2 book (from `engine.events.BookUpdate`) and, for every depth
someone subscribed at, a `BookView`: the top levels last published, a ``seq`` that rises by 1
with each published change, and the checksum. A view's message is encoded once and shared by
all its subscribers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from itertools import islice

import msgspec
from sortedcontainers import SortedDict

from engine.events import BookUpdate, Trade
from engine.instruments import Instrument
from engine.messages import Side
from gateway.api import BookMessage, Level, TickerMessage, TradesMessage, TradeView
from gateway.checksum import CHECKSUM_LEVELS, book_checksum

DAY_NS = 86_400 * 1_000_000_000
RECENT_TRADES = 50
CONVERSIONS_KEPT = 4096
_encode = msgspec.json.Encoder().encode


def side_name(side: Side) -> str:
    """``buy`` or ``sell``."""
    return "buy" if side == Side.BUY else "sell"


class BookView:
    """The top ``depth`` levels of one symbol as last published, with their ``seq``."""

    def __init__(self, book: SymbolBook, depth: int) -> None:
        self.book = book
        self.depth = depth
        self.seq = 0
        self.ts = 0
        self.bids: dict[int, int] = dict(book.top(Side.BUY, depth))
        self.asks: dict[int, int] = dict(book.top(Side.SELL, depth))
        self.subscribers = 0

    def refresh(self, ts: int) -> str | None:
        """Publish what changed in the top levels since the last call: the encoded update, or
        None if nothing visible changed."""
        bids = dict(self.book.top(Side.BUY, self.depth))
        asks = dict(self.book.top(Side.SELL, self.depth))
        bid_changes = _diff(self.bids, bids)
        ask_changes = _diff(self.asks, asks)
        if not bid_changes and not ask_changes:
            return None
        self.bids, self.asks = bids, asks
        self.seq += 1
        self.ts = ts
        price, qty = self.book.price, self.book.qty
        message = BookMessage(
            "book", "update", self.book.symbol, self.seq, self.seq - 1, str(ts),
            [(price(p), qty(q)) for p, q in bid_changes],
            [(price(p), qty(q)) for p, q in ask_changes],
            self.checksum(),
        )
        return _encode(message).decode()

    def snapshot(self) -> str:
        """The encoded snapshot of the view at its current ``seq``."""
        message = BookMessage("book", "snapshot", self.book.symbol, self.seq, self.seq - 1
                              if self.seq else 0, str(self.ts), self._levels(Side.BUY),
                              self._levels(Side.SELL), self.checksum())
        return _encode(message).decode()

    def _levels(self, side: Side) -> list[Level]:
        levels = self.bids if side == Side.BUY else self.asks
        ordered = sorted(levels.items(), reverse=side == Side.BUY)
        price, qty = self.book.price, self.book.qty
        return [(price(p), qty(q)) for p, q in ordered]

    def checksum(self) -> int:
        """The Kraken v2 CRC32 of the view's top ten levels."""
        price, qty = self.book.price, self.book.qty
        bids = islice(sorted(self.bids.items(), reverse=True), CHECKSUM_LEVELS)
        asks = islice(sorted(self.asks.items()), CHECKSUM_LEVELS)
        return book_checksum(((price(p), qty(q)) for p, q in bids),
                             ((price(p), qty(q)) for p, q in asks))


def _diff(before: dict[int, int], after: dict[int, int]) -> list[tuple[int, int]]:
    changes = [(p, q) for p, q in after.items() if before.get(p) != q]
    changes.extend((p, 0) for p in before if p not in after)
    return changes


class SymbolBook:
    """One symbol's full level-2 book, recent trades and ticker figures."""

    def __init__(self, instrument: Instrument, bids: Iterable[tuple[int, int]],
                 asks: Iterable[tuple[int, int]], mark: int) -> None:
        self.instrument = instrument
        self.symbol = instrument.symbol
        self._bids: SortedDict = SortedDict({-p: q for p, q in bids})  # best first
        self._asks: SortedDict = SortedDict(dict(asks))
        self.views: dict[int, BookView] = {}
        self.changed = False
        self.ticker_changed = False
        self.trades: deque[TradeView] = deque(maxlen=RECENT_TRADES)
        self.new_trades: list[TradeView] = []
        self._volume_window: deque[tuple[int, int]] = deque()
        self.volume_24h = 0
        self.last: int | None = None
        self.mark: int | None = mark
        self.index: int | None = None  # micro-USDC per unit of the underlying's quote
        self.halted = False
        self.settled = False
        self._price_text: dict[int, str] = {}
        self._ticks: dict[str, int] = {}
        self._lots: dict[str, int] = {}

    def price(self, ticks: int) -> str:
        """Ticks as the API's price text (cached: a book revisits the same prices)."""
        text = self._price_text.get(ticks)
        if text is None:
            text = self._price_text[ticks] = self.instrument.ticks_to_price(ticks)
        return text

    def ticks(self, text: str) -> int:
        """A client's price text in ticks (`InstrumentError` if it is not a price here).
        Clients send the same few prices again and again, so the answers are kept."""
        ticks = self._ticks.get(text)
        if ticks is None:
            ticks = self.instrument.price_to_ticks(text)
            if len(self._ticks) < CONVERSIONS_KEPT:
                self._ticks[text] = ticks
        return ticks

    def lots(self, text: str) -> int:
        """A client's size text in lots (`InstrumentError` if it is not a size here)."""
        lots = self._lots.get(text)
        if lots is None:
            lots = self.instrument.qty_to_lots(text)
            if len(self._lots) < CONVERSIONS_KEPT:
                self._lots[text] = lots
        return lots

    def qty(self, lots: int) -> str:
        """Lots as the API's size text; 0 is ``"0"`` (a deleted level)."""
        return self.instrument.lots_to_qty(lots) if lots else "0"

    def top(self, side: Side, depth: int) -> list[tuple[int, int]]:
        """Up to ``depth`` (price, qty) levels of ``side``, best first."""
        if side == Side.BUY:
            return [(-p, q) for p, q in islice(self._bids.items(), depth)]
        return list(islice(self._asks.items(), depth))

    def best(self, side: Side) -> tuple[int, int] | None:
        """The best level of ``side``, or None."""
        levels = self.top(side, 1)
        return levels[0] if levels else None

    def view(self, depth: int) -> BookView:
        """The view at ``depth``, made on first use."""
        view = self.views.get(depth)
        if view is None:
            view = self.views[depth] = BookView(self, depth)
        return view

    def apply_level(self, event: BookUpdate) -> None:
        """Set one level's shown quantity (0 deletes it)."""
        book, key = (self._bids, -event.price) if event.side == Side.BUY else \
            (self._asks, event.price)
        if event.qty:
            book[key] = event.qty
        else:
            book.pop(key, None)
        self.changed = self.ticker_changed = True

    def apply_trade(self, event: Trade, ts: int) -> None:
        """Record a public trade."""
        view = TradeView(event.trade_id, self.price(event.price), self.qty(event.qty),
                         side_name(event.aggressor_side), str(ts))
        self.trades.append(view)
        self.new_trades.append(view)
        self.last = event.price
        self._volume_window.append((ts, event.qty))
        self.volume_24h += event.qty
        self.ticker_changed = True

    def roll_volume(self, now_ns: int) -> None:
        """Drop trades older than 24 hours from the volume."""
        window = self._volume_window
        while window and window[0][0] <= now_ns - DAY_NS:
            self.volume_24h -= window.popleft()[1]

    def trades_message(self, kind: str, trades: list[TradeView]) -> str:
        """Encoded trades message."""
        return _encode(TradesMessage("trades", kind, self.symbol, trades)).decode()

    def ticker(self, kind: str, ts: int) -> str:
        """Encoded ticker message."""
        bid, ask = self.best(Side.BUY), self.best(Side.SELL)
        message = TickerMessage(
            "ticker", kind, self.symbol,
            self.price(bid[0]) if bid else None, self.qty(bid[1]) if bid else None,
            self.price(ask[0]) if ask else None, self.qty(ask[1]) if ask else None,
            self.price(self.last) if self.last else None,
            self.qty(self.volume_24h),
            self.price(self.mark) if self.mark else None,
            usdc(self.index) if self.index is not None else None,
            str(ts),
        )
        return _encode(message).decode()


def usdc(micro: int) -> str:
    """Micro-USDC as a decimal string with 6 places."""
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(micro), 1_000_000)
    return f"{sign}{whole}.{fraction:06d}"
