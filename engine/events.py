"""Events out of the exchange (`engine.exchange.Exchange`), as msgspec Structs.

Every field is an int, a str or an enum, so the stream encodes to the same bytes on every
replay. Money is micro-USDC; prices ticks of the event's symbol; quantities lots.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from engine.clearing import ClearingBatch
from engine.messages import OrderType, Side, TimeInForce


class Reason(StrEnum):
    """Why a command was refused or an order left the book. Stable codes for clients."""

    # book rejections (engine.messages.RejectReason)
    DUPLICATE_ORDER_ID = "duplicate_order_id"
    INVALID_QUANTITY = "invalid_quantity"
    INVALID_PRICE = "invalid_price"
    PRICE_OUT_OF_BAND = "price_out_of_band"
    INVALID_ORDER = "invalid_order"
    INVALID_EXPIRY = "invalid_expiry"
    UNKNOWN_ORDER = "unknown_order"
    NOT_AMENDABLE = "not_amendable"
    WOULD_CROSS = "would_cross"
    # exchange rejections
    UNKNOWN_SYMBOL = "unknown_symbol"
    UNKNOWN_UNDERLYING = "unknown_underlying"
    INVALID_ACCOUNT = "invalid_account"
    INVALID_AMOUNT = "invalid_amount"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    INSUFFICIENT_MARGIN = "insufficient_margin"
    CAPACITY_EXCEEDED = "capacity_exceeded"
    INSTRUMENT_HALTED = "instrument_halted"
    DUPLICATE_DEPOSIT = "duplicate_deposit"
    DUPLICATE_WITHDRAWAL = "duplicate_withdrawal"
    UNKNOWN_DELIVERY = "unknown_delivery"
    DELIVERY_NOT_DUE = "delivery_not_due"
    ALREADY_LISTED = "already_listed"
    DUPLICATE_REQUEST = "duplicate_request"
    UNKNOWN_BATCH = "unknown_batch"
    DELIVERY_ATTESTED = "delivery_attested"  # settled from attestations, not by command
    # nodes, epochs and attestations (engine.uptime)
    INVALID_NODE = "invalid_node"
    UNKNOWN_NODE = "unknown_node"
    NODE_REGISTERED = "node_registered"
    NODE_DEREGISTERED = "node_deregistered"
    NODE_INACTIVE = "node_inactive"
    INVALID_EPOCH = "invalid_epoch"
    INVALID_BEACON = "invalid_beacon"
    UNKNOWN_EPOCH = "unknown_epoch"
    INVALID_ATTESTATION = "invalid_attestation"
    DUPLICATE_ATTESTATION = "duplicate_attestation"
    # cancellations (engine.messages.CancelReason) and the exchange's own
    USER = "user"
    IOC_REMAINDER = "ioc_remainder"
    FOK = "fok"
    STP = "stp"
    EXPIRED = "expired"
    MASS_CANCEL = "mass_cancel"
    POST_ONLY = "post_only"
    LIQUIDATION = "liquidation"
    HALTED = "halted"
    FORCED_WITHDRAWAL = "forced_withdrawal"


class OrderAccepted(msgspec.Struct, frozen=True, tag="order_accepted"):
    """A new order is live under ``order_id``."""

    order_id: int
    account: str
    symbol: str
    client_order_id: str
    side: Side
    order_type: OrderType
    tif: TimeInForce
    price: int
    qty: int
    stop_price: int


class OrderRejected(msgspec.Struct, frozen=True, tag="order_rejected"):
    """An order command (place, cancel, amend) was refused; ``order_id`` is 0 for a place."""

    order_id: int
    account: str
    symbol: str
    client_order_id: str
    reason: Reason


class OrderCancelled(msgspec.Struct, frozen=True, tag="order_cancelled"):
    """``qty`` lots of an order were cancelled; ``remaining`` lots are still open."""

    order_id: int
    account: str
    symbol: str
    reason: Reason
    qty: int
    remaining: int


class OrderAmended(msgspec.Struct, frozen=True, tag="order_amended"):
    """A resting order now has this price and open quantity."""

    order_id: int
    account: str
    symbol: str
    price: int
    qty: int


class OrderTriggered(msgspec.Struct, frozen=True, tag="order_triggered"):
    """A stop order's trigger price was reached; it now trades as a market or limit order."""

    order_id: int
    account: str
    symbol: str
    stop_price: int


class Trade(msgspec.Struct, frozen=True, tag="trade"):
    """A fill between a resting (maker) and an incoming (taker) order, with both fees."""

    symbol: str
    trade_id: int
    price: int
    qty: int
    aggressor_side: Side
    maker_order_id: int
    taker_order_id: int
    maker_account: str
    taker_account: str
    maker_remaining: int
    taker_remaining: int
    maker_fee: int
    taker_fee: int


class BookUpdate(msgspec.Struct, frozen=True, tag="book_update"):
    """The shown quantity at one price level of ``symbol`` (0 = level gone)."""

    symbol: str
    side: Side
    price: int
    qty: int


class BalanceChanged(msgspec.Struct, frozen=True, tag="balance"):
    """An account's balances after a command (one event per touched account)."""

    account: str
    available: int
    reserved: int
    margin: int
    escrow: int


class PositionChanged(msgspec.Struct, frozen=True, tag="position"):
    """A futures position: signed lots, entry value (ticks x lots; average = entry / qty),
    and realized PnL in micro-USDC since it was opened."""

    account: str
    symbol: str
    qty: int
    entry_value: int
    realized_pnl: int


class DepositCredited(msgspec.Struct, frozen=True, tag="deposit_credited"):
    """On-chain collateral was credited to the account."""

    deposit_id: int
    account: str
    amount: int


class WithdrawalRequested(msgspec.Struct, frozen=True, tag="withdrawal_requested"):
    """Collateral left the account, to be paid on chain in the next clearing batch."""

    withdrawal_id: int
    account: str
    amount: int


class ForcedWithdrawal(msgspec.Struct, frozen=True, tag="forced_withdrawal"):
    """A forced withdrawal request from the chain was served: the account's orders are
    cancelled and ``paid`` (at most ``requested``; what was free) leaves in the next batch."""

    request_id: int
    account: str
    requested: int
    paid: int


class ClearingConfirmed(msgspec.Struct, frozen=True, tag="clearing_confirmed"):
    """The chain settled clearing batch ``batch_id``."""

    batch_id: int
    batch_hash: str


class CommandRejected(msgspec.Struct, frozen=True, tag="command_rejected"):
    """A non-order command was refused; ``ref`` is its deposit/withdrawal id if it had one."""

    command: str
    account: str
    ref: int
    reason: Reason


class CapacitySet(msgspec.Struct, frozen=True, tag="capacity_set"):
    """A provider's sellable units of ``underlying`` per delivery window."""

    account: str
    underlying: str
    units: int


class IndexFixed(msgspec.Struct, frozen=True, tag="index_fixed"):
    """A daily index fix was recorded (micro-USDC per unit)."""

    underlying: str
    day: int
    price: int


class DeliveryOpened(msgspec.Struct, frozen=True, tag="delivery_opened"):
    """A spot fill became a physical delivery: premium and bond are held in escrow."""

    delivery_id: int
    symbol: str
    trade_id: int
    seller: str
    buyer: str
    qty: int
    window_start: int
    window_end: int
    premium: int
    bond: int


class DeliverySettled(msgspec.Struct, frozen=True, tag="delivery_settled"):
    """A delivery window closed. ``delivered`` / ``required`` is the delivered fraction."""

    delivery_id: int
    delivered: int
    required: int
    seller_paid: int
    seller_fee: int
    buyer_refund: int
    buyer_compensation: int
    bond_released: int


class DeliveryAllocated(msgspec.Struct, frozen=True, tag="delivery_allocated"):
    """``units`` of a delivery fall on one of the seller's nodes, whose attestations in the
    window's epochs count for it (one event per node, after `DeliveryOpened`)."""

    delivery_id: int
    node: str
    units: int


class NodeRegistered(msgspec.Struct, frozen=True, tag="node_registered"):
    """A provider's node now counts for its capacity in ``underlying`` once it attests."""

    node: str
    provider: str
    underlying: str
    units: int


class NodeDeregistered(msgspec.Struct, frozen=True, tag="node_deregistered"):
    """A node sells no window ending after ``effective_ts`` and attests no epoch starting at
    or after it; what was already allocated to it still settles from its attestations."""

    node: str
    provider: str
    effective_ts: int


class EpochOpened(msgspec.Struct, frozen=True, tag="epoch_opened"):
    """An uptime epoch began; nodes prove they are up in it against ``beacon``."""

    epoch: int
    beacon: str
    start_ts: int
    length_ns: int


class AttestationRecorded(msgspec.Struct, frozen=True, tag="attestation_recorded"):
    """A node's attestation for ``epoch`` counts (the node-epoch is attested)."""

    node: str
    epoch: int
    provider: str


class MarkPrice(msgspec.Struct, frozen=True, tag="mark_price"):
    """The mark of a futures instrument at a clearing cut, and where it came from."""

    symbol: str
    price: int
    source: str


class VariationMargin(msgspec.Struct, frozen=True, tag="variation_margin"):
    """Money moved to (positive) or from (negative) an account by marking its position."""

    account: str
    symbol: str
    amount: int


class Liquidation(msgspec.Struct, frozen=True, tag="liquidation"):
    """An account fell below maintenance margin: its orders are cancelled and its positions
    reduced with IOC orders."""

    account: str
    equity: int
    maintenance: int


class InsuranceCover(msgspec.Struct, frozen=True, tag="insurance_cover"):
    """The insurance fund paid an account's shortfall; ``fund_balance`` may go negative,
    which is reported here rather than hidden."""

    account: str
    amount: int
    fund_balance: int


class InstrumentListed(msgspec.Struct, frozen=True, tag="instrument_listed"):
    """A new instrument's market is open."""

    symbol: str
    instrument_id: int


class InstrumentHalted(msgspec.Struct, frozen=True, tag="instrument_halted"):
    """A future passed its last trade time: resting orders are cancelled, no new ones."""

    symbol: str


class FinalSettlement(msgspec.Struct, frozen=True, tag="final_settlement"):
    """A future settled in cash at ``price`` (ticks): every position closed there."""

    symbol: str
    price: int


class ClearingCompleted(msgspec.Struct, frozen=True, tag="clearing_completed"):
    """A clearing cut finished; ``cut`` counts cuts from 1."""

    cut: int


ExchangeEvent = (
    OrderAccepted
    | OrderRejected
    | OrderCancelled
    | OrderAmended
    | OrderTriggered
    | Trade
    | BookUpdate
    | BalanceChanged
    | PositionChanged
    | DepositCredited
    | WithdrawalRequested
    | CommandRejected
    | CapacitySet
    | IndexFixed
    | DeliveryOpened
    | DeliverySettled
    | DeliveryAllocated
    | NodeRegistered
    | NodeDeregistered
    | EpochOpened
    | AttestationRecorded
    | MarkPrice
    | VariationMargin
    | Liquidation
    | InsuranceCover
    | InstrumentListed
    | InstrumentHalted
    | FinalSettlement
    | ClearingCompleted
    | ClearingBatch
    | ClearingConfirmed
    | ForcedWithdrawal
)
