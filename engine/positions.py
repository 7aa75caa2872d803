"""Futures positions: signed lots, the value still to be settled, and realized PnL.

Cash moves only by variation margin at clearing cuts: ``open_value`` is the signed value
(ticks x lots) at which the position was last settled plus the trades since, so marking to
``m`` pays ``m * qty - open_value`` ticks-lots. Both sides of every trade add the same value
with opposite signs, so across all accounts the open values sum to zero and every cut moves
exactly as much money in as out.
"""

from __future__ import annotations

import msgspec


class Position(msgspec.Struct, array_like=True):
    """One account's position and open orders in one futures instrument."""

    qty: int = 0  # signed lots, long > 0
    open_value: int = 0  # ticks x lots not yet settled by variation margin
    entry_value: int = 0  # signed ticks x lots at entry prices, for the average entry
    realized_pnl: int = 0  # micro-USDC, informational
    open_buys: int = 0  # lots of live buy orders
    open_sells: int = 0  # lots of live sell orders
    held_orders: int = 0  # initial margin held for the orders (in reserved)
    held_position: int = 0  # initial margin held for the position (in margin)

    def trade(self, lots: int, price: int, tick_value: int) -> None:
        """Apply a fill of ``lots`` (signed: + buys, - sells) at ``price`` ticks."""
        before = self.qty
        self.qty += lots
        self.open_value += lots * price
        if before == 0 or (before > 0) == (lots > 0):
            self.entry_value += lots * price
            return
        closed = min(abs(lots), abs(before))
        sign = 1 if before > 0 else -1
        # the closed lots' share of the entry value, truncated toward zero; all of it when
        # the position closes, so nothing is left behind by rounding
        share = abs(self.entry_value) * closed // abs(before)
        removed = share if self.entry_value >= 0 else -share
        self.realized_pnl += (price * closed * sign - removed) * tick_value
        self.entry_value -= removed
        if abs(lots) > abs(before):  # flipped: the rest opens the other way
            self.entry_value = self.qty * price

    def settle(self, mark: int) -> int:
        """Mark to ``mark`` ticks: returns the ticks x lots owed to (+) or by (-) the account."""
        owed = mark * self.qty - self.open_value
        self.open_value = mark * self.qty
        return owed

    def unsettled(self, mark: int) -> int:
        """Ticks x lots that marking to ``mark`` would pay (+) or charge (-) now."""
        return mark * self.qty - self.open_value
