"""Snapshots: an exchange restored from its encoded state is the exchange it was saved from.

One scripted stream touches every part of the state (orders of every kind, positions, marks,
pending deliveries, capacity, fixes, deposit and withdrawal ids, halts and settlement); the
exchange is saved and restored after every command of it and must go on identically.
"""

from __future__ import annotations

from functools import cache

import msgspec
import pytest

from engine.commands import CreditDeposit, Sequenced
from engine.cython_book import CythonBook
from engine.events import DeliverySettled, FinalSettlement, OrderTriggered, Trade
from engine.exchange import Exchange
from engine.exchange_state import decode_state, encode_state
from engine.ledger import INSURANCE_FUND
from engine.market import BookFactory
from engine.messages import OrderType, TimeInForce
from engine.reference_book import ReferenceBook
from tests.exchange_helpers import (
    ALICE,
    BOB,
    BUY,
    CAROL,
    DAVE,
    GPU_FUT,
    GPU_SPOT,
    HOUR,
    NS,
    RACK_SPOT,
    SELL,
    START,
    Desk,
    new_exchange,
    of_type,
    utc_ns,
)

BOOKS: dict[str, BookFactory] = {"cython": CythonBook, "reference": ReferenceBook}
RICH = 10**13


@cache
def scripted_journal() -> tuple[Sequenced, ...]:
    """A stream exercising every part of the exchange state."""
    desk = Desk()
    for who in (ALICE, BOB, CAROL, DAVE):
        desk.deposit(who, RICH)
    desk.apply(CreditDeposit(1000, INSURANCE_FUND, 5_000_000_000))
    desk.capacity(BOB, "GPU.H100", 20)
    desk.capacity(BOB, "RACK.KW", 5)
    desk.place(BOB, GPU_SPOT, SELL, 3, 2600)
    desk.place(BOB, GPU_SPOT, SELL, 6, 2610, display_qty=2)
    desk.place(ALICE, GPU_SPOT, BUY, 2, 2600)  # a delivery in the 01:00 window
    desk.place(ALICE, GPU_SPOT, BUY, 1, 2550, post_only=True)
    desk.place(CAROL, GPU_SPOT, BUY, 1, 2500, tif=TimeInForce.GTD,
               expire_ts=START + 30 * 60 * NS)
    desk.place(BOB, RACK_SPOT, SELL, 2, 505)
    desk.place(DAVE, RACK_SPOT, BUY, 1, 505)  # a delivery on 2 December
    desk.place(BOB, GPU_FUT, SELL, 2, 500)
    desk.place(ALICE, GPU_FUT, BUY, 2, 500)
    desk.place(CAROL, GPU_FUT, BUY, 1, 525, order_type=OrderType.STOP_LIMIT, stop_price=520)
    desk.place(DAVE, GPU_FUT, BUY, 1, 480)
    desk.place(DAVE, GPU_FUT, SELL, 2, 530)
    desk.fix("GPU.H100", 20261201, 2_510_000)
    desk.cut()
    desk.withdraw(ALICE, 1_000_000)
    desk.timer(START + 40 * 60 * NS)  # Carol's GTD bid expires
    desk.at(START + HOUR)
    desk.place(BOB, GPU_FUT, BUY, 1, 530)  # trades at 530: Carol's stop triggers
    desk.amend(ALICE, GPU_SPOT, 4, 2540, 1)
    desk.place(ALICE, GPU_SPOT, BUY, 3, 2610)  # takes from the iceberg
    desk.cancel(BOB, GPU_SPOT, 2)
    desk.timer(START + 2 * HOUR)  # the 01:00 window closes
    desk.cut()
    for day in range(2, 32):  # the rest of December's fixes: a mean of 507.03 ticks
        desk.fix("GPU.H100", 20261200 + day, 2_536_000)
    desk.timer(utc_ns(2026, 12, 31))  # December futures halt
    desk.cut()
    desk.timer(utc_ns(2027, 1, 1))  # and GPU.H100.F2612 settles
    desk.place(ALICE, GPU_SPOT, BUY, 1, 2600)
    desk.timer(utc_ns(2027, 1, 2))
    return tuple(desk.journal)


def test_the_script_reaches_what_it_means_to() -> None:
    exchange = new_exchange()
    events = [e for s in scripted_journal() for e in exchange.apply(s)]
    assert of_type(events, OrderTriggered)
    assert len(of_type(events, DeliverySettled)) >= 3
    assert of_type(events, FinalSettlement) == [FinalSettlement(GPU_FUT, 507)]
    assert len(of_type(events, Trade)) >= 6
    assert exchange.ledger.conserved()


def run(exchange: Exchange, journal: tuple[Sequenced, ...]) -> list[bytes]:
    """The encoded events of each command."""
    return [msgspec.msgpack.encode(exchange.apply(s)) for s in journal]


def test_a_state_survives_encoding() -> None:
    exchange = new_exchange()
    journal = scripted_journal()
    run(exchange, journal[:20])
    state = exchange.state()
    assert decode_state(encode_state(state)) == state


@pytest.mark.parametrize("restored_book", sorted(BOOKS))
@pytest.mark.parametrize("saved_book", sorted(BOOKS))
def test_restoring_after_any_command_continues_identically(saved_book: str,
                                                           restored_book: str) -> None:
    journal = scripted_journal()
    reference = new_exchange(BOOKS[saved_book])
    expected = run(reference, journal)
    final_hash = reference.state_hash()
    for cut in range(len(journal) + 1):
        saved = new_exchange(BOOKS[saved_book])
        run(saved, journal[:cut])
        data = encode_state(saved.state())
        restored = Exchange.restore(decode_state(data), BOOKS[restored_book])
        assert restored.state_hash() == saved.state_hash(), cut
        assert encode_state(restored.state()) == data, cut
        assert run(restored, journal[cut:]) == expected[cut:], cut
        assert restored.state_hash() == final_hash, cut
        assert restored.ledger.conserved()


def test_the_state_hash_tells_states_apart() -> None:
    journal = scripted_journal()
    exchange = new_exchange()
    hashes = []
    for stamped in journal:
        exchange.apply(stamped)
        hashes.append(exchange.state_hash())
    assert len(set(hashes)) == len(hashes)  # every command at least moves last_seq
    assert new_exchange().state_hash() == new_exchange().state_hash()


def test_a_restored_exchange_refuses_a_command_out_of_sequence() -> None:
    exchange = new_exchange()
    journal = scripted_journal()
    run(exchange, journal[:5])
    restored = Exchange.restore(decode_state(encode_state(exchange.state())))
    with pytest.raises(ValueError, match="out of sequence"):
        restored.apply(journal[6])
    assert restored.last_seq == 5
