"""The order book implementations every book test runs against."""

from __future__ import annotations

from collections.abc import Callable

from engine.book import OrderBook
from engine.cython_book import CythonBook
from engine.reference_book import ReferenceBook

BookFactory = Callable[[int, int], OrderBook]

BOOKS: dict[str, BookFactory] = {
    "reference": ReferenceBook,
    "cython": CythonBook,
}
