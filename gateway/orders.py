"""Each account's live orders as the gateway shows them, kept from the exchange's events.

The tracker answers "which order is this ``cl_ord_id``?" (for idempotent places, cancels and
amends by client id) and turns order events into `OrderView`s for replies and the private
``orders`` channel. It starts from the exchange's live orders, so a restarted server still
knows every live order and its client id.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.commands import PlaceOrder
from engine.events import OrderAccepted, OrderAmended, OrderCancelled, OrderTriggered, Trade
from engine.market import LiveOrder
from engine.messages import OrderType, Side, TimeInForce
from gateway.api import OrderView
from gateway.market_data import SymbolBook, side_name

_TYPES = {OrderType.LIMIT: "limit", OrderType.MARKET: "market",
          OrderType.STOP_LIMIT: "stop_limit", OrderType.STOP_MARKET: "stop_market"}
_TIFS = {TimeInForce.GTC: "gtc", TimeInForce.IOC: "ioc", TimeInForce.FOK: "fok",
         TimeInForce.GTD: "gtd"}


class TrackedOrder:
    """One order's public status."""

    __slots__ = ("account", "cl_ord_id", "filled", "order_id", "order_type", "price", "qty",
                 "reason", "remaining", "side", "status", "stop_price", "symbol", "tif")

    def __init__(self, order_id: int, account: str, symbol: str, cl_ord_id: str, side: Side,
                 order_type: OrderType, tif: TimeInForce, price: int, stop_price: int,
                 qty: int) -> None:
        self.order_id = order_id
        self.account = account
        self.symbol = symbol
        self.cl_ord_id = cl_ord_id
        self.side = side
        self.order_type = order_type
        self.tif = tif
        self.price = price
        self.stop_price = stop_price
        self.qty = qty
        self.filled = 0
        self.remaining = qty
        self.reason: str | None = None
        self.status = "pending_trigger" if order_type in (OrderType.STOP_LIMIT,
                                                          OrderType.STOP_MARKET) else "new"

    @property
    def live(self) -> bool:
        """Still open on the exchange."""
        return self.status not in ("filled", "cancelled")

    def view(self, book: SymbolBook) -> OrderView:
        """The order as the API shows it."""
        return OrderView(
            self.order_id, self.cl_ord_id, self.symbol, side_name(self.side),
            _TYPES[self.order_type], _TIFS[self.tif],
            book.price(self.price) if self.price else None,
            book.price(self.stop_price) if self.stop_price else None,
            book.qty(self.qty), book.qty(self.filled), book.qty(self.remaining), self.status,
            self.reason,
        )


class OrderTracker:
    """Live orders by id and by (account, client order id)."""

    def __init__(self, live: Iterable[LiveOrder] = ()) -> None:
        self.orders: dict[int, TrackedOrder] = {}
        self.by_client_id: dict[tuple[str, str], int] = {}
        for order in live:
            placed = order.placed
            if placed is None:
                continue
            tracked = self._track(order.order_id, placed)
            tracked.filled = order.filled
            tracked.remaining = order.remaining
            tracked.qty = order.filled + order.remaining
            if order.filled:
                tracked.status = "partially_filled"

    def _track(self, order_id: int, cmd: PlaceOrder) -> TrackedOrder:
        tracked = TrackedOrder(order_id, cmd.account, cmd.symbol, cmd.client_order_id,
                               cmd.side, cmd.order_type, cmd.tif, cmd.price, cmd.stop_price,
                               cmd.qty)
        self.orders[order_id] = tracked
        if cmd.client_order_id:
            self.by_client_id[(cmd.account, cmd.client_order_id)] = order_id
        return tracked

    def find(self, account: str, order_id: int | None, cl_ord_id: str | None
             ) -> TrackedOrder | None:
        """The account's live order by exchange id or client id; None for anyone else's."""
        if order_id is None and cl_ord_id is not None:
            order_id = self.by_client_id.get((account, cl_ord_id))
        order = self.orders.get(order_id) if order_id is not None else None
        return order if order is not None and order.account == account else None

    def accepted(self, event: OrderAccepted) -> TrackedOrder:
        """A new order is live."""
        tracked = TrackedOrder(event.order_id, event.account, event.symbol,
                               event.client_order_id, event.side, event.order_type, event.tif,
                               event.price, event.stop_price, event.qty)
        self.orders[event.order_id] = tracked
        if event.client_order_id:
            self.by_client_id[(event.account, event.client_order_id)] = event.order_id
        return tracked

    def traded(self, event: Trade) -> tuple[TrackedOrder | None, TrackedOrder | None]:
        """Both sides of a trade, updated (maker, taker)."""
        maker = self._fill(event.maker_order_id, event.qty, event.maker_remaining)
        taker = self._fill(event.taker_order_id, event.qty, event.taker_remaining)
        return maker, taker

    def _fill(self, order_id: int, qty: int, remaining: int) -> TrackedOrder | None:
        order = self.orders.get(order_id)
        if order is None:
            return None
        order.filled += qty
        order.remaining = remaining
        order.status = "filled" if remaining == 0 else "partially_filled"
        if remaining == 0:
            self._forget(order)
        return order

    def cancelled(self, event: OrderCancelled) -> TrackedOrder | None:
        """Part or all of an order was cancelled."""
        order = self.orders.get(event.order_id)
        if order is None:
            return None
        order.remaining = event.remaining
        if event.remaining:
            order.qty = order.filled + event.remaining  # decremented (self-trade prevention)
        else:
            order.status = "cancelled"
            order.reason = str(event.reason)
            self._forget(order)
        return order

    def amended(self, event: OrderAmended) -> TrackedOrder | None:
        """An order's price or open quantity changed."""
        order = self.orders.get(event.order_id)
        if order is None:
            return None
        order.price = event.price
        order.qty = order.filled + event.qty
        order.remaining = event.qty
        return order

    def triggered(self, event: OrderTriggered) -> TrackedOrder | None:
        """A stop order became active."""
        order = self.orders.get(event.order_id)
        if order is None:
            return None
        order.status = "partially_filled" if order.filled else "new"
        return order

    def _forget(self, order: TrackedOrder) -> None:
        del self.orders[order.order_id]
        key = (order.account, order.cl_ord_id)
        if self.by_client_id.get(key) == order.order_id:
            del self.by_client_id[key]
