"""A client's copy of one symbol's book, kept from the ``book`` channel, sans-I/O.

`LocalBook.apply` takes each snapshot or update (a decoded `gateway.api.BookMessage` or the
same message as a JSON dict), checks that its ``prev_seq`` is the ``seq`` last applied, applies
the absolute sizes (``"0"`` deletes a level), cuts the book to the subscribed depth and checks
the message's checksum. A gap or a checksum mismatch answers `BookStatus.GAP` or
`BookStatus.CHECKSUM`: the caller asks the server to ``resync``, and the book ignores updates
(`BookStatus.AWAITING_SNAPSHOT`) until the next snapshot replaces it.

Prices stay the server's decimal strings; they are ordered by their exact `Decimal` value, never
by a float.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from enum import StrEnum
from itertools import islice
from typing import Any

import msgspec
from sortedcontainers import SortedDict

from gateway.api import BookMessage, Level
from gateway.checksum import CHECKSUM_LEVELS, book_checksum


class BookStatus(StrEnum):
    """What applying one message did."""

    APPLIED = "applied"
    GAP = "gap"
    """``prev_seq`` is not the last applied ``seq``: resync."""
    CHECKSUM = "checksum"
    """The book after the message does not match its checksum: resync."""
    AWAITING_SNAPSHOT = "awaiting_snapshot"
    """An update arrived while the book waits for a snapshot; it was ignored."""

    @property
    def needs_resync(self) -> bool:
        """The caller should ask for a fresh snapshot now."""
        return self in (BookStatus.GAP, BookStatus.CHECKSUM)


class _Side:
    """One side's levels: price text -> size text, ordered best first by exact price."""

    __slots__ = ("_levels", "_sign")

    def __init__(self, best_is_highest: bool) -> None:
        self._sign = -1 if best_is_highest else 1
        self._levels: SortedDict = SortedDict()  # sort key -> (price, size)

    def clear(self) -> None:
        self._levels.clear()

    def set(self, price: str, size: str) -> None:
        key = self._sign * Decimal(price)
        if Decimal(size):
            self._levels[key] = (price, size)
        else:
            self._levels.pop(key, None)

    def cut(self, depth: int) -> None:
        levels = self._levels
        while len(levels) > depth:
            levels.popitem()

    def top(self, count: int | None = None) -> list[Level]:
        values: Iterable[Level] = self._levels.values()
        return list(values if count is None else islice(values, count))

    def best(self) -> Level | None:
        return self._levels.peekitem(0)[1] if self._levels else None


class LocalBook:
    """One symbol's book at ``depth`` levels a side, as the ``book`` channel describes it."""

    def __init__(self, symbol: str, depth: int = 10) -> None:
        self.symbol = symbol
        self.depth = depth
        self.seq: int | None = None
        """The ``seq`` of the last message applied; None before the first snapshot and while
        waiting for a resync."""
        self.ts = 0
        """The server time (ns) of the last message applied."""
        self._bids = _Side(best_is_highest=True)
        self._asks = _Side(best_is_highest=False)

    @property
    def synced(self) -> bool:
        """The book holds a verified state (a snapshot and every update since)."""
        return self.seq is not None

    def apply(self, message: BookMessage | Mapping[str, Any]) -> BookStatus:
        """Apply one snapshot or update of this symbol."""
        if not isinstance(message, BookMessage):
            message = msgspec.convert(message, BookMessage)
        if message.symbol != self.symbol:
            raise ValueError(f"book message for {message.symbol}, not {self.symbol}")
        if message.type == "snapshot":
            self._bids.clear()
            self._asks.clear()
        elif self.seq is None:
            return BookStatus.AWAITING_SNAPSHOT
        elif message.prev_seq != self.seq:
            self.seq = None
            return BookStatus.GAP
        for price, size in message.bids:
            self._bids.set(price, size)
        for price, size in message.asks:
            self._asks.set(price, size)
        self._bids.cut(self.depth)
        self._asks.cut(self.depth)
        if self.checksum() != message.checksum:
            self.seq = None
            return BookStatus.CHECKSUM
        self.seq = message.seq
        self.ts = int(message.ts)
        return BookStatus.APPLIED

    def check_heartbeat(self, seq: int) -> BookStatus:
        """Compare the server's last ``seq`` for this book (from a heartbeat, which the server
        sends only once everything before it is delivered) with the local one."""
        if self.seq is None:
            return BookStatus.AWAITING_SNAPSHOT
        if seq != self.seq:
            self.seq = None
            return BookStatus.GAP
        return BookStatus.APPLIED

    def checksum(self) -> int:
        """The Kraken v2 checksum of the local top ten levels."""
        return book_checksum(self._bids.top(CHECKSUM_LEVELS), self._asks.top(CHECKSUM_LEVELS))

    def bids(self) -> list[Level]:
        """Bid levels (price, size), best (highest) first."""
        return self._bids.top()

    def asks(self) -> list[Level]:
        """Ask levels (price, size), best (lowest) first."""
        return self._asks.top()

    def best_bid(self) -> Level | None:
        """The best bid level, or None."""
        return self._bids.best()

    def best_ask(self) -> Level | None:
        """The best ask level, or None."""
        return self._asks.best()
