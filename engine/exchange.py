"""`Exchange`: the deterministic state machine behind every CMX instrument.

``apply(Sequenced) -> events`` is a pure function of the state and the stamped command: no
wall clock, randomness or I/O. It checks collateral (risk), runs the instrument's order book,
moves money in the `Ledger`, keeps futures positions, opens and settles spot deliveries,
marks and clears futures, and expires what has expired when a `Timer` arrives.

Choices the design left open, written down:

* Spot buys hold the premium at their limit price (market orders: the top of the band) plus
  the taker fee on it. Spot sells hold the bond at the highest price they can trade at: their
  limit, or the best bid when they arrive above it (stops: the top of the band), so the bond
  a delivery gets is at least its share of the trade's notional. The buyer's fee is charged
  at the fill, the seller's on the delivered premium when the window closes.
* Futures hold the taker fee per order (a sell's at the top of the band, the highest price
  it can trade at) and initial margin per instrument, on the net worst
  case of position and open orders, valued at the instrument's mark (the last clearing mark;
  the reference price before the first). Variation margin moves at clearing cuts only;
  meanwhile losses not yet settled count against free collateral.
* ``available`` can go below zero only at a clearing cut; such an account may still enter
  orders that add no margin (to reduce its risk). An account whose equity is below
  maintenance is liquidated; any account left with negative equity is topped up by the
  insurance fund, which may itself go negative (and says so) rather than create money.
* Index fixes are in micro-USDC per unit of the futures' quote, for a real calendar day.
  A future takes no orders from its last trade time on (the next `Timer` cancels what
  rests) and settles at the first `Timer` after its delivery month that finds a fix for
  every day of that month, at their mean rounded to its tick; until then it waits (an
  oracle may send a missed day's fix late).
* Spot sellers with registered nodes sell from attested capacity and deliver from their
  nodes' attestations (`engine.uptime` has the rules): a fill allocates the delivery to the
  seller's nodes, and the first `Timer` at least one epoch length (the last epoch's) after
  the window's end settles it for the node-epochs attested, whatever the command stream
  says: `SettleDelivery` is refused for it. Sellers without nodes keep `SetCapacity` and the
  plain rule (`SettleDelivery`, else fully delivered at the window's end), so an exchange
  runs without attestation as well; once a seller has a node of an underlying, its set
  capacity there no longer counts. Deregistering a node stops it selling windows that end
  after its effective time and leaves its open deliveries as they were: the epochs it can
  no longer attest count as undelivered.
* New instruments, such as the next futures month, are listed by a `ListInstrument` command
  that carries the whole spec (`Registry.list_month` makes it), so a replay lists the same.
"""

from __future__ import annotations

import calendar
import heapq
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import msgspec

from engine.clearing import BatchWithdrawal, Clearing
from engine.commands import (
    AmendOrder,
    AttestationAccepted,
    BatchConfirmed,
    CancelAll,
    CancelOrder,
    ClearingCut,
    CreditDeposit,
    DeregisterNode,
    ForceWithdrawal,
    IndexFix,
    ListInstrument,
    OpenEpoch,
    PlaceOrder,
    RegisterNode,
    RequestWithdrawal,
    Sequenced,
    SetCapacity,
    SettleDelivery,
    Timer,
)
from engine.cython_book import CythonBook
from engine.delivery import Delivery, payout, window_start
from engine.events import (
    AttestationRecorded,
    BalanceChanged,
    BookUpdate,
    CapacitySet,
    ClearingCompleted,
    ClearingConfirmed,
    CommandRejected,
    DeliveryAllocated,
    DeliveryOpened,
    DeliverySettled,
    DepositCredited,
    EpochOpened,
    ExchangeEvent,
    FinalSettlement,
    ForcedWithdrawal,
    IndexFixed,
    InstrumentHalted,
    InstrumentListed,
    InsuranceCover,
    Liquidation,
    MarkPrice,
    NodeDeregistered,
    NodeRegistered,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderRejected,
    OrderTriggered,
    PositionChanged,
    Reason,
    Trade,
    VariationMargin,
    WithdrawalRequested,
)
from engine.exchange_state import ExchangeState, encode_state, state_digest
from engine.instruments import Instrument
from engine.ledger import FEE_ACCOUNT, INSURANCE_FUND, SYSTEM_ACCOUNTS, Ledger, is_address
from engine.market import BookFactory, LiveOrder, Market
from engine.messages import (
    Accepted,
    Amend,
    Amended,
    BookLevel,
    Cancel,
    Cancelled,
    ExpireOrders,
    Fill,
    MassCancel,
    NewOrder,
    OrderType,
    Rejected,
    RejectReason,
    SelfTradePrevention,
    Side,
    TimeInForce,
    Triggered,
    fits_int64,
)
from engine.messages import Event as BookEvent
from engine.positions import Position
from engine.risk import fee, net_exposure
from engine.uptime import Uptime

_BOOK_REASONS = {reason.value: Reason(reason.name.lower()) for reason in RejectReason}


EXPIRIES_SLACK = 1024
"""GTD expiries of orders gone since (cancelled, filled) kept before the heap is rebuilt."""


class Exchange:
    """All instruments, accounts and money of CMX, advanced one sequenced command at a time."""

    def __init__(self, instruments: Iterable[Instrument],
                 book_factory: BookFactory = CythonBook) -> None:
        self._book_factory = book_factory
        self.markets: dict[str, Market] = {}
        for instrument in instruments:
            self.markets[instrument.symbol] = Market(instrument, book_factory)
        self._market_order = sorted(self.markets)
        self.underlyings = {m.instrument.underlying for m in self.markets.values()}
        self._instrument_ids = {m.instrument.instrument_id for m in self.markets.values()}
        self.ledger = Ledger()
        self.clearing = Clearing()
        self.uptime = Uptime()
        self.orders: dict[int, LiveOrder] = {}
        self.account_ids: dict[str, int] = {}
        self.account_names: list[str] = []
        self.capacity: dict[tuple[str, str], int] = {}
        self.sold: dict[tuple[str, str, int], int] = {}
        self.open_sells: dict[tuple[str, str], int] = {}
        self.deliveries: dict[int, Delivery] = {}
        self._delivery_queue: list[tuple[int, int]] = []  # (window end, id), no nodes
        self._attested_queue: list[tuple[int, int]] = []  # the same, delivered from nodes
        self._expiries: list[tuple[int, int]] = []  # (expire_ts, id) of GTD orders, lazily
        self.deposits_seen: set[int] = set()
        self.withdrawals_seen: set[int] = set()
        self.fixes: dict[tuple[str, int], int] = {}
        self.last_seq = 0
        self.next_order_id = 1
        self.next_delivery_id = 1
        self.cuts = 0
        self._ts = 0
        self._events: list[ExchangeEvent] = []
        self._positions_touched: dict[tuple[str, str], None] = {}
        self._placing: dict[int, PlaceOrder] = {}
        self._lock_price: dict[int, int] = {}  # spot sells entering: where their bond is held
        self._futures_held: dict[str, list[Market]] = {}  # futures with a position, by account
        self._cancel_reason: Reason | None = None

    @property
    def last_ts(self) -> int:
        """Timestamp of the last command applied (0 before the first)."""
        return self._ts

    # --- the one entry point --------------------------------------------------------------

    def apply(self, sequenced: Sequenced) -> list[ExchangeEvent]:
        """Apply the next sequenced command; return its events in order."""
        if sequenced.seq != self.last_seq + 1:
            raise ValueError(f"command {sequenced.seq} out of sequence after {self.last_seq}")
        self.last_seq = sequenced.seq
        self._ts = sequenced.ts
        events: list[ExchangeEvent] = []
        self._events = events
        self.ledger.touched.clear()
        self._positions_touched.clear()
        command = sequenced.command
        handler = self._handlers[type(command)]
        handler(self, command)
        self.clearing.dirty.update(self.ledger.touched)
        for account in self.ledger.touched:
            if account not in SYSTEM_ACCOUNTS:
                b = self.ledger.accounts[account]
                events.append(BalanceChanged(account, b.available, b.reserved, b.margin,
                                             b.escrow))
        for account, symbol in self._positions_touched:
            p = self.markets[symbol].positions[account]
            events.append(PositionChanged(account, symbol, p.qty, p.entry_value,
                                          p.realized_pnl))
        return events

    # --- orders ---------------------------------------------------------------------------

    def _place(self, cmd: PlaceOrder) -> None:
        market = self.markets.get(cmd.symbol)
        reason = self._order_refusal(cmd, market)
        if reason is None:
            assert market is not None
            reason = self._collateral_refusal(cmd, market)
        if reason is not None:
            self._events.append(OrderRejected(0, cmd.account, cmd.symbol, cmd.client_order_id,
                                              reason))
            return
        assert market is not None
        self._submit(cmd, market)

    def _submit(self, cmd: PlaceOrder, market: Market) -> None:
        order_id = self.next_order_id
        self.next_order_id += 1
        self._placing[order_id] = cmd
        if market.spot and cmd.side == Side.SELL:
            self._lock_price[order_id] = self._sell_lock_price(market, cmd)
        self._book(market, NewOrder(self._ts, order_id, self._account_id(cmd.account), cmd.side,
                                    cmd.price, cmd.qty, cmd.order_type, cmd.tif, cmd.post_only,
                                    cmd.display_qty, cmd.stop_price, cmd.expire_ts, cmd.stp))
        self._placing.pop(order_id, None)
        self._lock_price.pop(order_id, None)

    def _order_refusal(self, cmd: PlaceOrder, market: Market | None) -> Reason | None:
        if market is None:
            return Reason.UNKNOWN_SYMBOL
        if not is_address(cmd.account) or cmd.account in SYSTEM_ACCOUNTS:
            return Reason.INVALID_ACCOUNT
        if self._halted(market):
            return Reason.INSTRUMENT_HALTED
        if not fits_int64(cmd.price, cmd.qty, cmd.display_qty, cmd.stop_price, cmd.expire_ts):
            return Reason.INVALID_ORDER
        if cmd.qty <= 0:
            return Reason.INVALID_QUANTITY
        return None

    def _sell_lock_price(self, market: Market, cmd: PlaceOrder | AmendOrder) -> int:
        """The price a spot sell holds its bond at: the highest it can trade at. An incoming
        sell trades at the bids down to its limit; a stop triggers later, anywhere in the band."""
        if isinstance(cmd, PlaceOrder):
            if cmd.order_type in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET):
                return market.max_price
            limit = self._limit(cmd, market)
        else:
            limit = cmd.price
        bid = market.book.best_bid()
        return limit if bid is None else max(limit, bid)

    def _halted(self, market: Market) -> bool:
        """Whether ``market`` takes no orders: halted, or a future past its last trade time
        (before the `Timer` that halts it has come)."""
        return market.halted or (not market.spot and self._ts >= market.last_trade_ns)

    def _limit(self, cmd: PlaceOrder, market: Market) -> int:
        if cmd.order_type in (OrderType.MARKET, OrderType.STOP_MARKET):
            return market.max_price if cmd.side == Side.BUY else market.min_price
        return cmd.price

    def _collateral_refusal(self, cmd: PlaceOrder, market: Market) -> Reason | None:
        limit = self._limit(cmd, market)
        if not market.min_price <= limit <= market.max_price:
            return None  # the book refuses it with the precise reason
        if market.spot and cmd.side == Side.SELL:
            if cmd.qty > self.spot_room(cmd.account, market):
                return Reason.CAPACITY_EXCEEDED
            limit = self._sell_lock_price(market, cmd)
        need = market.order_lock(cmd.side, limit, cmd.qty)
        if not market.spot:
            position = market.positions.get(cmd.account) or Position()
            buys = position.open_buys + (cmd.qty if cmd.side == Side.BUY else 0)
            sells = position.open_sells + (cmd.qty if cmd.side == Side.SELL else 0)
            required = market.initial_margin(net_exposure(position.qty, buys, sells))
            more = required - position.held_orders - position.held_position
            if more <= 0 and self.ledger.balances(cmd.account).available < 0:
                return None  # a margin-called account may always reduce its risk
            need += max(0, more)
        if need > self.free_collateral(cmd.account):
            return Reason.INSUFFICIENT_FUNDS if market.spot else Reason.INSUFFICIENT_MARGIN
        return None

    def spot_room(self, account: str, market: Market) -> int:
        """Lots ``account`` may still offer on spot ``market`` in the window after the last
        command's time: with nodes of the underlying, their free units there
        (`Uptime.free_units`) less its open sells; without, its capacity less its open sells
        and what the window has sold. Below zero when its open sells no longer fit (its
        nodes stopped attesting). A spot sell of more is refused."""
        underlying = market.instrument.underlying
        window = window_start(self._ts, market.window_ns)
        committed = self.open_sells.get((account, market.symbol), 0)
        free = self.uptime.free_units(account, underlying, window, window + market.window_ns)
        if free is None:  # no nodes: the capacity set, less what the window has sold
            committed += self.sold.get((account, underlying, window), 0)
            free = self.capacity.get((account, underlying), 0)
        return free - committed

    def free_collateral(self, account: str) -> int:
        """What the account may commit now: available, less futures losses not yet settled.

        Each instrument's loss counts on its own: a gain not yet settled in one future does
        not offset a loss in another until a clearing cut has paid it.
        """
        found = self.ledger.accounts.get(account)
        free = found.available if found is not None else 0
        for market in self._futures_held.get(account, ()):
            free += min(0, market.positions[account].unsettled(market.mark) * market.tick_value)
        return free

    def _cancel(self, cmd: CancelOrder) -> None:
        order = self.orders.get(cmd.order_id)
        if order is None or order.account != cmd.account or order.symbol != cmd.symbol:
            self._events.append(OrderRejected(cmd.order_id, cmd.account, cmd.symbol, "",
                                              Reason.UNKNOWN_ORDER))
            return
        market = self.markets[order.symbol]
        self._book(market, Cancel(self._ts, order.order_id, self.account_ids[order.account]))

    def _amend(self, cmd: AmendOrder) -> None:
        order = self.orders.get(cmd.order_id)
        if order is None or order.account != cmd.account or order.symbol != cmd.symbol:
            self._events.append(OrderRejected(cmd.order_id, cmd.account, cmd.symbol, "",
                                              Reason.UNKNOWN_ORDER))
            return
        market = self.markets[order.symbol]
        refusal = Reason.INSTRUMENT_HALTED if self._halted(market) else \
            None if fits_int64(cmd.price, cmd.qty) else Reason.INVALID_ORDER
        if refusal is not None:
            self._events.append(OrderRejected(cmd.order_id, cmd.account, cmd.symbol, "",
                                              refusal))
            return
        lock_price = cmd.price
        if cmd.qty > 0 and market.min_price <= cmd.price <= market.max_price:
            if market.spot and order.side == Side.SELL:
                lock_price = self._sell_lock_price(market, cmd)
            need = market.order_lock(order.side, lock_price, cmd.qty) - order.lock
            more_margin = 0
            change = cmd.qty - order.remaining
            if market.spot:
                if order.side == Side.SELL and change > 0 and \
                        change > self.spot_room(order.account, market):
                    self._events.append(OrderRejected(cmd.order_id, cmd.account, cmd.symbol,
                                                      "", Reason.CAPACITY_EXCEEDED))
                    return
            elif change:  # only a new quantity changes the margin the orders need
                position = market.positions[order.account]
                buys = position.open_buys + (change if order.side == Side.BUY else 0)
                sells = position.open_sells + (change if order.side == Side.SELL else 0)
                required = market.initial_margin(net_exposure(position.qty, buys, sells))
                more_margin = required - position.held_orders - position.held_position
                need += more_margin
            if need > 0:
                free = self.free_collateral(order.account)
                # a margin-called account (available below zero after a clearing cut) may
                # always make changes that add no margin
                exempt = not market.spot and more_margin <= 0 and \
                    self.ledger.balances(order.account).available < 0
                if need > free and not exempt:
                    reason = Reason.INSUFFICIENT_FUNDS if market.spot \
                        else Reason.INSUFFICIENT_MARGIN
                    self._events.append(OrderRejected(cmd.order_id, cmd.account, cmd.symbol,
                                                      "", reason))
                    return
        self._lock_price[order.order_id] = lock_price
        self._book(market, Amend(self._ts, order.order_id, self.account_ids[order.account],
                                 cmd.price, cmd.qty))
        self._lock_price.pop(order.order_id, None)

    def _cancel_all(self, cmd: CancelAll) -> None:
        account_id = self.account_ids.get(cmd.account)
        reason = None
        if not is_address(cmd.account):
            reason = Reason.INVALID_ACCOUNT
        elif cmd.symbol is not None and cmd.symbol not in self.markets:
            reason = Reason.UNKNOWN_SYMBOL
        if reason is not None:
            self._events.append(CommandRejected("cancel_all", cmd.account, 0, reason))
            return
        if account_id is None:
            return
        symbols = [cmd.symbol] if cmd.symbol is not None else self._market_order
        for symbol in symbols:
            self._book(self.markets[symbol], MassCancel(self._ts, account_id, cmd.side))

    def _account_id(self, account: str) -> int:
        found = self.account_ids.get(account)
        if found is None:
            self.account_names.append(account)
            found = self.account_ids[account] = len(self.account_names)
        return found

    # --- what the books say ---------------------------------------------------------------

    def _book(self, market: Market, command: NewOrder | Cancel | Amend | MassCancel |
              ExpireOrders) -> None:
        for event in market.book.apply(command):
            self._on_book_event(market, event)

    def _on_book_event(self, market: Market, event: BookEvent) -> None:
        events = self._events
        symbol = market.symbol
        if isinstance(event, BookLevel):
            events.append(BookUpdate(symbol, event.side, event.price, event.qty))
        elif isinstance(event, Fill):
            self._on_fill(market, event)
        elif isinstance(event, Accepted):
            self._on_accepted(market, event)
        elif isinstance(event, Cancelled):
            order = self.orders[event.order_id]
            self._resize(market, order, event.remaining, release=True)
            reason = Reason(event.reason.name.lower())
            if self._cancel_reason is not None and reason == Reason.MASS_CANCEL:
                reason = self._cancel_reason  # the exchange's own mass cancel says why
            events.append(OrderCancelled(event.order_id, order.account, symbol, reason,
                                         event.qty, event.remaining))
        elif isinstance(event, Amended):
            order = self.orders[event.order_id]
            order.limit = self._lock_price.get(event.order_id) or event.price
            self._resize(market, order, event.qty, release=True)
            events.append(OrderAmended(event.order_id, order.account, symbol, event.price,
                                       event.qty))
        elif isinstance(event, Triggered):
            order = self.orders[event.order_id]
            events.append(OrderTriggered(event.order_id, order.account, symbol,
                                         event.stop_price))
        else:
            assert isinstance(event, Rejected)
            placing = self._placing.get(event.order_id)
            account = self.account_names[event.account - 1]
            events.append(OrderRejected(0 if placing else event.order_id, account, symbol,
                                        placing.client_order_id if placing else "",
                                        _BOOK_REASONS[event.reason]))

    def _on_accepted(self, market: Market, event: Accepted) -> None:
        cmd = self._placing[event.order_id]
        limit = self._lock_price.get(event.order_id) or self._limit(cmd, market)
        order = LiveOrder(event.order_id, cmd.account, market.symbol, cmd.side, limit, 0, 0,
                          cmd)
        self.orders[event.order_id] = order
        if cmd.tif == TimeInForce.GTD:
            heapq.heappush(self._expiries, (cmd.expire_ts, event.order_id))
        self._resize(market, order, cmd.qty, release=False)
        self._events.append(OrderAccepted(event.order_id, cmd.account, market.symbol,
                                          cmd.client_order_id, cmd.side, cmd.order_type,
                                          cmd.tif, cmd.price, cmd.qty, cmd.stop_price))

    def _resize(self, market: Market, order: LiveOrder, remaining: int, *,
                release: bool) -> int:
        """Set an order's open quantity: adjust its lock and the open lots it counts for.

        Returns the lock it gave up; with ``release`` that goes back to available.
        """
        change = remaining - order.remaining
        lock = market.order_lock(order.side, order.limit, remaining) if remaining else 0
        freed = order.lock - lock
        if release or freed < 0:
            self.ledger.move(order.account, "reserved", "available", freed)
        order.lock = lock
        order.remaining = remaining
        if remaining == 0:
            del self.orders[order.order_id]
            if len(self._expiries) > 2 * len(self.orders) + EXPIRIES_SLACK:
                self._expiries = self._gtd_expiries()  # drop the gone orders' entries
        if market.spot:
            if order.side == Side.SELL:
                key = (order.account, market.symbol)
                left = self.open_sells.get(key, 0) + change
                if left:
                    self.open_sells[key] = left
                else:
                    self.open_sells.pop(key, None)
        elif change:
            position = self._position(market, order.account, touch=False)
            if order.side == Side.BUY:
                position.open_buys += change
            else:
                position.open_sells += change
            self._remargin(market, order.account, position)
        return freed

    def _on_fill(self, market: Market, fill: Fill) -> None:
        spec = market.instrument
        maker = self.orders[fill.maker_order_id]
        taker = self.orders[fill.taker_order_id]
        maker.filled += fill.qty
        taker.filled += fill.qty
        notional = fill.price * fill.qty * market.tick_value
        maker_fee_bp, taker_fee_bp = spec.maker_fee_bp, spec.taker_fee_bp
        maker_account, taker_account = maker.account, taker.account
        buyer_is_maker = maker.side == Side.BUY
        trade = Trade(market.symbol, fill.trade_id, fill.price, fill.qty, fill.aggressor_side,
                      fill.maker_order_id, fill.taker_order_id, maker_account, taker_account,
                      fill.maker_remaining, fill.taker_remaining, 0, 0)
        if market.spot:
            buyer, seller = (maker, taker) if buyer_is_maker else (taker, maker)
            buyer_bp, seller_bp = (maker_fee_bp, taker_fee_bp) if buyer_is_maker else \
                (taker_fee_bp, maker_fee_bp)
            buyer_fee = fee(notional, buyer_bp)
            self._resize(market, buyer, fill.maker_remaining if buyer_is_maker
                         else fill.taker_remaining, release=True)
            bond = self._resize(market, seller, fill.taker_remaining if buyer_is_maker
                                else fill.maker_remaining, release=False)
            ledger = self.ledger
            ledger.move(buyer.account, "available", "escrow", notional)
            ledger.transfer(buyer.account, "available", FEE_ACCOUNT, "available", buyer_fee)
            ledger.move(seller.account, "reserved", "escrow", bond)
            trade = msgspec.structs.replace(
                trade, **{"maker_fee" if buyer_is_maker else "taker_fee": buyer_fee})
            self._events.append(trade)
            self.clearing.fill(market.symbol, fill.trade_id, fill.price, fill.qty, maker.side,
                               maker_account, taker_account, self._ts)
            self._open_delivery(market, fill, buyer.account, seller.account, notional, bond,
                                seller_bp)
            return
        maker_fee, taker_fee = fee(notional, maker_fee_bp), fee(notional, taker_fee_bp)
        for order, remaining, charged in ((maker, fill.maker_remaining, maker_fee),
                                          (taker, fill.taker_remaining, taker_fee)):
            position = self._position(market, order.account)
            position.trade(fill.qty if order.side == Side.BUY else -fill.qty, fill.price,
                           market.tick_value)
            self._resize(market, order, remaining, release=True)
            self.ledger.transfer(order.account, "available", FEE_ACCOUNT, "available", charged)
        self._events.append(msgspec.structs.replace(trade, maker_fee=maker_fee,
                                                    taker_fee=taker_fee))
        self.clearing.fill(market.symbol, fill.trade_id, fill.price, fill.qty, maker.side,
                           maker_account, taker_account, self._ts)

    def _open_delivery(self, market: Market, fill: Fill, buyer: str, seller: str,
                       premium: int, bond: int, seller_fee_bp: int) -> None:
        start = window_start(self._ts, market.window_ns)
        underlying = market.instrument.underlying
        key = (seller, underlying, start)
        self.sold[key] = self.sold.get(key, 0) + fill.qty
        delivery = Delivery(self.next_delivery_id, market.symbol, underlying, fill.trade_id,
                            seller, buyer, fill.qty, start, start + market.window_ns, premium,
                            bond, seller_fee_bp)
        self.next_delivery_id += 1
        self.deliveries[delivery.delivery_id] = delivery
        self._events.append(DeliveryOpened(delivery.delivery_id, market.symbol, fill.trade_id,
                                           seller, buyer, fill.qty, start, delivery.window_end,
                                           premium, bond))
        if not self.uptime.has_nodes(seller, underlying):
            heapq.heappush(self._delivery_queue, (delivery.window_end, delivery.delivery_id))
            return
        delivery.allocation = self.uptime.allocate(delivery)
        heapq.heappush(self._attested_queue, (delivery.window_end, delivery.delivery_id))
        for node, units in delivery.allocation:
            self._events.append(DeliveryAllocated(delivery.delivery_id, node, units))

    def _position(self, market: Market, account: str, *, touch: bool = True) -> Position:
        """The account's position in a future (created flat); ``touch`` reports it."""
        position = market.positions.get(account)
        if position is None:
            position = market.positions[account] = Position()
            self._futures_held.setdefault(account, []).append(market)
        if touch:
            self._positions_touched[(account, market.symbol)] = None
        return position

    def _remargin(self, market: Market, account: str, position: Position) -> None:
        """Hold exactly the initial margin the position and its open orders need now."""
        on_position = market.initial_margin(abs(position.qty))
        total = market.initial_margin(net_exposure(position.qty, position.open_buys,
                                                   position.open_sells))
        on_orders = total - on_position
        self.ledger.move(account, "available", "reserved", on_orders - position.held_orders)
        self.ledger.move(account, "available", "margin", on_position - position.held_position)
        position.held_orders = on_orders
        position.held_position = on_position

    # --- money in and out -----------------------------------------------------------------

    def _deposit(self, cmd: CreditDeposit) -> None:
        reason = None
        if not is_address(cmd.account) or cmd.account == FEE_ACCOUNT:
            reason = Reason.INVALID_ACCOUNT
        elif not 0 < cmd.amount < 1 << 63 or not fits_int64(cmd.deposit_id):
            reason = Reason.INVALID_AMOUNT
        elif cmd.deposit_id in self.deposits_seen:
            reason = Reason.DUPLICATE_DEPOSIT
        if reason is not None:
            self._events.append(CommandRejected("credit_deposit", cmd.account, cmd.deposit_id,
                                                reason))
            return
        self.deposits_seen.add(cmd.deposit_id)
        self.ledger.deposit(cmd.account, cmd.amount)
        self.clearing.credit(cmd.account, cmd.amount)
        self._events.append(DepositCredited(cmd.deposit_id, cmd.account, cmd.amount))

    def _withdraw(self, cmd: RequestWithdrawal) -> None:
        reason = None
        if not is_address(cmd.account) or cmd.account in SYSTEM_ACCOUNTS:
            reason = Reason.INVALID_ACCOUNT
        elif not 0 < cmd.amount < 1 << 63 or not fits_int64(cmd.withdrawal_id):
            reason = Reason.INVALID_AMOUNT
        elif cmd.withdrawal_id in self.withdrawals_seen:
            reason = Reason.DUPLICATE_WITHDRAWAL
        elif cmd.amount > self.free_collateral(cmd.account):
            reason = Reason.INSUFFICIENT_FUNDS
        if reason is not None:
            self._events.append(CommandRejected("request_withdrawal", cmd.account,
                                                cmd.withdrawal_id, reason))
            return
        self.withdrawals_seen.add(cmd.withdrawal_id)
        self.ledger.withdraw(cmd.account, cmd.amount)
        self.clearing.withdraw(BatchWithdrawal(cmd.withdrawal_id, 0, cmd.account, cmd.amount))
        self._events.append(WithdrawalRequested(cmd.withdrawal_id, cmd.account, cmd.amount))

    def _force_withdrawal(self, cmd: ForceWithdrawal) -> None:
        reason = None
        if not is_address(cmd.account) or cmd.account in SYSTEM_ACCOUNTS:
            reason = Reason.INVALID_ACCOUNT
        elif not 0 < cmd.amount < 1 << 63 or not 0 < cmd.request_id < 1 << 63:
            reason = Reason.INVALID_AMOUNT
        elif cmd.request_id in self.clearing.forced_seen:
            reason = Reason.DUPLICATE_REQUEST
        if reason is not None:
            self._events.append(CommandRejected("force_withdrawal", cmd.account,
                                                cmd.request_id, reason))
            return
        self.clearing.forced_seen.add(cmd.request_id)
        account_id = self.account_ids.get(cmd.account)
        if account_id is not None:
            self._cancel_reason = Reason.FORCED_WITHDRAWAL
            for symbol in self._market_order:
                self._book(self.markets[symbol], MassCancel(self._ts, account_id))
            self._cancel_reason = None
        paid = min(cmd.amount, max(0, self.free_collateral(cmd.account)))
        if paid:
            self.ledger.withdraw(cmd.account, paid)
        # served even when nothing is free, so the contract sees the request answered
        self.clearing.withdraw(BatchWithdrawal(0, cmd.request_id, cmd.account, paid))
        self._events.append(ForcedWithdrawal(cmd.request_id, cmd.account, cmd.amount, paid))

    def _batch_confirmed(self, cmd: BatchConfirmed) -> None:
        if not self.clearing.confirm(cmd.batch_id):
            self._events.append(CommandRejected("batch_confirmed", "", cmd.batch_id,
                                                Reason.UNKNOWN_BATCH))
            return
        self._events.append(ClearingConfirmed(cmd.batch_id, cmd.batch_hash))

    def _set_capacity(self, cmd: SetCapacity) -> None:
        reason = None
        if not is_address(cmd.account) or cmd.account in SYSTEM_ACCOUNTS:
            reason = Reason.INVALID_ACCOUNT
        elif not self._traded_spot(cmd.underlying):
            reason = Reason.UNKNOWN_UNDERLYING
        elif not 0 <= cmd.units < 1 << 63:
            reason = Reason.INVALID_AMOUNT
        if reason is not None:
            self._events.append(CommandRejected("set_capacity", cmd.account, 0, reason))
            return
        self.capacity[(cmd.account, cmd.underlying)] = cmd.units
        self._events.append(CapacitySet(cmd.account, cmd.underlying, cmd.units))

    def _traded_spot(self, underlying: str) -> bool:
        return any(m.spot and m.instrument.underlying == underlying
                   for m in self.markets.values())

    # --- nodes, epochs and attestations (engine.uptime) -----------------------------------

    def _register_node(self, cmd: RegisterNode) -> None:
        reason = self.uptime.register(cmd) if self._traded_spot(cmd.underlying) \
            else Reason.UNKNOWN_UNDERLYING
        if reason is not None:
            self._events.append(CommandRejected("register_node", cmd.node, 0, reason))
            return
        self._events.append(NodeRegistered(cmd.node, cmd.provider, cmd.underlying, cmd.units))

    def _deregister_node(self, cmd: DeregisterNode) -> None:
        reason = self.uptime.deregister(cmd)
        if reason is not None:
            self._events.append(CommandRejected("deregister_node", cmd.node, 0, reason))
            return
        provider = self.uptime.nodes[cmd.node].provider
        self._events.append(NodeDeregistered(cmd.node, provider, cmd.effective_ts))

    def _open_epoch(self, cmd: OpenEpoch) -> None:
        # epochs from here on may still count for an open delivery, or for one sold later
        keep_from = min([d.window_start for d in self.deliveries.values()
                         if d.allocation is not None] + [self._ts + 1])
        reason = self.uptime.open_epoch(cmd, keep_from)
        if reason is not None:
            self._events.append(CommandRejected("open_epoch", "", cmd.epoch, reason))
            return
        self._events.append(EpochOpened(cmd.epoch, cmd.beacon, cmd.start_ts, cmd.length_ns))

    def _attestation_accepted(self, cmd: AttestationAccepted) -> None:
        reason = self.uptime.attest(cmd)
        if reason is not None:
            self._events.append(CommandRejected("attestation_accepted", cmd.node, cmd.epoch,
                                                reason))
            return
        self._events.append(AttestationRecorded(cmd.node, cmd.epoch,
                                                self.uptime.nodes[cmd.node].provider))
        self.clearing.attest(cmd.node, cmd.epoch, cmd.nonce, cmd.digest)

    def _index_fix(self, cmd: IndexFix) -> None:
        year, month, day = cmd.day // 10000, cmd.day // 100 % 100, cmd.day % 100
        if cmd.underlying not in self.underlyings:
            reason: Reason | None = Reason.UNKNOWN_UNDERLYING
        elif not 0 < cmd.price < 1 << 63 or not 1970 <= year <= 9999 or \
                not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
            reason = Reason.INVALID_AMOUNT
        else:
            reason = None
        if reason is not None:
            self._events.append(CommandRejected("index_fix", "", cmd.day, reason))
            return
        self.fixes[(cmd.underlying, cmd.day)] = cmd.price
        self._events.append(IndexFixed(cmd.underlying, cmd.day, cmd.price))

    def _list_instrument(self, cmd: ListInstrument) -> None:
        spec = cmd.instrument
        if spec.symbol in self.markets or spec.instrument_id in self._instrument_ids:
            self._events.append(CommandRejected("list_instrument", "", spec.instrument_id,
                                                Reason.ALREADY_LISTED))
            return
        self.markets[spec.symbol] = Market(spec, self._book_factory)
        self._market_order = sorted(self.markets)
        self.underlyings.add(spec.underlying)
        self._instrument_ids.add(spec.instrument_id)
        self._events.append(InstrumentListed(spec.symbol, spec.instrument_id))

    # --- time -----------------------------------------------------------------------------

    def _timer(self, timer: Timer) -> None:
        ts = self._ts
        for symbol in self._market_order:
            market = self.markets[symbol]
            self._book(market, ExpireOrders(ts))
            if market.spot or market.settled:
                continue
            if not market.halted and ts >= market.last_trade_ns:
                self._halt(market)
            if market.halted and ts >= market.month_end_ns:
                self._settle_expiry(market)
        due = []
        for queue, grace in ((self._delivery_queue, 0),
                             (self._attested_queue, self.uptime.grace())):
            while queue and queue[0][0] + grace <= ts:
                due.append(heapq.heappop(queue))
        for _, delivery_id in sorted(due):
            delivery = self.deliveries.pop(delivery_id, None)
            if delivery is None:
                continue  # settled already by SettleDelivery
            if delivery.allocation is None:
                self._close_delivery(delivery, delivery.qty, delivery.qty)
            else:
                self._close_delivery(delivery, *self.uptime.settlement(delivery))

    def _gtd_expiries(self) -> list[tuple[int, int]]:
        """(expire_ts, order id) of the open GTD orders, as a heap."""
        return sorted((o.placed.expire_ts, o.order_id) for o in self.orders.values()
                      if o.placed is not None and o.placed.tif == TimeInForce.GTD)

    def timer_due(self, ts: int) -> bool:
        """Whether a `Timer` at ``ts`` would expire a GTD order, close a delivery window or
        halt or settle a future (cheap: what runs the exchange's clock asks it every
        second)."""
        expiries = self._expiries
        while expiries and expiries[0][1] not in self.orders:  # filled or cancelled since
            heapq.heappop(expiries)
        if expiries and expiries[0][0] < ts:  # a book expires what is earlier than now
            return True
        if self._delivery_queue and self._delivery_queue[0][0] <= ts:
            return True
        if self._attested_queue and self._attested_queue[0][0] + self.uptime.grace() <= ts:
            return True
        return any(not market.spot and not market.settled and (
            ts >= market.month_end_ns and self._month_fixes(market) is not None
            if market.halted else ts >= market.last_trade_ns)
            for market in self.markets.values())

    def _settle_delivery(self, cmd: SettleDelivery) -> None:
        delivery = self.deliveries.get(cmd.delivery_id)
        reason = None
        if delivery is None:
            reason = Reason.UNKNOWN_DELIVERY
        elif delivery.allocation is not None:
            reason = Reason.DELIVERY_ATTESTED
        elif not 0 <= cmd.delivered <= cmd.required < 1 << 63 or cmd.required <= 0:
            reason = Reason.INVALID_AMOUNT
        elif self._ts < delivery.window_end:
            reason = Reason.DELIVERY_NOT_DUE  # nothing is proven before the window is over
        if reason is not None:
            self._events.append(CommandRejected("settle_delivery", "", cmd.delivery_id, reason))
            return
        self._close_delivery(self.deliveries.pop(cmd.delivery_id), cmd.delivered, cmd.required)

    def _halt(self, market: Market) -> None:
        market.halted = True
        self._events.append(InstrumentHalted(market.symbol))
        owners = sorted({self.account_ids[o.account] for o in self.orders.values()
                         if o.symbol == market.symbol})
        self._cancel_reason = Reason.HALTED
        for account_id in owners:
            self._book(market, MassCancel(self._ts, account_id))
        self._cancel_reason = None

    def _month_fixes(self, market: Market) -> list[int] | None:
        """The index fixes of every day of the future's delivery month, or None while one is
        missing (the final settlement is their mean: it waits for all of them)."""
        expiry = market.instrument.expiry
        assert expiry is not None
        first = expiry.year * 10000 + expiry.month * 100
        fixes = [price for (underlying, day), price in self.fixes.items()
                 if underlying == market.instrument.underlying and first < day < first + 100]
        return fixes if len(fixes) == calendar.monthrange(expiry.year, expiry.month)[1] \
            else None

    def _settle_expiry(self, market: Market) -> None:
        fixes = self._month_fixes(market)
        if fixes is None:
            return
        price = market.to_ticks(sum(fixes), len(fixes))
        market.settled = True
        market.mark = price
        for account in sorted(market.positions):
            position = self._position(market, account)
            position.trade(-position.qty, price, market.tick_value)
            self._pay_variation(market, account, position.settle(price))
            self._remargin(market, account, position)
        self._events.append(FinalSettlement(market.symbol, price))
        self._cover_shortfalls(sorted(market.positions))

    def _close_delivery(self, delivery: Delivery, delivered: int, required: int) -> None:
        split = payout(delivery, delivered, required)
        if delivery.allocation is not None:
            self.uptime.release(delivery)
        ledger = self.ledger
        buyer, seller = delivery.buyer, delivery.seller
        ledger.transfer(buyer, "escrow", seller, "available", split.seller_paid)
        ledger.transfer(buyer, "escrow", FEE_ACCOUNT, "available", split.seller_fee)
        ledger.move(buyer, "escrow", "available", split.buyer_refund)
        ledger.transfer(seller, "escrow", buyer, "available", split.buyer_compensation)
        ledger.move(seller, "escrow", "available", split.bond_released)
        key = (seller, delivery.underlying, delivery.window_start)
        left = self.sold[key] - delivery.qty
        if left:
            self.sold[key] = left
        else:
            del self.sold[key]
        self._events.append(DeliverySettled(delivery.delivery_id, delivered, required,
                                            split.seller_paid, split.seller_fee,
                                            split.buyer_refund, split.buyer_compensation,
                                            split.bond_released))
        if self._equity(seller) < 0:  # a bond the insurance fund counted on is gone
            self._cover_shortfalls((seller,))

    # --- clearing -------------------------------------------------------------------------

    def _clearing_cut(self, cut: ClearingCut) -> None:
        self.cuts += 1
        exposed: set[str] = set()
        for symbol in self._market_order:
            market = self.markets[symbol]
            if market.spot or market.settled:
                continue
            self._book(market, ExpireOrders(self._ts))  # expired quotes make no mark
            price, source = self._mark(market)
            market.mark = price
            self._events.append(MarkPrice(symbol, price, source))
            for account in sorted(market.positions):
                position = market.positions[account]
                self._pay_variation(market, account, position.settle(price))
                self._remargin(market, account, position)
                if position.qty or position.open_buys or position.open_sells:
                    exposed.add(account)
        for account in sorted(exposed):
            equity = self._equity(account)
            maintenance = sum(
                self.markets[s].maintenance_margin(abs(self.markets[s].positions[account].qty))
                for s in self._market_order if account in self.markets[s].positions
            )
            if equity < maintenance:
                self._liquidate(account, equity, maintenance)
        self._cover_shortfalls(sorted(exposed | set(self.ledger.touched) - SYSTEM_ACCOUNTS))
        clearing = self.clearing
        clearing.dirty.update(self.ledger.touched)
        totals = {a: self.ledger.balances(a).total() for a in clearing.dirty}
        self._events.extend(clearing.cut(self.cuts, totals, max(self.deposits_seen, default=0)))
        self._events.append(ClearingCompleted(self.cuts))

    def _mark(self, market: Market) -> tuple[int, str]:
        book = market.book
        bid, ask = book.best_bid(), book.best_ask()
        if bid is not None and ask is not None and not self._halted(market):
            return (bid + ask) // 2, "mid"  # quotes that can no longer trade make no mark
        if book.last_price:
            return book.last_price, "last_trade"
        underlying = market.instrument.underlying
        latest = max((day for (u, day) in self.fixes if u == underlying), default=None)
        if latest is not None:
            index = market.to_ticks(self.fixes[(underlying, latest)])
            return min(max(index, market.min_price), market.max_price), "index"
        return market.mark, "previous"

    def _pay_variation(self, market: Market, account: str, ticks_lots: int) -> None:
        if ticks_lots:
            amount = ticks_lots * market.tick_value
            b = self.ledger.balances(account)
            b.available += amount
            self.ledger.touched[account] = None
            self._positions_touched[(account, market.symbol)] = None
            self._events.append(VariationMargin(account, market.symbol, amount))

    def _equity(self, account: str) -> int:
        b = self.ledger.balances(account)
        return b.available + b.reserved + b.margin

    def _liquidate(self, account: str, equity: int, maintenance: int) -> None:
        self._events.append(Liquidation(account, equity, maintenance))
        account_id = self.account_ids[account]
        self._cancel_reason = Reason.LIQUIDATION
        for symbol in self._market_order:
            self._book(self.markets[symbol], MassCancel(self._ts, account_id))
        self._cancel_reason = None
        for symbol in self._market_order:
            market = self.markets[symbol]
            position = market.positions.get(account)
            if market.spot or self._halted(market) or position is None or not position.qty:
                continue
            side = Side.SELL if position.qty > 0 else Side.BUY
            self._submit(PlaceOrder(account, symbol, side, abs(position.qty),
                                    order_type=OrderType.MARKET, tif=TimeInForce.IOC,
                                    stp=SelfTradePrevention.CANCEL_NEWEST,
                                    client_order_id="liquidation"), market)

    def _cover_shortfalls(self, accounts: Iterable[str]) -> None:
        """Top up accounts whose equity is below zero from the insurance fund.

        A seller's bonds in escrow come back to it when their windows close, so they count
        first: the fund pays only what they cannot, and pays the rest later if a delivery
        falls short (`_close_delivery` looks again).
        """
        for account in accounts:
            bonds = sum(d.bond for d in self.deliveries.values() if d.seller == account)
            shortfall = -(self._equity(account) + bonds)
            if shortfall > 0:
                self.ledger.transfer(INSURANCE_FUND, "available", account, "available",
                                     shortfall)
                fund = self.ledger.balances(INSURANCE_FUND).available
                self._events.append(InsuranceCover(account, shortfall, fund))

    _handlers: ClassVar[dict[type, Callable[[Exchange, Any], None]]] = {}

    # --- state ----------------------------------------------------------------------------

    def state(self) -> ExchangeState:
        """The full state in canonical order (see `ExchangeState`).

        It shares the exchange's live records: encode it before applying another command.
        """
        markets = [self.markets[s] for s in self._market_order]
        return ExchangeState(
            last_seq=self.last_seq,
            last_ts=self._ts,
            next_order_id=self.next_order_id,
            next_delivery_id=self.next_delivery_id,
            cuts=self.cuts,
            instruments=[m.instrument for m in markets],
            account_ids=list(self.account_names),
            balances=sorted(self.ledger.accounts.items()),
            deposited=self.ledger.deposited,
            withdrawn=self.ledger.withdrawn,
            orders=[self.orders[i] for i in sorted(self.orders)],
            positions=[(a, m.symbol, m.positions[a]) for m in markets
                       for a in sorted(m.positions)],
            markets=[(m.symbol, m.halted, m.settled, m.mark, m.book.state()) for m in markets],
            deliveries=[self.deliveries[i] for i in sorted(self.deliveries)],
            capacity=sorted((a, u, n) for (a, u), n in self.capacity.items()),
            sold=sorted((a, u, w, n) for (a, u, w), n in self.sold.items()),
            open_sells=sorted((a, s, n) for (a, s), n in self.open_sells.items()),
            deposits_seen=sorted(self.deposits_seen),
            withdrawals_seen=sorted(self.withdrawals_seen),
            fixes=sorted((u, d, p) for (u, d), p in self.fixes.items()),
            clearing=self.clearing.state(),
            uptime=self.uptime.state(),
        )

    def state_hash(self) -> str:
        """Hex digest of the canonical state: equal exchanges have equal hashes."""
        return state_digest(encode_state(self.state()))

    @classmethod
    def restore(cls, state: ExchangeState,
                book_factory: BookFactory = CythonBook) -> Exchange:
        """An exchange in exactly the state ``state`` describes."""
        exchange = cls(state.instruments, book_factory)
        exchange.last_seq = state.last_seq
        exchange._ts = state.last_ts
        exchange.next_order_id = state.next_order_id
        exchange.next_delivery_id = state.next_delivery_id
        exchange.cuts = state.cuts
        for account in state.account_ids:
            exchange._account_id(account)
        exchange.ledger.accounts = {a: msgspec.structs.replace(b) for a, b in state.balances}
        exchange.ledger.deposited = state.deposited
        exchange.ledger.withdrawn = state.withdrawn
        exchange.orders = {o.order_id: msgspec.structs.replace(o) for o in state.orders}
        exchange._expiries = exchange._gtd_expiries()
        for account, symbol, position in state.positions:
            market = exchange.markets[symbol]
            market.positions[account] = msgspec.structs.replace(position)
            exchange._futures_held.setdefault(account, []).append(market)
        for symbol, halted, settled, mark, book_state in state.markets:
            market = exchange.markets[symbol]
            market.halted, market.settled, market.mark = halted, settled, mark
            market.book.restore(book_state)
        for delivery in state.deliveries:
            exchange.deliveries[delivery.delivery_id] = msgspec.structs.replace(delivery)
            queue = exchange._delivery_queue if delivery.allocation is None \
                else exchange._attested_queue
            heapq.heappush(queue, (delivery.window_end, delivery.delivery_id))
        exchange.capacity = {(a, u): n for a, u, n in state.capacity}
        exchange.sold = {(a, u, w): n for a, u, w, n in state.sold}
        exchange.open_sells = {(a, s): n for a, s, n in state.open_sells}
        exchange.deposits_seen = set(state.deposits_seen)
        exchange.withdrawals_seen = set(state.withdrawals_seen)
        exchange.fixes = {(u, d): p for u, d, p in state.fixes}
        exchange.clearing = Clearing.restore(state.clearing)
        exchange.uptime = Uptime.restore(state.uptime)
        return exchange


Exchange._handlers = {
    PlaceOrder: Exchange._place,
    CancelOrder: Exchange._cancel,
    AmendOrder: Exchange._amend,
    CancelAll: Exchange._cancel_all,
    CreditDeposit: Exchange._deposit,
    RequestWithdrawal: Exchange._withdraw,
    ForceWithdrawal: Exchange._force_withdrawal,
    BatchConfirmed: Exchange._batch_confirmed,
    SetCapacity: Exchange._set_capacity,
    IndexFix: Exchange._index_fix,
    SettleDelivery: Exchange._settle_delivery,
    RegisterNode: Exchange._register_node,
    DeregisterNode: Exchange._deregister_node,
    OpenEpoch: Exchange._open_epoch,
    AttestationAccepted: Exchange._attestation_accepted,
    ListInstrument: Exchange._list_instrument,
    ClearingCut: Exchange._clearing_cut,
    Timer: Exchange._timer,
}
