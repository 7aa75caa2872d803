"""Shared fixtures: every book test runs once per order book implementation."""

from __future__ import annotations

import pytest

from tests.books import BOOKS, BookFactory


@pytest.fixture(params=sorted(BOOKS))
def make_book(request: pytest.FixtureRequest) -> BookFactory:
    """A constructor ``make_book(min_price, max_price)`` for each book implementation."""
    return BOOKS[request.param]
