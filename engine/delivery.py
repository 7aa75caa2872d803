"""Spot deliveries: what a spot fill obliges, and how a delivery window settles.

A fill of ``qty`` lots creates a `Delivery` for the next whole window after the fill: the
buyer's premium and the seller's bond wait in escrow. A fraction ``delivered / required`` of
it counts as delivered: the seller gets that share of the premium less its fee, the buyer
the rest back plus the same undelivered share of the seller's bond. Nothing here draws on the
insurance fund.

How much counts as delivered depends on the seller. One with registered nodes sells from
them: the delivery carries its ``allocation`` to those nodes, and the fraction is the node-
epochs they attested over the required ones (`engine.uptime`). One without keeps the plain
rule: a `SettleDelivery` command says how much, and a window nobody settled closes fully
delivered when a `Timer` passes its end.
"""

from __future__ import annotations

import msgspec

from engine.risk import fee


class Delivery(msgspec.Struct, array_like=True):
    """One delivery obligation, with the money held for it."""

    delivery_id: int
    symbol: str
    underlying: str
    trade_id: int
    seller: str
    buyer: str
    qty: int
    window_start: int
    window_end: int
    premium: int  # in the buyer's escrow
    bond: int  # in the seller's escrow
    seller_fee_bp: int
    allocation: list[tuple[str, int]] | None = None
    """(node, units) in node address order; lots beyond their sum were left unallocated and
    count as undelivered. None: a seller without nodes (settled by command or in full)."""


class DeliveryPayout(msgspec.Struct, frozen=True):
    """Where a delivery's escrow goes when its window closes."""

    seller_paid: int
    seller_fee: int
    buyer_refund: int
    buyer_compensation: int
    bond_released: int


def window_start(ts: int, window_ns: int) -> int:
    """The first whole window that starts after ``ts``."""
    return (ts // window_ns + 1) * window_ns


def payout(delivery: Delivery, delivered: int, required: int) -> DeliveryPayout:
    """Split the escrow for ``delivered / required`` of the window delivered (0..1)."""
    if not 0 <= delivered <= required or required <= 0:
        raise ValueError(f"bad delivered fraction {delivered}/{required}")
    earned = delivery.premium * delivered // required
    seller_fee = fee(earned, delivery.seller_fee_bp)
    compensation = delivery.bond * (required - delivered) // required
    return DeliveryPayout(
        seller_paid=earned - seller_fee,
        seller_fee=seller_fee,
        buyer_refund=delivery.premium - earned,
        buyer_compensation=compensation,
        bond_released=delivery.bond - compensation,
    )
