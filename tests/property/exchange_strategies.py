"""Hypothesis strategies for exchange command streams.

A stream runs on a small exchange (`INSTRUMENTS`: GPU.H100 spot and its December and January
futures) with four trading accounts. It starts by funding the accounts and giving them
capacity, then mixes orders of every type with cancels and amends, deposits and withdrawals
(some duplicated or invalid), capacity, index fixes, clearing cuts and timers, while the clock
jumps by nanoseconds, hours, days or a week, so deliveries close, GTD orders expire and
futures halt and settle.

Orders mostly come in pairs, one from each of two accounts on opposite sides of one book, so
even the plainest draw trades. Prices sit around a regime's centre; a stream moves through up
to three regimes, so later orders sweep what earlier ones left and marks move far enough for
margin calls, liquidations and insurance covers. Each choice is one weighted draw that shrinks
towards its first (plainest) value.

Cancels and amends name an order by its rank among the live orders (`OrderRef`), and some
orders are preceded by a withdrawal of every micro-USDC they do not need (`Squeeze`); both
become commands against the exchange's state when stamped (`stamp`), so they hit real orders
and exact boundaries. A stamped stream is an ordinary journal and replays anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, TypeVar

import msgspec
from hypothesis import strategies as st

from engine.commands import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    ClearingCut,
    CreditDeposit,
    ExchangeCommand,
    IndexFix,
    PlaceOrder,
    RequestWithdrawal,
    Sequenced,
    SetCapacity,
    SettleDelivery,
    Timer,
)
from engine.exchange import Exchange
from engine.ledger import FEE_ACCOUNT, INSURANCE_FUND
from engine.messages import OrderType, SelfTradePrevention, Side, TimeInForce
from engine.positions import Position
from engine.risk import net_exposure
from tests.exchange_helpers import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    DAY,
    GPU_FUT,
    GPU_FUT_NEXT,
    GPU_SPOT,
    HOUR,
    NS,
    REGISTRY,
    utc_ns,
)

ACCOUNTS = (ALICE, BOB, CAROL, DAVE)
SYMBOLS = (GPU_SPOT, GPU_FUT, GPU_FUT_NEXT)
INSTRUMENTS = tuple(REGISTRY[symbol] for symbol in SYMBOLS)
UNDERLYING = "GPU.H100"
EARLY_DECEMBER = utc_ns(2026, 12, 1, 0, 10)
BEFORE_LAST_TRADE = utc_ns(2026, 12, 29, 20, 30)  # a day before December's last trade

T = TypeVar("T")


def _weighted(*choices: tuple[T, int]) -> st.SearchStrategy[T]:
    """One of the values, in proportion to its weight; shrinks towards the first."""
    return st.sampled_from([value for value, weight in choices for _ in range(weight)])


class OrderRef(NamedTuple):
    """Cancel or amend the live order of rank ``rank`` (by order id), as its owner or not."""

    amend: bool
    rank: int
    as_owner: bool
    price_move: int
    qty_move: int


class Squeeze(NamedTuple):
    """Withdraw all of the account's free collateral but what ``order`` needs: the order
    then commits every last micro-USDC, which is where holding too little shows."""

    order: PlaceOrder


class Step(NamedTuple):
    """Move the clock ``dt`` nanoseconds, then act. A GTD ``PlaceOrder``'s non-zero
    ``expire_ts`` counts from the step's time."""

    dt: int
    action: ExchangeCommand | OrderRef | Squeeze


class Stream(NamedTuple):
    """Where the clock starts, and the steps."""

    start: int
    steps: list[Step]


# --- values ---------------------------------------------------------------------------------

_DT = _weighted((0, 24), (1, 4), (NS, 10), (60 * NS, 10), (15 * 60 * NS, 8), (HOUR, 6),
                (HOUR + 1, 2), (6 * HOUR, 2), (DAY, 2), (7 * DAY, 1))
_ACCOUNT = _weighted((ALICE, 4), (BOB, 4), (CAROL, 4), (DAVE, 4), (INSURANCE_FUND, 1),
                     (FEE_ACCOUNT, 1), ("0xnot-an-address", 1))
_TRADER = st.sampled_from(ACCOUNTS)
_SYMBOL = _weighted((GPU_FUT, 5), (GPU_SPOT, 3), (GPU_FUT_NEXT, 4))
_SIDE = st.sampled_from([Side.BUY, Side.SELL])
_QTY = _weighted((1, 10), (2, 5), (3, 3), (5, 2), (10, 1), (0, 1), (-1, 1))
# ticks from the regime's centre on the order's own side (below for a bid); negative crosses
_DEPTH = _weighted((0, 8), (1, 6), (2, 4), (5, 3), (-1, 5), (-3, 4), (-10, 3), (20, 1),
                   (-20, 2), (40, 1), (-40, 1))
# Where prices centre, in futures ticks from the middle of the band (spot: four ticks each).
_REGIMES = _weighted((0, 2), (-90, 1), (90, 1), (-60, 1), (60, 1), (-30, 1), (30, 1))
_KINDS = _weighted(
    ((OrderType.LIMIT, TimeInForce.GTC), 20),
    ((OrderType.LIMIT, TimeInForce.IOC), 2),
    ((OrderType.LIMIT, TimeInForce.FOK), 1),
    ((OrderType.LIMIT, TimeInForce.GTD), 3),
    ((OrderType.MARKET, TimeInForce.IOC), 3),
    ((OrderType.MARKET, TimeInForce.FOK), 1),
    ((OrderType.STOP_LIMIT, TimeInForce.GTC), 2),
    ((OrderType.STOP_MARKET, TimeInForce.IOC), 2),
    ((OrderType.MARKET, TimeInForce.GTC), 1),  # refused by the book
)
_SPECIAL = _weighted(("plain", 24), ("post_only", 1), ("iceberg", 1), ("no_price", 1),
                     ("out_of_band", 1), ("bad_account", 1), ("bad_symbol", 1))
_EXPIRE_IN = _weighted((HOUR, 3), (60 * NS, 2), (1, 1), (DAY, 1), (-1, 1), (0, 1))
_STP = _weighted((SelfTradePrevention.CANCEL_NEWEST, 6), (SelfTradePrevention.CANCEL_OLDEST, 1),
                 (SelfTradePrevention.CANCEL_BOTH, 1), (SelfTradePrevention.DECREMENT, 1))
# 400 USDC covers the margin on one lot of a GPU future with little to spare
_FUNDING = _weighted((2_000_000_000, 3), (400_000_000, 2), (10_000_000_000, 2),
                     (800_000_000, 2))
_MONEY = _weighted((500_000_000, 4), (2_000_000_000, 4), (20_000_000, 2), (10_000_000_000, 2),
                   (0, 1), (-5, 1))
_WITHDRAW = _weighted((1_000_000, 3), (100_000_000, 3), (1_000_000_000, 2), (10**12, 1),
                      (0, 1))
_FIX_DAY = _weighted((20261201, 2), (20261215, 2), (20261231, 2), (20270115, 2), (20270131, 2),
                     (20261130, 1), (20261232, 1))
_FIX = _weighted(*[(2_500_000 + 5_000 * ticks, 2) for ticks in (0, 7, -12, 40, -40, -90)],
                 (3_100_000, 1), (0, 1))


# --- orders ---------------------------------------------------------------------------------


def _price(symbol: str, side: Side, regime: int, depth: int) -> int:
    """A price ``depth`` ticks from the regime's centre, on the order's own side."""
    scale = 4 if symbol == GPU_SPOT else 1
    return REGISTRY[symbol].reference_price_ticks + \
        (regime + (-depth if side == Side.BUY else depth)) * scale


@st.composite
def _order(draw: st.DrawFn, symbol: str, account: str, side: Side, regime: int) -> PlaceOrder:
    order_type, tif = draw(_KINDS)
    special = draw(_SPECIAL)
    price = _price(symbol, side, regime, draw(_DEPTH))
    if special == "no_price" or order_type in (OrderType.MARKET, OrderType.STOP_MARKET):
        price = 0
    elif special == "out_of_band":
        price = REGISTRY[symbol].max_price_ticks + 1
    stop = 0
    if order_type in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET):
        stop = _price(symbol, side, regime, -draw(_DEPTH))  # stops wait on the far side
    return PlaceOrder(
        account="0xnot-an-address" if special == "bad_account" else account,
        symbol="GPU.X1.SPOT" if special == "bad_symbol" else symbol,
        side=side,
        qty=draw(_QTY),
        price=price,
        order_type=order_type,
        tif=tif,
        post_only=special == "post_only",
        display_qty=1 if special == "iceberg" else 0,
        stop_price=stop,
        expire_ts=draw(_EXPIRE_IN) if tif == TimeInForce.GTD else 0,
        stp=draw(_STP),
    )


class _Mix(NamedTuple):
    """What a stream is made of."""

    funding: tuple[st.SearchStrategy[int], ...]  # per account
    symbols: st.SearchStrategy[str]
    kinds: st.SearchStrategy[str]


@st.composite
def _orders(draw: st.DrawFn, mix: _Mix, regime: int) -> list[Step]:
    """An order and, mostly, a second one from another account on the other side."""
    symbol = draw(mix.symbols)
    first = draw(st.integers(0, 3))
    side = draw(_SIDE)
    order = draw(_order(symbol, ACCOUNTS[first], side, regime))
    steps = [Step(draw(_DT), order)]
    if draw(_weighted((False, 4), (True, 1))):
        steps.insert(0, Step(0, Squeeze(order)))
    if draw(_weighted((True, 3), (False, 1))):
        other = ACCOUNTS[(first + draw(st.integers(1, 3))) % 4]
        opposite = Side.SELL if side == Side.BUY else Side.BUY
        steps.append(Step(draw(_weighted((0, 3), (NS, 1))),
                          draw(_order(symbol, other, opposite, regime))))
    return steps


# --- everything else ------------------------------------------------------------------------

_ORDER_REF = st.builds(OrderRef, st.booleans(), st.integers(0, 7),
                       _weighted((True, 6), (False, 1)),
                       _weighted((0, 4), (1, 2), (-1, 2), (-8, 1), (8, 1), (1000, 1)),
                       _weighted((0, 3), (1, 2), (-1, 2), (3, 1), (-9, 1)))

_OTHER_ACTIONS: dict[str, st.SearchStrategy[ExchangeCommand | OrderRef]] = {
    "ref": _ORDER_REF,
    "cut": st.just(ClearingCut()),
    "timer": st.just(Timer()),
    "deposit": st.builds(CreditDeposit, st.integers(1, 12), _ACCOUNT, _MONEY),
    "withdraw": st.builds(RequestWithdrawal, st.integers(1, 6), _ACCOUNT, _WITHDRAW),
    "fix": st.builds(IndexFix, _weighted((UNDERLYING, 8), ("GPU.X1", 1)), _FIX_DAY, _FIX),
    "capacity": st.builds(SetCapacity, _TRADER, _weighted((UNDERLYING, 6), ("GPU.X1", 1)),
                          _weighted((10, 3), (3, 2), (0, 1), (-1, 1))),
    "settle": st.builds(SettleDelivery, st.integers(1, 6), st.integers(-1, 5),
                        _weighted((4, 4), (1, 1), (0, 1))),
    "cancel_all": st.builds(CancelAll, _TRADER,
                            _weighted((None, 3), (GPU_SPOT, 1), (GPU_FUT, 1), ("GPU.X1", 1)),
                            _weighted((None, 2), (Side.BUY, 1), (Side.SELL, 1))),
}
# Everything, on every instrument; or two thinly funded accounts and two rich ones trading
# the December future with cuts between, where margin calls, liquidations and insurance
# covers happen.
_THIN = _weighted((400_000_000, 3), (800_000_000, 1))
_RICH = st.just(10_000_000_000)
_MIXES = (
    _Mix((_FUNDING,) * 4, _SYMBOL,
         _weighted(("orders", 30), ("ref", 12), ("cut", 8), ("timer", 7), ("deposit", 5),
                   ("withdraw", 3), ("fix", 4), ("capacity", 2), ("cancel_all", 2),
                   ("settle", 2))),
    _Mix((_THIN, _THIN, _RICH, _RICH), _weighted((GPU_FUT, 4), (GPU_SPOT, 1)),
         _weighted(("orders", 20), ("cut", 6), ("ref", 3), ("timer", 2), ("deposit", 1),
                   ("withdraw", 1))),
)


def _chunk(mix: _Mix, regime: int) -> st.SearchStrategy[list[Step]]:
    """One or two steps: orders around ``regime``, or one other action."""

    def steps(kind: str) -> st.SearchStrategy[list[Step]]:
        if kind == "orders":
            return _orders(mix, regime)
        return st.builds(lambda dt, action: [Step(dt, action)], _DT, _OTHER_ACTIONS[kind])

    return mix.kinds.flatmap(steps)


@st.composite
def streams(draw: st.DrawFn, min_chunks: int = 6, max_chunks: int = 20) -> Stream:
    """A funded start, then two or three price regimes, each of ``min_chunks`` to
    ``max_chunks`` draws of one or two steps and a clearing cut."""
    mix = draw(st.sampled_from(_MIXES))
    start = draw(_weighted((EARLY_DECEMBER, 2), (BEFORE_LAST_TRADE, 1)))
    steps = [Step(0, CreditDeposit(100 + n, who, draw(funding)))
             for n, (who, funding) in enumerate(zip(ACCOUNTS, mix.funding, strict=True))]
    steps += [Step(0, SetCapacity(who, UNDERLYING, 10)) for who in ACCOUNTS]
    for regime in draw(st.lists(_REGIMES, min_size=2, max_size=3)):
        chunks = draw(st.lists(_chunk(mix, regime), min_size=min_chunks,
                               max_size=max_chunks))
        steps += [step for chunk in chunks for step in chunk]
        steps.append(Step(draw(_DT), ClearingCut()))  # each regime ends with a cut
    return Stream(start, steps)


# --- stamping -------------------------------------------------------------------------------


def _need(order: PlaceOrder, exchange: Exchange) -> int:
    """What the exchange will want free before it takes ``order`` (its own rule)."""
    market = exchange.markets.get(order.symbol)
    if market is None:
        return 0
    limit = order.price
    if order.order_type in (OrderType.MARKET, OrderType.STOP_MARKET):
        limit = market.max_price if order.side == Side.BUY else market.min_price
    need = market.order_lock(order.side, limit, max(order.qty, 0))
    if not market.spot:
        position = market.positions.get(order.account) or Position()
        buys = position.open_buys + (order.qty if order.side == Side.BUY else 0)
        sells = position.open_sells + (order.qty if order.side == Side.SELL else 0)
        required = market.initial_margin(net_exposure(position.qty, buys, sells))
        need += max(0, required - position.held_orders - position.held_position)
    return need


def _command(action: ExchangeCommand | OrderRef | Squeeze, ts: int, seq: int,
             exchange: Exchange) -> ExchangeCommand:
    if isinstance(action, Squeeze):
        account = action.order.account
        spare = 0  # refused: an account the ledger has never seen has nothing to withdraw
        if account in exchange.ledger.accounts:  # (asking about others would add them)
            spare = exchange.free_collateral(account) - _need(action.order, exchange)
        return RequestWithdrawal(1_000_000 + seq, account, spare)
    if isinstance(action, PlaceOrder):
        if action.tif == TimeInForce.GTD and action.expire_ts:
            return msgspec.structs.replace(action, expire_ts=ts + action.expire_ts)
        return action
    if not isinstance(action, OrderRef):
        return action
    live = sorted(exchange.orders)
    if live:
        order = exchange.orders[live[action.rank % len(live)]]
        order_id, symbol, owner = order.order_id, order.symbol, order.account
        price, qty = order.limit, order.remaining
    else:
        order_id, symbol, owner, price, qty = action.rank + 1, GPU_SPOT, ALICE, 2500, 1
    account = owner if action.as_owner else ACCOUNTS[(ACCOUNTS.index(owner) + 1) % 4]
    if action.amend:
        return AmendOrder(account, symbol, order_id, price + action.price_move,
                          qty + action.qty_move)
    return CancelOrder(account, symbol, order_id)


def stamp(stream: Stream, exchange: Exchange) -> Iterator[Sequenced]:
    """The stream's commands, stamped in sequence after ``exchange``'s last command.

    Order references resolve against ``exchange`` as it is when each command is drawn, so
    apply every command before asking for the next.
    """
    ts = stream.start
    for step in stream.steps:
        ts += step.dt
        seq = exchange.last_seq + 1
        yield Sequenced(seq, ts, _command(step.action, ts, seq, exchange))
