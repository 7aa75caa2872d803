"""The book checksum: Kraken v2's CRC32 over the top ten levels.

Asks ascending, then bids descending; for each level its price and then its size, as the
decimal strings the API sends, with the '.' removed and leading zeros stripped, all
concatenated; zlib's CRC32 of that text as an unsigned 32-bit integer.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

CHECKSUM_LEVELS = 10


def _digits(text: str) -> str:
    return text.replace(".", "").lstrip("0")


def book_checksum(bids: Iterable[tuple[str, str]], asks: Iterable[tuple[str, str]]) -> int:
    """The checksum of a book given best-first levels of (price, size) decimal strings."""
    parts: list[str] = []
    for side in (asks, bids):
        for count, (price, size) in enumerate(side):
            if count == CHECKSUM_LEVELS:
                break
            parts.append(_digits(price))
            parts.append(_digits(size))
    return zlib.crc32("".join(parts).encode("ascii")) & 0xFFFFFFFF
