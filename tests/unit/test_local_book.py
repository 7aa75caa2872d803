"""The client-side book: sequence checks, absolute sizes, depth cut, checksum, resync state."""

from __future__ import annotations

import random

import msgspec
import pytest

from engine.events import BookUpdate
from engine.messages import Side
from gateway.api import BookMessage, Level
from gateway.checksum import book_checksum
from gateway.local_book import BookStatus, LocalBook
from gateway.market_data import SymbolBook
from tests.exchange_helpers import REGISTRY

SYMBOL = "RACK.KW.SPOT"


def message(kind: str, seq: int, bids: list[Level], asks: list[Level],
            book_after: tuple[list[Level], list[Level]] | None = None,
            prev_seq: int | None = None) -> BookMessage:
    """A book message whose checksum is that of ``book_after`` (default: its own levels)."""
    after_bids, after_asks = book_after if book_after is not None else (bids, asks)
    return BookMessage("book", kind, SYMBOL, seq, seq - 1 if prev_seq is None else prev_seq,
                       "1000", bids, asks, book_checksum(after_bids, after_asks))


def test_snapshot_orders_prices_numerically_best_first() -> None:
    book = LocalBook(SYMBOL)
    bids = [("10.00", "3"), ("9.99", "1"), ("9.50", "2")]
    asks = [("10.01", "4"), ("10.10", "5"), ("100.00", "1")]
    # handed over in string order, which is not price order
    shuffled = message("snapshot", 7, sorted(bids), sorted(asks), (bids, asks))
    assert book.apply(shuffled) == BookStatus.APPLIED
    assert book.bids() == bids
    assert book.asks() == asks
    assert book.best_bid() == ("10.00", "3")
    assert book.best_ask() == ("10.01", "4")
    assert book.seq == 7
    assert book.ts == 1000


def test_update_sets_absolute_sizes_and_zero_deletes() -> None:
    book = LocalBook(SYMBOL)
    book.apply(message("snapshot", 1, [("5.00", "2"), ("4.99", "1")], [("5.01", "1")]))
    after = ([("5.00", "7")], [("5.01", "1"), ("5.02", "3")])
    update = message("update", 2, [("5.00", "7"), ("4.99", "0")], [("5.02", "3")], after)
    assert book.apply(update) == BookStatus.APPLIED
    assert (book.bids(), book.asks()) == after
    assert book.seq == 2


def test_book_is_cut_to_its_depth() -> None:
    book = LocalBook(SYMBOL, depth=10)
    bids = [(f"{500 - i}.00", "1") for i in range(12)]
    assert book.apply(message("snapshot", 1, bids, [], (bids[:10], []))) == BookStatus.APPLIED
    assert book.bids() == bids[:10]


def test_gap_needs_resync_and_updates_wait_for_the_snapshot() -> None:
    book = LocalBook(SYMBOL)
    book.apply(message("snapshot", 4, [("5.00", "1")], []))
    gap = message("update", 6, [("5.00", "2")], [], prev_seq=5)
    status = book.apply(gap)
    assert status == BookStatus.GAP
    assert status.needs_resync
    assert not book.synced
    late = message("update", 7, [("5.00", "3")], [])
    assert book.apply(late) == BookStatus.AWAITING_SNAPSHOT
    assert not BookStatus.AWAITING_SNAPSHOT.needs_resync
    assert book.apply(message("snapshot", 7, [("4.00", "9")], [])) == BookStatus.APPLIED
    assert book.bids() == [("4.00", "9")]
    assert book.apply(message("update", 8, [("4.00", "1")], [])) == BookStatus.APPLIED
    assert book.seq == 8


def test_checksum_mismatch_needs_resync() -> None:
    book = LocalBook(SYMBOL)
    book.apply(message("snapshot", 1, [("5.00", "1")], []))
    wrong = message("update", 2, [("5.00", "2")], [], ([("5.00", "3")], []))
    assert book.apply(wrong) == BookStatus.CHECKSUM
    assert not book.synced


def test_update_before_any_snapshot_is_ignored() -> None:
    book = LocalBook(SYMBOL)
    assert book.apply(message("update", 1, [("5.00", "1")], [])) == \
        BookStatus.AWAITING_SNAPSHOT
    assert book.bids() == []


def test_a_decoded_json_dict_is_applied_like_the_struct() -> None:
    book = LocalBook(SYMBOL)
    snapshot = message("snapshot", 3, [("5.00", "1")], [("5.10", "2")])
    as_dict = msgspec.json.decode(msgspec.json.encode(snapshot))
    assert book.apply(as_dict) == BookStatus.APPLIED
    assert book.asks() == [("5.10", "2")]
    with pytest.raises(ValueError, match=r"GPU\.H100\.SPOT"):
        book.apply({**as_dict, "symbol": "GPU.H100.SPOT"})


def test_heartbeat_seq_detects_a_lost_last_update() -> None:
    book = LocalBook(SYMBOL)
    book.apply(message("snapshot", 5, [], []))
    assert book.check_heartbeat(5) == BookStatus.APPLIED
    assert book.check_heartbeat(6) == BookStatus.GAP
    assert book.check_heartbeat(6) == BookStatus.AWAITING_SNAPSHOT


@pytest.mark.parametrize("depth", [10, 25])
def test_follows_the_servers_book_view_through_random_changes(depth: int) -> None:
    """Every update of the gateway's own `BookView` applies and verifies, and the local book
    equals the view after each one (prices 9.00-11.00 cross a digit boundary)."""
    server = SymbolBook(REGISTRY.get(SYMBOL), [], [], 500)
    view = server.view(depth)
    local = LocalBook(SYMBOL, depth)
    assert local.apply(msgspec.json.decode(view.snapshot(), type=BookMessage)) == \
        BookStatus.APPLIED
    rng = random.Random(depth)
    updates = 0
    for ts in range(1, 3000):
        side = rng.choice((Side.BUY, Side.SELL))
        price = rng.randrange(900, 1000) if side == Side.BUY else rng.randrange(1000, 1100)
        qty = rng.choice((0, 0, rng.randrange(1, 50)))
        server.apply_level(BookUpdate(SYMBOL, side, price, qty * 100))
        update = view.refresh(ts)
        if update is None:
            continue
        updates += 1
        assert local.apply(msgspec.json.decode(update, type=BookMessage)) == \
            BookStatus.APPLIED
        assert local.bids() == [(server.price(p), server.qty(q))
                                for p, q in server.top(Side.BUY, depth)]
        assert local.asks() == [(server.price(p), server.qty(q))
                                for p, q in server.top(Side.SELL, depth)]
    assert updates > 500
    assert local.seq == view.seq
