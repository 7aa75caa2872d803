"""Commands into the exchange (`engine.exchange.Exchange`), as msgspec Structs.

Accounts are Ethereum addresses (``0x`` + 40 hex digits, compared in lower case). Prices are
integer ticks of the named instrument, quantities integer lots, money integer micro-USDC.
A command carries no time of its own: the sequencer wraps it in `Sequenced` with its sequence
number and timestamp, and the exchange sees time only through that stamp.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from engine.instruments import Instrument
from engine.messages import Int64, OrderType, SelfTradePrevention, Side, TimeInForce

UInt64 = Annotated[int, msgspec.Meta(ge=0)]
"""A chain ``uint64`` (an attestation nonce). msgspec bounds only int64 ranges, so the
exchange refuses values of 2**64 and above itself."""


class PlaceOrder(msgspec.Struct, frozen=True, tag="place_order"):
    """Enter an order on ``symbol``; the exchange assigns its order id."""

    account: str
    symbol: str
    side: Side
    qty: Int64
    price: Int64 = 0
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    display_qty: Int64 = 0
    stop_price: Int64 = 0
    expire_ts: Int64 = 0
    stp: SelfTradePrevention = SelfTradePrevention.CANCEL_NEWEST
    client_order_id: str = ""


class CancelOrder(msgspec.Struct, frozen=True, tag="cancel_order"):
    """Cancel one of the account's orders."""

    account: str
    symbol: str
    order_id: Int64


class AmendOrder(msgspec.Struct, frozen=True, tag="amend_order"):
    """Change one of the account's resting orders (see `engine.messages.Amend`)."""

    account: str
    symbol: str
    order_id: Int64
    price: Int64
    qty: Int64


class CancelAll(msgspec.Struct, frozen=True, tag="cancel_all"):
    """Cancel the account's orders, on one symbol or all, on one side or both."""

    account: str
    symbol: str | None = None
    side: Side | None = None


class CreditDeposit(msgspec.Struct, frozen=True, tag="credit_deposit"):
    """Credit collateral that arrived on chain. Idempotent by ``deposit_id``."""

    deposit_id: Int64
    account: str
    amount: Int64


class RequestWithdrawal(msgspec.Struct, frozen=True, tag="request_withdrawal"):
    """Take ``amount`` out of the account's free collateral, to be paid on chain."""

    withdrawal_id: Int64
    account: str
    amount: Int64


class ForceWithdrawal(msgspec.Struct, frozen=True, tag="force_withdrawal"):
    """A forced withdrawal the account requested on chain (``request_id`` is the contract's):
    cancel all its orders and pay it, up to ``amount``, what is then free, in the next batch."""

    request_id: Int64
    account: str
    amount: Int64


class BatchConfirmed(msgspec.Struct, frozen=True, tag="batch_confirmed"):
    """The chain settled clearing batch ``batch_id`` (the oldest not yet confirmed) with
    ``batch_hash`` (hex), as the chain bridge saw in its receipt."""

    batch_id: Int64
    batch_hash: str


class SetCapacity(msgspec.Struct, frozen=True, tag="set_capacity"):
    """The number of units (GPUs, kW) of ``underlying`` a provider may sell per window."""

    account: str
    underlying: str
    units: Int64


class IndexFix(msgspec.Struct, frozen=True, tag="index_fix"):
    """An oracle's daily index fix for ``underlying`` on ``day`` (YYYYMMDD).

    ``price`` is micro-USDC per unit of the underlying's quote (per GPU-hour, per kW-month...).
    """

    underlying: str
    day: Int64
    price: Int64


class ClearingCut(msgspec.Struct, frozen=True, tag="clearing_cut"):
    """Mark futures, move variation margin, check maintenance, liquidate what breaches."""


class SettleDelivery(msgspec.Struct, frozen=True, tag="settle_delivery"):
    """Settle a spot delivery for ``delivered / required`` of it proven delivered (0..1),
    once its window is over. A delivery nobody settled closes fully delivered when a `Timer`
    passes its window's end."""

    delivery_id: Int64
    delivered: Int64
    required: Int64


class RegisterNode(msgspec.Struct, frozen=True, tag="register_node"):
    """A provider registered a node on chain (``UptimeRegistry``'s ``NodeRegistered``): the
    node's key address, the provider's account, the spot underlying it serves (``GPU.H100``,
    ``RACK.KW``...) and its size in that underlying's units (GPUs, kW). See `engine.uptime`."""

    node: str
    provider: str
    underlying: str
    units: Int64


class DeregisterNode(msgspec.Struct, frozen=True, tag="deregister_node"):
    """A provider deregistered a node on chain (``NodeDeregistered``): from ``effective_ts``
    (ns) on the node sells no window ending after it and attests no epoch starting at or
    after it. A later one may only bring the time forward, as on chain."""

    node: str
    effective_ts: Int64


class OpenEpoch(msgspec.Struct, frozen=True, tag="open_epoch"):
    """An uptime epoch began: number (increasing), beacon (``0x`` hex of the block hash fixed
    at its start), start time and length (ns)."""

    epoch: Int64
    beacon: str
    start_ts: Int64
    length_ns: Int64


class AttestationAccepted(msgspec.Struct, frozen=True, tag="attestation_accepted"):
    """The collector verified a node's attestation for ``epoch`` (proof of work below the
    target, signature by the node's key): the node proved it was up in that epoch.
    ``digest`` is the attestation digest (``0x`` hex); ``nonce`` the proof of work's."""

    node: str
    epoch: Int64
    nonce: UInt64
    digest: str


class ListInstrument(msgspec.Struct, frozen=True, tag="list_instrument"):
    """Admin: open a market for a new instrument (e.g. the next futures month, as
    `engine.registry.Registry.list_month` makes it). The spec travels in the command, so a
    replay lists exactly the same instrument."""

    instrument: Instrument


class Timer(msgspec.Struct, frozen=True, tag="timer"):
    """Let time pass: expire GTD orders, halt and settle futures, close delivery windows."""


ExchangeCommand = (
    PlaceOrder
    | CancelOrder
    | AmendOrder
    | CancelAll
    | CreditDeposit
    | RequestWithdrawal
    | ForceWithdrawal
    | BatchConfirmed
    | SetCapacity
    | IndexFix
    | SettleDelivery
    | RegisterNode
    | DeregisterNode
    | OpenEpoch
    | AttestationAccepted
    | ListInstrument
    | ClearingCut
    | Timer
)


class Sequenced(msgspec.Struct, frozen=True, array_like=True):
    """A command as the sequencer stamped it: its place in the journal and its time (ns).

    ``origin`` says where it came from (a shard's input stream entry id), so a restarted
    sequencer knows which requests it has already taken; the exchange ignores it.
    """

    seq: int
    ts: int
    command: ExchangeCommand
    origin: str = ""
