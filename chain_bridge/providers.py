"""The providers view: registered nodes, the current epoch, uptime over the last 24 hours and
the attested deliveries in progress (``/api/providers``, shown on the market page).

The engine keeps only the epochs and attestations it still needs (`engine.uptime`: the last
few epochs and those of open delivery windows), so the 24-hour uptime comes from an
`UptimeHistory` the chain service feeds while the process runs: it copies each epoch the
engine opens and the nodes that attested it, and forgets epochs older than a day. It starts
empty with the process, so until a day has passed the uptime covers less (``since_ns``).

Every number in the report is an integer: times in ns since the Unix epoch, shares as
``delivered`` / ``required`` pairs or in parts per million (``*_ppm``), for display only::

    {"now_ns", "epoch": {"epoch", "beacon", "start_ns", "length_ns", "end_ns"} | null,
     "history": {"since_ns" | null, "window_ns", "epochs", "full"},
     "providers": [{"provider", "active_units", "nodes": [{"node", "underlying", "units",
         "status": "active" | "deregistered", "deregistered_at" | null, "epochs_attested",
         "epochs", "uptime_ppm" | null, "attested_current", "last_attested_epoch" | null}]}],
     "deliveries": [{"delivery_id", "symbol", "underlying", "seller", "qty",
         "quantity", "quantity_unit", "window_start", "window_end",
         "status": "pending" | "delivering" | "settling", "allocation": [{"node", "units"}],
         "unallocated", "epochs_opened", "epochs_expected" | null, "delivered", "required",
         "delivered_ppm" | null}], "deliveries_open",
     "settled": [{"delivery_id", "symbol", "seller", "qty", "window_start",
         "window_end", "settled_ns", "delivered", "required", "delivered_ppm",
         "seller_paid", "seller_fee", "buyer_refund", "buyer_compensation",
         "bond_released"}]}

Deliveries in progress are the latest `DELIVERIES_SHOWN` (``deliveries_open`` counts them
all). Settled deliveries (the last `SETTLED_KEPT`, newest first, amounts in micro-USDC) come
from the exchange's events as the gateway releases them (`SettledDeliveries`), so they are
exactly what the exchange paid. The report is public: it names the providers (their nodes are
on chain anyway) but not the buyers, as the public trades channel names no one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import Any

import msgspec

from engine.delivery import Delivery
from engine.events import DeliveryOpened, DeliverySettled, ExchangeEvent
from engine.exchange import Exchange
from engine.uptime import Node, Uptime

SETTLED_KEPT = 20
"""How many settled deliveries the providers view lists."""
DELIVERIES_SHOWN = 50
"""How many deliveries in progress it lists (the latest; ``deliveries_open`` counts all)."""
DAY_NS = 24 * 3600 * 1_000_000_000
"""How far back the uptime goes."""
PPM = 1_000_000


class EpochRecord(msgspec.Struct):
    """One epoch the engine opened, and the nodes that attested it."""

    epoch: int
    start_ts: int
    length_ns: int
    attested: set[str] = msgspec.field(default_factory=set)

    @property
    def end_ns(self) -> int:
        """When the epoch's attestation period ends (its deadline, grace aside)."""
        return self.start_ts + self.length_ns


class UptimeHistory:
    """Which nodes attested which epoch, for the epochs opened in the last 24 hours.

    `observe` is cheap when nothing changed (three comparisons) and otherwise costs a set
    difference over the attestations the engine still holds plus the new epochs and nodes:
    call it about once a second, often enough that no attestation is forgotten by the engine
    (at an `OpenEpoch`, for an epoch no longer among its last three) before it was seen.
    """

    def __init__(self, keep_ns: int = DAY_NS) -> None:
        self.keep_ns = keep_ns
        self.records: dict[int, EpochRecord] = {}  # by number, in increasing order
        self.first_start_ns: int | None = None
        """Start of the oldest epoch ever recorded (whether still kept or not)."""
        self.last_epoch: int | None = None
        """The newest epoch recorded."""
        self.first_epoch: dict[str, int | None] = {}
        """Per node, the first epoch it counts from: the newest epoch recorded before it was
        first seen (it may have attested that one); None for nodes seen at the first look."""
        self.last_attested: dict[str, int] = {}
        self._source: Uptime | None = None
        self._seen: set[tuple[str, int]] = set()  # the source's attestations already copied
        self._seen_epoch: int | None = None  # the source's last epoch at the last look

    def observe(self, uptime: Uptime) -> None:
        """Copy what is new in ``uptime``: nodes, epochs opened, attestations."""
        last = uptime.last_epoch()
        last_number = last.epoch if last is not None else None
        if uptime is self._source and last_number == self._seen_epoch and \
                len(uptime.attested) == len(self._seen) and \
                len(uptime.nodes) == len(self.first_epoch):
            return  # between two epochs the engine's attestations only grow
        first_look = self._source is None
        for address in uptime.nodes:
            if address not in self.first_epoch:
                self.first_epoch[address] = None if first_look else self.last_epoch
        new = []
        for number in reversed(uptime.epochs):
            if self.last_epoch is not None and number <= self.last_epoch:
                break
            new.append(uptime.epochs[number])
        for epoch in reversed(new):
            self.records[epoch.epoch] = EpochRecord(epoch.epoch, epoch.start_ts,
                                                    epoch.length_ns)
            self.last_epoch = epoch.epoch
            if self.first_start_ns is None:
                self.first_start_ns = epoch.start_ts
        for node, number in uptime.attested - self._seen:
            record = self.records.get(number)
            if record is not None:
                record.attested.add(node)
                if number > self.last_attested.get(node, -1):
                    self.last_attested[node] = number
        self._seen = set(uptime.attested)
        self._source = uptime
        self._seen_epoch = last_number
        if last is not None:
            self._trim(last.start_ts - self.keep_ns)

    def _trim(self, cutoff: int) -> None:
        """Forget the epochs that started before ``cutoff``."""
        while self.records:
            oldest = next(iter(self.records.values()))
            if oldest.start_ts >= cutoff:
                return
            del self.records[oldest.epoch]

    def window(self, now_ns: int) -> list[EpochRecord]:
        """The epochs that started in the 24 hours up to ``now_ns``, oldest first."""
        cutoff = now_ns - self.keep_ns
        return [r for r in self.records.values() if r.start_ts >= cutoff]


class SettledDeliveries:
    """The latest settlements of deliveries made from nodes, fed the exchange's events in
    sequence order (`on_event`); what each paid, from its `DeliverySettled` event."""

    def __init__(self, exchange: Exchange, kept: int = SETTLED_KEPT) -> None:
        self._exchange = exchange
        self._open: dict[int, DeliveryOpened] = {}  # deliveries from nodes not settled yet
        for d in exchange.deliveries.values():  # opened before this process started
            if d.allocation is not None:
                self._open[d.delivery_id] = DeliveryOpened(
                    d.delivery_id, d.symbol, d.trade_id, d.seller, d.buyer, d.qty,
                    d.window_start, d.window_end, d.premium, d.bond)
        self.recent: deque[dict[str, Any]] = deque(maxlen=kept)

    def on_event(self, event: ExchangeEvent, ts: int) -> None:
        """One released event, ``ts`` its command's time. A delivery is from nodes if the
        exchange allocated it to its seller's nodes, even to none (they all went dark)."""
        if isinstance(event, DeliveryOpened):
            held = self._exchange.deliveries.get(event.delivery_id)  # open: its window is ahead
            if held is not None and held.allocation is not None:
                self._open[event.delivery_id] = event
        elif isinstance(event, DeliverySettled):
            opened = self._open.pop(event.delivery_id, None)
            if opened is not None:
                self.recent.appendleft({
                    "delivery_id": event.delivery_id, "symbol": opened.symbol,
                    "seller": opened.seller, "qty": opened.qty,
                    "window_start": opened.window_start, "window_end": opened.window_end,
                    "settled_ns": ts, "delivered": event.delivered, "required": event.required,
                    "delivered_ppm": event.delivered * PPM // event.required,
                    "seller_paid": event.seller_paid, "seller_fee": event.seller_fee,
                    "buyer_refund": event.buyer_refund,
                    "buyer_compensation": event.buyer_compensation,
                    "bond_released": event.bond_released,
                })


def providers_report(exchange: Exchange, history: UptimeHistory, now_ns: int,
                     settled: SettledDeliveries | None = None) -> dict[str, Any]:
    """What ``/api/providers`` answers at ``now_ns`` (the history is brought up to date first).

    Per node, uptime is ``epochs_attested`` of ``epochs``: the epochs of the last 24 hours
    from the one it was first seen in (or the history's start), less those starting at or
    after its deregistration; an epoch whose deadline is still ahead counts only once the
    node attested it. Per delivery in progress (its seller delivers from nodes), delivered
    and required node-epochs follow `Uptime.settlement` over the window's epochs opened so
    far: 0 of 0 before the window starts (``pending``), then ``delivering``, and once the
    window has ended (``settling``, until the exchange settles it) what settlement will pay.
    """
    uptime = exchange.uptime
    history.observe(uptime)
    last = uptime.last_epoch()
    window = history.window(now_ns)
    from_nodes = [d for _, d in sorted(exchange.deliveries.items()) if d.allocation is not None]
    return {
        "now_ns": now_ns,
        "epoch": None if last is None else {
            "epoch": last.epoch, "beacon": last.beacon, "start_ns": last.start_ts,
            "length_ns": last.length_ns, "end_ns": last.start_ts + last.length_ns,
        },
        "history": {
            "since_ns": window[0].start_ts if window else None,
            "window_ns": history.keep_ns,
            "epochs": len(window),
            "full": history.first_start_ns is not None and
            history.first_start_ns <= now_ns - history.keep_ns,
        },
        "providers": _providers(uptime, history, window, now_ns),
        "deliveries": [_delivery(exchange, d, now_ns) for d in from_nodes[-DELIVERIES_SHOWN:]],
        "deliveries_open": len(from_nodes),
        "settled": list(settled.recent) if settled is not None else [],
    }


def _providers(uptime: Uptime, history: UptimeHistory, window: list[EpochRecord],
               now_ns: int) -> list[dict[str, Any]]:
    attested: dict[str, int] = {}
    earliest: dict[str, int] = {}
    # attested epochs beyond the ended ones a node counts: still open, or starting after a
    # deregistration the chain reported late (effective before attestations already made)
    beyond: dict[str, int] = {}
    for record in window:
        still_open = record.end_ns > now_ns
        for address in record.attested:
            attested[address] = attested.get(address, 0) + 1
            earliest.setdefault(address, record.epoch)
            found = uptime.nodes.get(address)
            until = found.deregistered_at if found is not None else None
            if still_open or (until is not None and record.start_ts >= until):
                beyond[address] = beyond.get(address, 0) + 1
    closed = [r for r in window if r.end_ns <= now_ns]
    closed_numbers = [r.epoch for r in closed]
    closed_starts = [r.start_ts for r in closed]
    last = uptime.last_epoch()
    by_provider: dict[str, list[dict[str, Any]]] = {}
    units: dict[str, int] = {}
    for address in sorted(uptime.nodes):
        node = uptime.nodes[address]
        first = history.first_epoch.get(address)
        if first is not None and address in earliest:
            first = min(first, earliest[address])
        low = bisect_left(closed_numbers, first) if first is not None else 0
        high = len(closed) if node.deregistered_at is None else \
            bisect_left(closed_starts, node.deregistered_at)
        epochs = max(0, high - low) + beyond.get(address, 0)
        count = attested.get(address, 0)
        active = _active(node, now_ns)
        current = last is not None and (address, last.epoch) in uptime.attested
        last_attested = history.last_attested.get(address)
        if current and last is not None:
            last_attested = last.epoch
        by_provider.setdefault(node.provider, []).append({
            "node": address,
            "underlying": node.underlying,
            "units": node.units,
            "status": "active" if active else "deregistered",
            "deregistered_at": node.deregistered_at,
            "epochs_attested": count,
            "epochs": epochs,
            "uptime_ppm": count * PPM // epochs if epochs else None,
            "attested_current": current,
            "last_attested_epoch": last_attested,
        })
        if active:
            units[node.provider] = units.get(node.provider, 0) + node.units
    return [{"provider": provider, "active_units": units.get(provider, 0),
             "nodes": by_provider[provider]} for provider in sorted(by_provider)]


def _active(node: Node, now_ns: int) -> bool:
    return node.deregistered_at is None or now_ns < node.deregistered_at


def _delivery(exchange: Exchange, delivery: Delivery, now_ns: int) -> dict[str, Any]:
    uptime = exchange.uptime
    opened = [e for e in uptime.epochs.values()
              if delivery.window_start <= e.start_ts < delivery.window_end]
    if now_ns < delivery.window_start:
        status, delivered, required = "pending", 0, 0
    else:
        status = "delivering" if now_ns < delivery.window_end else "settling"
        delivered, required = uptime.settlement(delivery) if opened or status == "settling" \
            else (0, 0)
    last = uptime.last_epoch()
    allocation = delivery.allocation or []
    market = exchange.markets.get(delivery.symbol)
    return {
        "delivery_id": delivery.delivery_id,
        "symbol": delivery.symbol,
        "underlying": delivery.underlying,
        "seller": delivery.seller,
        "qty": delivery.qty,
        "quantity": market.instrument.lots_to_qty(delivery.qty) if market else None,
        "quantity_unit": market.instrument.quantity_unit if market else None,
        "window_start": delivery.window_start,
        "window_end": delivery.window_end,
        "status": status,
        "allocation": [{"node": node, "units": units} for node, units in allocation],
        "unallocated": delivery.qty - sum(units for _, units in allocation),
        "epochs_opened": len(opened) if status != "pending" else 0,
        "epochs_expected": max(1, (delivery.window_end - delivery.window_start)
                               // last.length_ns) if last is not None else None,
        "delivered": delivered,
        "required": required,
        "delivered_ppm": delivered * PPM // required if required else None,
    }
