"""A book restored from a saved state behaves exactly like the book it was saved from."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.book import state_hash
from engine.messages import Command, NewOrder, Side
from tests.books import BOOKS, BookFactory
from tests.property.strategies import MAX_PRICE, MIN_PRICE, command_sequences


@settings(max_examples=200, deadline=None)
@given(commands=command_sequences(max_size=60), data=st.data())
def test_restore_at_any_point_continues_identically(commands: list[Command],
                                                    data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(commands)), label="cut")
    source_kind = data.draw(st.sampled_from(sorted(BOOKS)), label="source")
    source = BOOKS[source_kind](MIN_PRICE, MAX_PRICE)
    for cmd in commands[:cut]:
        source.apply(cmd)
    saved = source.state()
    for kind, make in sorted(BOOKS.items()):
        restored = make(MIN_PRICE, MAX_PRICE)
        restored.restore(saved)
        assert restored.state() == saved, kind
        assert state_hash(restored) == state_hash(source), kind
        twin = BOOKS[source_kind](MIN_PRICE, MAX_PRICE)
        for cmd in commands[:cut]:
            twin.apply(cmd)
        for cmd in commands[cut:]:
            assert restored.apply(cmd) == twin.apply(cmd), (kind, cmd)
        assert state_hash(restored) == state_hash(twin), kind


def test_restore_refuses_a_book_that_is_not_empty(make_book: BookFactory) -> None:
    book = make_book(MIN_PRICE, MAX_PRICE)
    saved = book.state()
    book.apply(NewOrder(1, 1, 1, Side.BUY, MIN_PRICE + 1, 1))
    with pytest.raises(ValueError, match="empty"):
        book.restore(saved)
