"""The Cython core's own API: constants, packed records, per-command vs batch calls."""

from __future__ import annotations

from array import array
from enum import IntEnum

import pytest

from cython_ext import book as core_module
from cython_ext.book import MatchingCore
from engine import messages
from engine.cython_book import CythonBook
from engine.messages import (
    Amend,
    Cancel,
    Command,
    ExpireOrders,
    MassCancel,
    NewOrder,
    OrderType,
    Side,
    TimeInForce,
)
from engine.wire import COMMAND_WORDS, decode_event, pack_command, pack_commands

COMMANDS: list[Command] = [
    NewOrder(1, 1, 7, Side.SELL, 105, 4),
    NewOrder(1, 2, 7, Side.SELL, 106, 9, display_qty=3),
    NewOrder(2, 3, 8, Side.BUY, 106, 8),
    NewOrder(3, 4, 8, Side.BUY, 0, 2, OrderType.STOP_MARKET, TimeInForce.IOC, stop_price=107),
    Amend(4, 2, 7, 104, 2),
    Cancel(5, 99, 7),
    MassCancel(6, 8, None),
    ExpireOrders(7),
]


@pytest.mark.parametrize(
    "enum",
    [messages.Side, messages.OrderType, messages.TimeInForce, messages.SelfTradePrevention,
     messages.CancelReason, messages.RejectReason],
)
def test_core_enum_values_match_the_messages(enum: type[IntEnum]) -> None:
    assert core_module.ENUMS[enum.__name__] == {m.name: m.value for m in enum}


def test_every_event_kind_decodes_to_its_struct() -> None:
    tags = {cls.__struct_config__.tag for cls in messages.Event.__args__}
    assert set(core_module.EVENT_KINDS) == tags
    assert set(core_module.COMMAND_KINDS) == {
        cls.__struct_config__.tag for cls in messages.Command.__args__
    }


def test_packed_records_have_the_core_width() -> None:
    for cmd in COMMANDS:
        assert len(pack_command(cmd)) == COMMAND_WORDS
    assert len(pack_commands(COMMANDS)) == COMMAND_WORDS * len(COMMANDS)


def test_batch_and_per_command_calls_emit_the_same_events() -> None:
    one_by_one = CythonBook(100, 120)
    expected = [one_by_one.apply(cmd) for cmd in COMMANDS]

    core = MatchingCore(100, 120)
    total = core.apply_batch(pack_commands(COMMANDS))
    ends = core.command_ends()
    events = [decode_event(words) for words in core.events()]
    assert total == len(events) == ends[-1]
    starts = [0, *ends[:-1]]
    assert [events[a:b] for a, b in zip(starts, ends, strict=True)] == expected
    assert array("q", core.event_words()).tolist() == [w for e in core.events() for w in e]


def test_direct_calls_return_their_event_counts() -> None:
    core = MatchingCore(100, 120)
    assert core.new_order(1, 1, 7, Side.SELL, 105, 4) == 2  # accepted, level
    assert core.new_order(1, 2, 8, Side.BUY, 105, 1) == 3  # accepted, fill, level
    assert core.amend(2, 1, 7, 106, 3) == 3  # amended, old level, new level
    assert core.cancel(3, 1, 7) == 2  # cancelled, level
    assert core.mass_cancel(4, 7) == 0
    assert core.expire_orders(5) == 0
    assert 1 not in core and len(core) == 0
    assert core.last_price == 105 and core.next_trade_id == 2


def test_bad_batch_buffer_and_band_are_refused() -> None:
    core = MatchingCore(100, 120)
    with pytest.raises(ValueError, match="multiple"):
        core.apply_batch(array("q", [1, 2, 3]))
    with pytest.raises(ValueError, match="band"):
        MatchingCore(0, 10)
    with pytest.raises(ValueError, match="band"):
        MatchingCore(10, 9)
    with pytest.raises(ValueError, match="side"):
        core.depth(2, 5)


def test_unknown_command_kind_is_an_error_not_a_crash() -> None:
    core = MatchingCore(100, 120)
    with pytest.raises(ValueError, match="unknown command kind"):
        core.apply_batch(array("q", [42] + [0] * (COMMAND_WORDS - 1)))


def test_paced_run_writes_one_latency_per_command() -> None:
    core = MatchingCore(100, 120)
    packed = pack_commands(COMMANDS)
    out = array("q", [-1] * len(COMMANDS))
    core.paced_latencies(packed, 1000, out)
    assert all(ns >= 0 for ns in out)
    reference = CythonBook(100, 120)
    for cmd in COMMANDS:
        reference.apply(cmd)
    assert core.resting_orders() == reference.core.resting_orders()


def test_pool_and_map_grow_past_their_first_size() -> None:
    core = MatchingCore(1, 100_000)
    n = 20_000  # beyond the first pool (1,024 slots) and map (4,096 keys) sizes
    for i in range(1, n + 1):
        core.new_order(i, i, i, Side.BUY, i % 50_000 + 1, 1)
    assert len(core) == n
    for i in range(1, n + 1, 2):
        assert core.cancel(n + i, i, i) == 2
    assert len(core) == n // 2
    assert all((i in core) == (i % 2 == 0) for i in range(1, n + 1))


def test_restore_refuses_states_the_core_could_not_match_on() -> None:
    core = MatchingCore(100, 120)
    bad_resting = [
        (1, 7, 0, 99, 5, 5, 0, 0, 0, 0, False),  # price below the band
        (1, 7, 0, 105, 5, 3, 0, 0, 0, 0, False),  # shows part of a non-iceberg
        (1, 7, 0, 105, 5, 4, 3, 0, 0, 0, False),  # shows more than its display quantity
        (1, 7, 0, 105, 5, 5, 0, 1, 0, 0, False),  # an IOC cannot rest
        (1, 7, 2, 105, 5, 5, 0, 0, 0, 0, False),  # no such side
    ]
    for resting in bad_resting:
        with pytest.raises(ValueError, match="bad resting order"):
            core.restore_resting(*resting)
    with pytest.raises(ValueError, match="bad stop order"):
        core.restore_stop(2, 7, 0, 2, 130, 110, 1, 0, 0, 0)  # stop-limit priced off the band
    with pytest.raises(ValueError, match="bad stop order"):
        core.restore_stop(2, 7, 0, 3, 0, 99, 1, 1, 0, 0)  # stop price off the band
    assert len(core) == 0


def test_the_core_limits_match_the_engine_s() -> None:
    assert core_module.MAX_QTY == messages.MAX_QTY
    with pytest.raises(ValueError, match="band"):
        MatchingCore(1, core_module.MAX_LEVELS + 1)
    core = MatchingCore(100, 120)
    assert core.new_order(1, 1, 7, Side.BUY, 105, messages.MAX_QTY + 1) == 1
    assert core.events()[0][3] == messages.RejectReason.INVALID_QUANTITY
