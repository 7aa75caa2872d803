"""`cmx mm`: a quoting bot on the FIX client, with its quoting logic sans-I/O.

`Quoter` keeps ``levels`` bids and asks of ``size`` lots around a reference price: the best
bid and ask are ``spread_ticks`` apart, further levels ``step_ticks`` apart. Inventory skew
shifts every quote against the position the fills built (long: lower, to sell more and buy
less), by up to ``skew_ticks`` at ``max_position``; the bids never add up to a position beyond
``max_position`` (the asks likewise). Quotes stay on the tick grid (prices are ticks) and
inside the exchange's price band; a level outside it is not quoted.

The quoter never crosses itself: an order is sent at a price only if it is below (a bid) or
above (an ask) every price the other side's orders have or may have once their in-flight
replaces land, so when the reference moves the far side moves first. A slot (side, level)
has at most one request in flight; it is replaced (G) when its price or size should change,
and cancelled when the level should go. `Quoter.shutdown` returns a mass cancel (q).

The I/O side (`run`) feeds it ExecutionReports and OrderCancelRejects from a `FixClient`, a
timer, and the reference, and carries out the `Place`, `Replace`, `Cancel` and `MassCancel`
actions it returns. ``cmx mm`` quotes around ``--reference`` or the instrument's reference
price, and on SIGINT/SIGTERM cancels everything and logs out.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.instruments import Instrument, utc_today
from engine.keys import read_key
from engine.registry import Registry
from gateway.fix_client import FixClient, LogonRefused
from gateway.fix_codec import FixMessage

log = logging.getLogger("cmx.mm")

BUY, SELL = "buy", "sell"
_FIX_SIDES = {"1": BUY, "2": SELL}
_TERMINAL = frozenset({"2", "4", "8", "C"})
REQUOTE_S = 1.0
SHUTDOWN_S = 10.0


@dataclass(frozen=True)
class Place:
    """Send a new limit order (NewOrderSingle)."""

    cl_ord_id: str
    side: str
    price: int
    qty: int


@dataclass(frozen=True)
class Replace:
    """Move the order now named ``orig_cl_ord_id`` to ``price`` with total ``qty``."""

    cl_ord_id: str
    orig_cl_ord_id: str
    side: str
    price: int
    qty: int


@dataclass(frozen=True)
class Cancel:
    """Cancel the order now named ``orig_cl_ord_id``."""

    cl_ord_id: str
    orig_cl_ord_id: str
    side: str


@dataclass(frozen=True)
class MassCancel:
    """Cancel every order of the quoted symbol."""


QuoteAction = Place | Replace | Cancel | MassCancel


@dataclass(frozen=True)
class Execution:
    """What the quoter needs of an ExecutionReport (prices in ticks, sizes in lots)."""

    cl_ord_id: str
    orig_cl_ord_id: str
    exec_type: str
    status: str
    side: str
    price: int | None = None
    last_qty: int = 0
    leaves: int = 0
    cum_qty: int = 0


@dataclass(frozen=True)
class QuoteParams:
    """How to quote (ticks and lots)."""

    levels: int = 3
    size: int = 1
    spread_ticks: int = 4
    step_ticks: int = 1
    max_position: int = 10
    skew_ticks: int = 4

    def __post_init__(self) -> None:
        if min(self.levels, self.size, self.spread_ticks, self.step_ticks,
               self.max_position) < 1 or self.skew_ticks < 0:
            raise ValueError("levels, size, spread, step and max position must be at least 1 "
                             "and the skew not negative")


@dataclass
class _Slot:
    """One quote: the order at (side, level) and its request in flight."""

    side: str
    cl_ord_id: str = ""
    price: int = 0
    leaves: int = 0
    cum_qty: int = 0
    live: bool = False
    pending: str = ""
    """ClOrdID of the request in flight (place, replace or cancel), or empty."""
    pending_price: int | None = None
    pending_leaves: int = 0
    refused: bool = False
    """A request was refused: no new one until the next timer tick (no tight loop)."""
    names: set[str] = field(default_factory=set)
    """Every ClOrdID the slot's order or its requests went by."""


class Quoter:
    """Sans-I/O quoting state: fed executions, rejects, the reference and time; returns the
    requests to send."""

    def __init__(self, params: QuoteParams, band: tuple[int, int], reference: int, *,
                 id_prefix: str = "Q") -> None:
        self.params = params
        self.band = band
        self.reference = reference
        self.position = 0
        self.stopped = False
        self._slots = {(side, level): _Slot(side) for side in (BUY, SELL)
                       for level in range(params.levels)}
        self._by_name: dict[str, _Slot] = {}
        self._ids = (f"{id_prefix}{n}" for n in itertools.count(1))

    # --- inputs ------------------------------------------------------------------------------

    def on_reference(self, reference: int) -> list[QuoteAction]:
        """The reference price moved."""
        self.reference = reference
        return self.quote()

    def on_execution(self, report: Execution) -> list[QuoteAction]:
        """An ExecutionReport of one of the quoter's orders."""
        slot = self._by_name.get(report.cl_ord_id) or self._by_name.get(report.orig_cl_ord_id)
        if slot is None:
            return []
        if report.exec_type == "F" and report.last_qty:
            self.position += report.last_qty if report.side == BUY else -report.last_qty
        if report.cl_ord_id == slot.pending:
            slot.pending, slot.pending_price, slot.pending_leaves = "", None, 0
        if report.status in _TERMINAL:
            self._clear(slot)
            slot.refused = report.exec_type == "8"
        else:
            slot.cl_ord_id, slot.live = report.cl_ord_id, True
            slot.leaves, slot.cum_qty = report.leaves, report.cum_qty
            if report.price is not None:
                slot.price = report.price
        return self.quote()

    def on_cancel_reject(self, cl_ord_id: str, order_gone: bool) -> list[QuoteAction]:
        """An OrderCancelReject of a replace or cancel; ``order_gone`` when the exchange
        knows no such live order (it was filled or cancelled meanwhile)."""
        slot = self._by_name.get(cl_ord_id)
        if slot is None:
            return []
        if slot.pending == cl_ord_id:
            slot.pending, slot.pending_price, slot.pending_leaves = "", None, 0
        if order_gone:
            self._clear(slot)
        slot.refused = True
        return self.quote()

    def on_timer(self) -> list[QuoteAction]:
        """Periodic refresh: slots whose request was refused may try again."""
        for slot in self._slots.values():
            slot.refused = False
        return self.quote()

    def shutdown(self) -> list[QuoteAction]:
        """Stop quoting: cancel everything."""
        self.stopped = True
        return [MassCancel()]

    # --- quoting -----------------------------------------------------------------------------

    def skew(self) -> int:
        """Ticks every quote moves for the position (negative when long)."""
        params = self.params
        magnitude, rest = divmod(abs(self.position) * params.skew_ticks, params.max_position)
        magnitude += 2 * rest >= params.max_position
        return -magnitude if self.position > 0 else magnitude

    def desired(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(side, level) -> (price ticks, lots) of the quotes wanted now."""
        params = self.params
        low, high = self.band
        bid = self.reference + self.skew() - params.spread_ticks // 2
        ask = bid + params.spread_ticks
        room = {BUY: params.max_position - self.position,
                SELL: params.max_position + self.position}
        wanted: dict[tuple[str, int], tuple[int, int]] = {}
        for side, best, direction in ((BUY, bid, -1), (SELL, ask, 1)):
            for level in range(params.levels):
                qty = min(params.size, room[side])
                price = best + direction * level * params.step_ticks
                if qty <= 0:
                    break
                if low <= price <= high:
                    wanted[(side, level)] = (price, qty)
                    room[side] -= qty
        return wanted

    def quote(self) -> list[QuoteAction]:
        """The requests that bring the book towards `desired`, never crossing the
        quoter's own orders."""
        if self.stopped:
            return []
        wanted = self.desired()
        actions: list[QuoteAction] = []
        for key, slot in self._slots.items():
            if slot.pending or slot.refused:
                continue
            target = wanted.get(key)
            if target is None:
                if slot.live:
                    actions.append(self._cancel(slot))
                continue
            price, qty = target
            if slot.live and price == slot.price and qty == slot.leaves:
                continue
            if not self._clear_of_other_side(slot.side, price) or not self._within_limit(
                    slot, qty):
                continue
            actions.append(self._replace(slot, price, qty) if slot.live
                           else self._place(slot, price, qty))
        return actions

    def prices(self, side: str) -> list[int]:
        """Every price the side's orders have or may get once requests in flight land."""
        found: list[int] = []
        for slot in self._slots.values():
            if slot.side == side:
                if slot.live:
                    found.append(slot.price)
                if slot.pending_price is not None:
                    found.append(slot.pending_price)
        return found

    def exposure(self, side: str) -> int:
        """Lots the side's orders could still trade, counting requests in flight at the
        larger of the order's size before and after them."""
        return sum(max(slot.leaves if slot.live else 0, slot.pending_leaves)
                   for slot in self._slots.values() if slot.side == side)

    def _within_limit(self, slot: _Slot, leaves: int) -> bool:
        """Whether giving ``slot`` ``leaves`` keeps the position within the maximum even if
        every order of its side trades."""
        current = slot.leaves if slot.live else 0
        if leaves <= current:
            return True
        room = self.params.max_position + (
            -self.position if slot.side == BUY else self.position)
        return self.exposure(slot.side) - current + leaves <= room

    def _clear_of_other_side(self, side: str, price: int) -> bool:
        if side == BUY:
            return all(price < other for other in self.prices(SELL))
        return all(price > other for other in self.prices(BUY))

    def _name(self, slot: _Slot) -> str:
        name = next(self._ids)
        slot.names.add(name)
        self._by_name[name] = slot
        return name

    def _place(self, slot: _Slot, price: int, qty: int) -> Place:
        name = self._name(slot)
        slot.cl_ord_id, slot.pending, slot.pending_price = name, name, price
        slot.pending_leaves = qty
        return Place(name, slot.side, price, qty)

    def _replace(self, slot: _Slot, price: int, qty: int) -> Replace:
        name = self._name(slot)
        slot.pending, slot.pending_price, slot.pending_leaves = name, price, qty
        return Replace(name, slot.cl_ord_id, slot.side, price, slot.cum_qty + qty)

    def _cancel(self, slot: _Slot) -> Cancel:
        name = self._name(slot)
        slot.pending = name
        return Cancel(name, slot.cl_ord_id, slot.side)

    def _clear(self, slot: _Slot) -> None:
        for name in slot.names:
            self._by_name.pop(name, None)
        fresh = _Slot(slot.side)
        slot.__dict__.update(fresh.__dict__)


# --- I/O ---------------------------------------------------------------------------------------


def execution_of(message: FixMessage, spec: Instrument) -> Execution:
    """An ExecutionReport's fields in the quoter's units."""
    price = message.get(44)
    return Execution(
        cl_ord_id=message.get(11) or "", orig_cl_ord_id=message.get(41) or "",
        exec_type=message.get(150) or "", status=message.get(39) or "",
        side=_FIX_SIDES.get(message.get(54) or "", ""),
        price=spec.price_to_ticks(price) if price else None,
        last_qty=_lots(spec, message.get(32)), leaves=_lots(spec, message.get(151)),
        cum_qty=_lots(spec, message.get(14)))


def _lots(spec: Instrument, text: str | None) -> int:
    """Lots of a quantity field; absent or zero is 0."""
    return spec.qty_to_lots(text) if text and Decimal(text) else 0


class MarketMaker:
    """Carries a `Quoter`'s actions out on a `FixClient` and feeds it what comes back."""

    def __init__(self, client: FixClient, spec: Instrument, quoter: Quoter) -> None:
        self.client = client
        self.spec = spec
        self.quoter = quoter
        self._mass_cancels: dict[str, asyncio.Future[int]] = {}
        self.last_mass_cancel: asyncio.Future[int] | None = None
        """How many orders the last mass cancel cancelled, once answered."""
        client.on_message = self.on_message

    def on_message(self, message: FixMessage) -> None:
        """An application message from the exchange."""
        kind = message.msg_type
        if kind == "8" and message.get(55) in (None, self.spec.symbol):
            self.carry(self.quoter.on_execution(execution_of(message, self.spec)))
        elif kind == "9":
            self.carry(self.quoter.on_cancel_reject(message.get(11) or "",
                                                    message.get(102) == "1"))
        elif kind == "r":
            waiter = self._mass_cancels.pop(message.get(11) or "", None)
            if waiter is not None and not waiter.done():
                waiter.set_result(int(message.get(533) or 0))
        elif kind in ("3", "j"):
            log.warning("exchange rejected a message: %s", message.get(58))

    def carry(self, actions: list[QuoteAction]) -> None:
        """Send the quoter's requests."""
        client, spec = self.client, self.spec
        for action in actions:
            if isinstance(action, Place):
                client.new_order(spec.symbol, action.side, spec.lots_to_qty(action.qty),
                                 spec.ticks_to_price(action.price), post_only=True,
                                 cl_ord_id=action.cl_ord_id)
            elif isinstance(action, Replace):
                client.replace(action.orig_cl_ord_id, spec.ticks_to_price(action.price),
                               spec.lots_to_qty(action.qty), cl_ord_id=action.cl_ord_id)
            elif isinstance(action, Cancel):
                client.cancel(action.orig_cl_ord_id, cl_ord_id=action.cl_ord_id)
            else:
                self.last_mass_cancel = self._mass_cancel()

    def _mass_cancel(self) -> asyncio.Future[int]:
        """Cancel every order of the symbol; the future gets how many were cancelled."""
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._mass_cancels[self.client.mass_cancel(self.spec.symbol)] = waiter
        return waiter

    async def run(self, stop: asyncio.Event) -> int:
        """Cancel what an earlier run may have left, quote until ``stop``, then cancel
        everything. Returns how many orders the final mass cancel cancelled; raises
        TimeoutError if a mass cancel goes unanswered."""
        await asyncio.wait_for(self._mass_cancel(), SHUTDOWN_S)
        self.carry(self.quoter.quote())
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), REQUOTE_S)
            except TimeoutError:
                self.carry(self.quoter.on_timer())
        self.carry(self.quoter.shutdown())
        assert self.last_mass_cancel is not None, "shutdown ends in a mass cancel"
        return await asyncio.wait_for(self.last_mass_cancel, SHUTDOWN_S)


def register(commands: Any) -> None:
    """Add ``mm`` to the `cmx` subparsers."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "mm",
        help="quoting bot: two-sided quotes over FIX with inventory skew",
        description="Keeps LEVELS bids and asks of SIZE around the reference price (the "
        "instrument's, or --reference) over a FIX session, skewed against its position, "
        "refreshed with replaces; on Ctrl-C or SIGTERM cancels everything and logs out.",
    )
    parser.add_argument("--fix", required=True, metavar="HOST:PORT",
                        help="the exchange's FIX acceptor")
    parser.add_argument("--key", required=True, metavar="KEY_OR_FILE",
                        help="account private key (0x hex), or a file holding it")
    parser.add_argument("--symbol", required=True)
    parser.add_argument("--sender-comp-id", default="MM1", help="SenderCompID (default MM1)")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--size", default="1", help="quantity per level (default 1)")
    parser.add_argument("--spread-ticks", type=int, default=4,
                        help="ticks between the best bid and the best ask (default 4)")
    parser.add_argument("--step-ticks", type=int, default=1,
                        help="ticks between levels (default 1)")
    parser.add_argument("--reference", help="quote around this price instead of the "
                        "instrument's reference")
    parser.add_argument("--max-position", default="10",
                        help="largest long or short position to quote into (default 10)")
    parser.add_argument("--skew-ticks", type=int, default=None,
                        help="quote shift at the largest position (default: the spread)")
    parser.add_argument("--store-dir", type=Path, default=Path("cmx-mm"),
                        help="FIX session store (default ./cmx-mm)")
    parser.add_argument("--log-level", default="INFO")
    parser.set_defaults(handler=_mm)


def _mm(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, _, port = args.fix.rpartition(":")
    try:
        spec = Registry.load(listing_date=utc_today()).get(args.symbol)
        reference = spec.price_to_ticks(args.reference) if args.reference \
            else spec.reference_price_ticks
        params = QuoteParams(levels=args.levels, size=spec.qty_to_lots(args.size),
                             spread_ticks=args.spread_ticks, step_ticks=args.step_ticks,
                             max_position=spec.qty_to_lots(args.max_position),
                             skew_ticks=args.spread_ticks if args.skew_ticks is None
                             else args.skew_ticks)
    except (KeyError, ValueError) as exc:
        print(f"cmx mm: {exc}", file=sys.stderr)
        return 2
    quoter = Quoter(params, spec.price_band(), reference, id_prefix=f"{time.time_ns():x}-")

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        client = FixClient(host or "127.0.0.1", int(port), read_key(args.key),
                           sender_comp_id=args.sender_comp_id, store_dir=args.store_dir)
        try:
            await client.start()
        except (LogonRefused, TimeoutError) as exc:
            print(f"cmx mm: {exc}", file=sys.stderr)
            return 1
        log.info("logged on as %s; quoting %s around %s", client.account, spec.symbol,
                 spec.ticks_to_price(reference))
        maker = MarketMaker(client, spec, quoter)
        try:
            cancelled = await maker.run(stop)
        except TimeoutError:
            print("cmx mm: no answer to the mass cancel; orders may still rest",
                  file=sys.stderr)
            return 1
        finally:
            await client.close()
        log.info("cancelled %d orders; position %d lots", cancelled, quoter.position)
        return 0

    return asyncio.run(main())
