"""The websocket API's messages, as msgspec Structs (JSON text frames).

Requests carry ``op`` (the tag) and an optional client ``id`` that every reply echoes.
Unknown ops or fields, wrong types and out-of-range values fail decoding and are answered with
an `Error` of code ``invalid_request`` naming the problem. Prices, sizes and money travel as
decimal strings at the instrument's precision (money at 6 places, micro-USDC).

Replies and channel messages carry ``type`` (and ``channel`` for channel messages). Times are
nanoseconds since the Unix epoch as decimal strings (``ts``), so JavaScript clients lose no
precision.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec

from engine.messages import Int64

RequestId = int | str | None
ClientOrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=36,
                                            pattern=r"^[A-Za-z0-9_.:\-]+$")]
Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
DecimalText = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
Address = Annotated[str, msgspec.Meta(pattern=r"^0x[0-9a-fA-F]{40}$")]
Signature = Annotated[str, msgspec.Meta(pattern=r"^0x[0-9a-fA-F]{130}$")]
Depth = Literal[10, 25, 100, 500]


class Channel(StrEnum):
    """Subscribable channels; the last four are private (need a login). ``attest`` carries
    the uptime epochs providers' node agents attest to (a chain is needed)."""

    BOOK = "book"
    TRADES = "trades"
    TICKER = "ticker"
    INSTRUMENTS = "instruments"
    ATTEST = "attest"
    ORDERS = "orders"
    FILLS = "fills"
    POSITIONS = "positions"
    BALANCES = "balances"


PRIVATE_CHANNELS = frozenset({Channel.ORDERS, Channel.FILLS, Channel.POSITIONS,
                              Channel.BALANCES})


class ErrorCode(StrEnum):
    """Stable error codes of the gateway itself; engine refusals use `engine.events.Reason`."""

    INVALID_REQUEST = "invalid_request"
    UNKNOWN_SYMBOL = "unknown_symbol"
    INVALID_PRICE = "invalid_price"
    INVALID_QUANTITY = "invalid_quantity"
    INVALID_AMOUNT = "invalid_amount"
    NOT_LOGGED_IN = "not_logged_in"
    ALREADY_LOGGED_IN = "already_logged_in"
    LOGIN_FAILED = "login_failed"
    UNKNOWN_ORDER = "unknown_order"
    NOT_SUBSCRIBED = "not_subscribed"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"


class Request(msgspec.Struct, frozen=True, tag_field="op", forbid_unknown_fields=True,
              kw_only=True):
    """Base of every request."""

    id: RequestId = None


class Ping(Request, frozen=True, tag="ping"):
    """Ask for a `Pong`."""


class Subscribe(Request, frozen=True, tag="subscribe"):
    """Subscribe to a channel; ``symbols`` for book, trades and ticker (none = refused)."""

    channel: Channel
    symbols: list[Symbol] = []
    depth: Depth = 10


class Unsubscribe(Request, frozen=True, tag="unsubscribe"):
    """Stop a subscription (for the given symbols, or all of the channel)."""

    channel: Channel
    symbols: list[Symbol] = []


class Resync(Request, frozen=True, tag="resync"):
    """Ask for a fresh book snapshot of a subscribed symbol."""

    symbol: Symbol


class Challenge(Request, frozen=True, tag="challenge"):
    """Ask for a fresh login nonce (the welcome message carries one too)."""


class Delegation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An account's signed grant letting ``key`` trade for it until ``expires`` (Unix s)."""

    key: Address
    expires: int
    signature: Signature


class Login(Request, frozen=True, tag="login"):
    """Prove control of ``account``: ``signature`` is EIP-191 over `gateway.auth.login_text`,
    made by the account's key, or by a delegated API key given with its ``delegation``."""

    account: Address
    nonce: str
    signature: Signature
    delegation: Delegation | None = None
    cancel_on_disconnect: bool = False


class OrderSide(StrEnum):
    """Side of an order in the API."""

    BUY = "buy"
    SELL = "sell"


class OrderKind(StrEnum):
    """Order types in the API."""

    LIMIT = "limit"
    MARKET = "market"
    STOP_LIMIT = "stop_limit"
    STOP_MARKET = "stop_market"


class OrderTif(StrEnum):
    """Time in force in the API."""

    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"
    GTD = "gtd"


class Stp(StrEnum):
    """Self-trade prevention modes in the API."""

    CANCEL_NEWEST = "cancel_newest"
    CANCEL_OLDEST = "cancel_oldest"
    CANCEL_BOTH = "cancel_both"
    DECREMENT = "decrement"


class Place(Request, frozen=True, tag="place"):
    """Enter an order. ``cl_ord_id`` is unique per account while the order is live; placing
    again with a live order's id returns that order instead of a second one."""

    symbol: Symbol
    side: OrderSide
    qty: DecimalText
    cl_ord_id: ClientOrderId
    type: OrderKind = OrderKind.LIMIT
    price: DecimalText | None = None
    stop_price: DecimalText | None = None
    tif: OrderTif = OrderTif.GTC
    expire_ts: Int64 = 0
    """For GTD: expiry in nanoseconds since the epoch."""
    post_only: bool = False
    display_qty: DecimalText | None = None
    stp: Stp = Stp.CANCEL_NEWEST


class Cancel(Request, frozen=True, tag="cancel"):
    """Cancel one of the account's orders, by exchange ``order_id`` or by ``cl_ord_id``."""

    order_id: int | None = None
    cl_ord_id: ClientOrderId | None = None


class Amend(Request, frozen=True, tag="amend"):
    """Change a resting order's price and/or open quantity (down keeps priority)."""

    order_id: int | None = None
    cl_ord_id: ClientOrderId | None = None
    price: DecimalText | None = None
    qty: DecimalText | None = None


class MassCancel(Request, frozen=True, tag="mass_cancel"):
    """Cancel the account's orders, on one symbol or all, on one side or both."""

    symbol: Symbol | None = None
    side: OrderSide | None = None


class CancelAllAfter(Request, frozen=True, tag="cancel_all_after"):
    """Dead-man's switch: cancel all the account's orders unless this is sent again within
    ``timeout_ms`` (0 turns it off)."""

    timeout_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)]


class Withdraw(Request, frozen=True, tag="withdraw"):
    """Take ``amount`` USDC of free collateral out, paid on chain in the next clearing batch."""

    amount: DecimalText


class Attest(Request, frozen=True, tag="attest"):
    """A node's uptime attestation for an epoch (see CHAIN.md); no login: the signature is
    the node's. Answered by `Attested` or an `Error` whose code says why it was refused."""

    node: Address
    epoch: Annotated[int, msgspec.Meta(ge=0)]
    beacon: Annotated[str, msgspec.Meta(pattern=r"^0x[0-9a-f]{64}$")]
    nonce: Annotated[int, msgspec.Meta(ge=0)]
    signature: Signature


ClientRequest = (Ping | Subscribe | Unsubscribe | Resync | Challenge | Login | Place | Cancel
                 | Amend | MassCancel | CancelAllAfter | Withdraw | Attest)

request_decoder = msgspec.json.Decoder(ClientRequest)


# --- replies ---------------------------------------------------------------------------------


class Reply(msgspec.Struct, frozen=True, tag_field="type"):
    """Base of every reply to a request."""

    id: RequestId = None


class Error(Reply, frozen=True, tag="error"):
    """A request was refused; ``code`` is stable, ``msg`` for humans."""

    code: str = ""
    msg: str = ""


class Attested(Reply, frozen=True, tag="attested"):
    """An attestation was accepted."""

    node: str = ""
    epoch: int = 0


class Welcome(Reply, frozen=True, tag="welcome"):
    """Sent once on connect."""

    server: str = "cmx"
    version: int = 1
    nonce: str = ""
    nonce_expires_ts: str = ""


class ChallengeIssued(Reply, frozen=True, tag="challenge"):
    """A single-use login nonce."""

    nonce: str = ""
    nonce_expires_ts: str = ""


class LoggedIn(Reply, frozen=True, tag="logged_in"):
    """Login succeeded: this connection now acts for ``account`` (through ``key``)."""

    account: str = ""
    key: str = ""
    cancel_on_disconnect: bool = False


class Pong(Reply, frozen=True, tag="pong"):
    """Reply to `Ping`."""

    ts: str = ""


class Subscribed(Reply, frozen=True, tag="subscribed"):
    """A subscription is active; snapshots follow."""

    channel: str = ""
    symbols: list[str] = []
    depth: int | None = None


class Unsubscribed(Reply, frozen=True, tag="unsubscribed"):
    """A subscription ended."""

    channel: str = ""
    symbols: list[str] = []


class OrderView(msgspec.Struct, frozen=True):
    """An order as its owner sees it. ``status``: new, partially_filled, filled, cancelled,
    rejected, pending_trigger (a stop waiting for its price)."""

    order_id: int
    cl_ord_id: str
    symbol: str
    side: str
    type: str
    tif: str
    price: str | None
    stop_price: str | None
    qty: str
    filled: str
    remaining: str
    status: str
    reason: str | None = None


class OrderReply(Reply, frozen=True, tag="order"):
    """Result of a place, cancel or amend (``op`` says which): the order as it stands after
    the command."""

    op: str = ""
    order: OrderView | None = None


class MassCancelled(Reply, frozen=True, tag="mass_cancelled"):
    """Result of a mass cancel: how many orders it cancelled."""

    cancelled: int = 0


class CancelAllAfterSet(Reply, frozen=True, tag="cancel_all_after"):
    """The dead-man's switch: fires at ``trigger_ts`` (empty when off)."""

    timeout_ms: int = 0
    trigger_ts: str = ""


class WithdrawalAccepted(Reply, frozen=True, tag="withdrawal"):
    """A withdrawal left the account; it is paid on chain in the next clearing batch."""

    withdrawal_id: int = 0
    amount: str = ""


# --- channel messages ------------------------------------------------------------------------

Level = tuple[str, str]


class BookMessage(msgspec.Struct, frozen=True):
    """A book snapshot or update for one symbol at the subscribed depth."""

    channel: str
    type: str
    symbol: str
    seq: int
    prev_seq: int
    ts: str
    bids: list[Level]
    asks: list[Level]
    checksum: int


class TradeView(msgspec.Struct, frozen=True):
    """A public trade."""

    trade_id: int
    price: str
    qty: str
    side: str
    ts: str


class TradesMessage(msgspec.Struct, frozen=True):
    """Recent trades on subscribe (snapshot), then each command's trades (update)."""

    channel: str
    type: str
    symbol: str
    trades: list[TradeView]


class TickerMessage(msgspec.Struct, frozen=True):
    """Best bid/ask, last trade, 24 h volume, mark and index of one symbol."""

    channel: str
    type: str
    symbol: str
    bid: str | None
    bid_qty: str | None
    ask: str | None
    ask_qty: str | None
    last: str | None
    volume_24h: str
    mark: str | None
    index: str | None
    ts: str


class InstrumentView(msgspec.Struct, frozen=True):
    """One instrument of the registry as the API publishes it."""

    symbol: str
    underlying: str
    kind: str
    settlement: str
    description: str
    quantity_unit: str
    price_unit: str
    tick: str
    lot: str
    price_precision: int
    size_precision: int
    min_price: str
    max_price: str
    state: str
    expiry: str | None
    last_trade: str | None


class InstrumentsMessage(msgspec.Struct, frozen=True):
    """The instrument registry (snapshot), or instruments whose state changed (update)."""

    channel: str
    type: str
    instruments: list[InstrumentView]


class Heartbeat(msgspec.Struct, frozen=True):
    """Sent every second to an idle connection: each subscribed book's last ``seq``."""

    channel: str
    type: str
    ts: str
    seqs: dict[str, int]


class FillView(msgspec.Struct, frozen=True):
    """One of the account's fills."""

    trade_id: int
    order_id: int
    cl_ord_id: str
    symbol: str
    side: str
    price: str
    qty: str
    fee: str
    liquidity: str
    ts: str


class PositionView(msgspec.Struct, frozen=True):
    """A futures position: signed size, average entry price, realized PnL (USDC)."""

    symbol: str
    qty: str
    entry_price: str | None
    realized_pnl: str


class BalanceView(msgspec.Struct, frozen=True):
    """The account's collateral buckets (USDC)."""

    available: str
    reserved: str
    margin: str
    escrow: str


class PrivateMessage(msgspec.Struct, frozen=True):
    """A private channel message; ``seq`` rises by 1 per account and channel."""

    channel: str
    type: str
    seq: int
    data: list[Any]
    """`OrderView`, `FillView`, `PositionView` or `BalanceView` items, by channel."""
