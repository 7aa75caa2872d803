"""The packed int64 record format the Cython core reads and writes.

A command is `COMMAND_WORDS` native int64 words, an event `EVENT_WORDS`; the layouts are
documented in ``cython_ext/book.pxd``. Packing lets a whole batch cross into C in one call.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cython_ext.book import COMMAND_KINDS, COMMAND_WORDS, EVENT_KINDS, EVENT_WORDS
from engine.messages import (
    Accepted,
    Amend,
    Amended,
    BookLevel,
    Cancel,
    Cancelled,
    CancelReason,
    Command,
    Event,
    ExpireOrders,
    Fill,
    MassCancel,
    NewOrder,
    OrderType,
    Rejected,
    RejectReason,
    Side,
    Triggered,
)

__all__ = ["COMMAND_WORDS", "EVENT_WORDS", "decode_event", "pack_command", "pack_commands"]

_NEW = COMMAND_KINDS["new_order"]
_CANCEL = COMMAND_KINDS["cancel"]
_AMEND = COMMAND_KINDS["amend"]
_MASS_CANCEL = COMMAND_KINDS["mass_cancel"]
_EXPIRE = COMMAND_KINDS["expire_orders"]


def pack_command(cmd: Command) -> tuple[int, ...]:
    """The command's record words."""
    if isinstance(cmd, NewOrder):
        return (
            _NEW, cmd.ts, cmd.order_id, cmd.account, cmd.side, cmd.price, cmd.qty,
            cmd.order_type, cmd.tif, int(cmd.post_only), cmd.display_qty, cmd.stop_price,
            cmd.expire_ts, cmd.stp,
        )
    if isinstance(cmd, Amend):
        return (_AMEND, cmd.ts, cmd.order_id, cmd.account, 0, cmd.price, cmd.qty,
                0, 0, 0, 0, 0, 0, 0)
    if isinstance(cmd, Cancel):
        return (_CANCEL, cmd.ts, cmd.order_id, cmd.account, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    if isinstance(cmd, MassCancel):
        side = -1 if cmd.side is None else int(cmd.side)
        return (_MASS_CANCEL, cmd.ts, 0, cmd.account, side, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert isinstance(cmd, ExpireOrders)
    return (_EXPIRE, cmd.ts, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def pack_commands(commands: Iterable[Command]) -> array[int]:
    """A buffer of packed commands, ready for ``MatchingCore.apply_batch``."""
    buf: array[int] = array("q")
    for cmd in commands:
        buf.extend(pack_command(cmd))
    return buf


# Enum members by value: indexing a tuple is much cheaper than calling the enum.
_SIDE = tuple(Side)
_TYPE = tuple(OrderType)
_CANCEL_REASON = tuple(CancelReason)
_REJECT = {reason.value: reason for reason in RejectReason}


def _fill(w: Sequence[int]) -> Fill:
    return Fill(w[1], w[2], w[3], _SIDE[w[4]], w[5], w[6], w[7], w[8], w[9], w[10])


_DECODERS: dict[int, Callable[[Sequence[int]], Any]] = {
    EVENT_KINDS["accepted"]: lambda w: Accepted(w[1], w[2], _SIDE[w[3]], _TYPE[w[4]], w[5],
                                                w[6]),
    EVENT_KINDS["rejected"]: lambda w: Rejected(w[1], w[2], _REJECT[w[3]]),
    EVENT_KINDS["fill"]: _fill,
    EVENT_KINDS["cancelled"]: lambda w: Cancelled(w[1], w[2], _CANCEL_REASON[w[3]], w[4], w[5]),
    EVENT_KINDS["amended"]: lambda w: Amended(w[1], w[2], w[3], w[4]),
    EVENT_KINDS["triggered"]: lambda w: Triggered(w[1], w[2], w[3]),
    EVENT_KINDS["book_level"]: lambda w: BookLevel(_SIDE[w[1]], w[2], w[3]),
}


def decode_event(words: Sequence[int]) -> Event:
    """The msgspec event of one record (``words[0]`` is the event kind)."""
    event: Event = _DECODERS[words[0]](words)
    return event
