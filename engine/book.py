"""The `OrderBook` protocol shared by the reference book and the Cython core, and its state hash.

Matching semantics (both books, event for event):

* Price-time priority. A fill trades at the resting (maker) order's price.
* Before any command, GTD orders whose ``expire_ts`` is earlier than the command's ``ts`` are
  cancelled (reason ``EXPIRED``) in ``(expire_ts, order_id)`` order.
* Market orders (and triggered stop-markets) are IOC or FOK, bounded by the price band: a buy
  trades up to ``max_price``, a sell down to ``min_price``.
* FOK fills in full or not at all. Its check walks the crossing levels best first; a level that
  holds an order of the same account fails it (self-trade prevention could otherwise stop it
  half-filled).
* Post-only orders that would cross are cancelled whole (reason ``POST_ONLY``).
* Icebergs show ``min(display_qty, remaining)``; when the shown part is used up and quantity is
  left, the order shows a new slice at the back of its level.
* Self-trade prevention (incoming order's mode): ``CANCEL_NEWEST`` cancels the rest of the
  incoming order; ``CANCEL_OLDEST`` cancels the resting order and goes on; ``CANCEL_BOTH``
  cancels both; ``DECREMENT`` takes ``min(incoming, resting shown)`` off both without a trade,
  as if it were a fill.
* Stops trigger on the last trade price (buy: last >= stop, sell: last <= stop); before the
  first trade there is no last price and no stop triggers. After every
  command, while some pending stop's condition holds, the earliest-entered such stop triggers
  and enters the book as a new order keeping its id (stop-market as market, stop-limit as limit).
  A stop whose condition already holds on entry triggers at once.
* Amend to the same price with a lower or equal quantity keeps priority; anything else re-enters
  the order at the back (and trades if it crosses). Pending stops are not amendable; a post-only
  order amended to a crossing price is rejected (``WOULD_CROSS``).
* Mass cancel walks the account's orders (resting and pending stops) by ascending order id.
* ``BookLevel`` events: one per level a taker visited whose shown quantity changed, after it is
  done with that level; one for every order that rests or is cancelled, and for an amend in
  place only when the shown quantity changes.
* Order ids are unique among live orders only (the exchange never reuses one). A mass cancel
  that finds nothing emits nothing. Fields an order type does not use (the price of a market
  order, the stop price of a limit order) are kept as given and otherwise ignored.
* Refusals are checked in this order. New orders: id <= 0, duplicate id, quantity, a market
  order that would rest, post-only/iceberg combinations, GTD without ``expire_ts`` (or the
  reverse), price, stop price, expiry in the past. Amends: unknown id or another account's,
  pending stop, quantity, price, post-only that would cross.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import msgspec

from engine.messages import Command, Event, Side

RestingOrder = tuple[int, int, int, int, int, int, int, int, int, int, bool]
"""(order_id, account, side, price, remaining, shown, display_qty, tif, expire_ts, stp,
post_only) of an order resting in the book."""

PendingStop = tuple[int, int, int, int, int, int, int, int, int, int]
"""(order_id, account, side, order_type, price, stop_price, qty, tif, expire_ts, stp) of a
stop order waiting for its trigger."""


class BookState(msgspec.Struct, frozen=True):
    """Everything that decides a book's future behaviour, in a canonical order.

    ``resting`` lists bids best first then asks best first, each level in queue order;
    ``stops`` lists pending stops in entry order. ``last_price`` is 0 before the first trade.
    """

    resting: list[RestingOrder]
    stops: list[PendingStop]
    last_price: int
    next_trade_id: int


class OrderBook(Protocol):
    """One instrument's limit order book: commands in, events out, nothing else."""

    @property
    def min_price(self) -> int:
        """Lowest price (ticks) an order may have: the bottom of the price band."""
        ...

    @property
    def max_price(self) -> int:
        """Highest price (ticks) an order may have: the top of the price band."""
        ...

    @property
    def last_price(self) -> int:
        """Price of the last trade, 0 before the first."""
        ...

    def apply(self, command: Command) -> list[Event]:
        """Process one sequenced command and return the events it caused, in order."""
        ...

    def best_bid(self) -> int | None:
        """Highest bid price, or None when there are no bids."""
        ...

    def best_ask(self) -> int | None:
        """Lowest ask price, or None when there are no asks."""
        ...

    def depth(self, side: Side, levels: int) -> list[tuple[int, int]]:
        """Up to ``levels`` (price, shown quantity) pairs of ``side``, best first."""
        ...

    def state(self) -> BookState:
        """The book's full state in canonical form (see `BookState`)."""
        ...

    def restore(self, state: BookState) -> None:
        """Load a state taken with `state` into this empty book."""
        ...


_state_encoder = msgspec.msgpack.Encoder()


def state_hash(book: OrderBook) -> str:
    """A hex digest of the book's canonical state: equal books have equal hashes."""
    return hashlib.blake2b(_state_encoder.encode(book.state()), digest_size=16).hexdigest()
