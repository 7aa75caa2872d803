"""`OrderBook` over the Cython matching core: commands in as Structs, events out as Structs.

The core's own per-command and batch calls (``cython_ext.book.MatchingCore``) skip the Struct
conversions; this adapter is what the engine and the tests use.
"""

from __future__ import annotations

from collections.abc import Callable

from cython_ext.book import MatchingCore
from engine.book import BookState
from engine.messages import Amend, Cancel, Command, Event, MassCancel, NewOrder, Side
from engine.wire import decode_event


class CythonBook:
    """The fast order book; event for event the same as `engine.reference_book.ReferenceBook`."""

    def __init__(self, min_price: int, max_price: int) -> None:
        self.core = MatchingCore(min_price, max_price)

    @property
    def min_price(self) -> int:
        """Bottom of the price band, in ticks."""
        return self.core.min_price

    @property
    def max_price(self) -> int:
        """Top of the price band, in ticks."""
        return self.core.max_price

    @property
    def last_price(self) -> int:
        """Price of the last trade, 0 before the first."""
        return self.core.last_price

    def apply(self, command: Command) -> list[Event]:
        """Process one sequenced command; return its events in order."""
        method, args = core_call(self.core, command)
        method(*args)
        return [decode_event(words) for words in self.core.events()]

    def best_bid(self) -> int | None:
        """Highest bid price, or None."""
        return self.core.best_bid()

    def best_ask(self) -> int | None:
        """Lowest ask price, or None."""
        return self.core.best_ask()

    def depth(self, side: Side, levels: int) -> list[tuple[int, int]]:
        """Up to ``levels`` (price, shown quantity) pairs of ``side``, best first."""
        return self.core.depth(side, levels)

    def state(self) -> BookState:
        """Canonical state, the same shape as the reference book's."""
        return BookState(
            self.core.resting_orders(),
            self.core.pending_stops(),
            self.core.last_price,
            self.core.next_trade_id,
        )

    def restore(self, state: BookState) -> None:
        """Load ``state`` (as `state` returned it) into this empty book."""
        if len(self.core):
            raise ValueError("a book can only be restored while empty")
        for resting in state.resting:
            self.core.restore_resting(*resting)
        for stop in state.stops:
            self.core.restore_stop(*stop)
        self.core.restore_trading(state.last_price, state.next_trade_id)


CoreCall = tuple[Callable[..., int], tuple[int, ...]]


def core_call(core: MatchingCore, command: Command) -> CoreCall:
    """The core's method for ``command`` and its arguments: one Python call runs it."""
    if isinstance(command, Amend):
        return core.amend, (command.ts, command.order_id, command.account, command.price,
                            command.qty)
    if isinstance(command, NewOrder):
        return core.new_order, (command.ts, command.order_id, command.account, command.side,
                                command.price, command.qty, command.order_type, command.tif,
                                command.post_only, command.display_qty, command.stop_price,
                                command.expire_ts, command.stp)
    if isinstance(command, Cancel):
        return core.cancel, (command.ts, command.order_id, command.account)
    if isinstance(command, MassCancel):
        return core.mass_cancel, (command.ts, command.account,
                                  -1 if command.side is None else command.side)
    return core.expire_orders, (command.ts,)
