"""Collateral arithmetic: fees, order locks, bonds and margins, in integer micro-USDC.

Rounding is by at most one micro-USDC and always the same way: fees charged round down
(in the payer's favour), amounts held as collateral (bonds, margin) round up (in the
exchange's).
"""

from __future__ import annotations

BP = 10_000


def fee(amount: int, bp: int) -> int:
    """A fee of ``bp`` basis points on ``amount``, rounded down."""
    return amount * bp // BP


def held(amount: int, bp: int) -> int:
    """``bp`` basis points of ``amount`` to hold as collateral, rounded up."""
    return -(-amount * bp // BP)


def spot_buy_lock(notional: int, premium_bp: int, taker_bp: int) -> int:
    """What a spot buy order holds: the premium at its limit price plus the worst-case fee."""
    return held(notional, premium_bp) + fee(notional, taker_bp)


def net_exposure(position: int, open_buys: int, open_sells: int) -> int:
    """Lots at risk if every open order on the worse side fills: orders that would reduce
    the position offset it, so margin is netted per instrument."""
    return max(abs(position + open_buys), abs(position - open_sells))
