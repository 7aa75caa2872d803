"""Builders shared by the exchange tests: a registry, accounts, times and a `Desk`.

A `Desk` plays the sequencer in front of one `Exchange`: it stamps each command with the next
sequence number and a non-decreasing timestamp, keeps the stamped journal, and checks after
every command that the ledger still holds exactly what came in minus what went out.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any, TypeVar

import msgspec

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
    Timer,
)
from engine.cython_book import CythonBook
from engine.events import ExchangeEvent, OrderAccepted
from engine.exchange import Exchange
from engine.instruments import Instrument
from engine.ledger import Balances
from engine.market import BookFactory
from engine.messages import Side
from engine.positions import Position
from engine.registry import Registry

LISTING_DATE = date(2026, 11, 30)
REGISTRY = Registry.load(listing_date=LISTING_DATE)
NS = 1_000_000_000
HOUR = 3600 * NS
DAY = 24 * HOUR

BUY, SELL = Side.BUY, Side.SELL

GPU_SPOT = "GPU.H100.SPOT"
GPU_FUT = "GPU.H100.F2612"  # December 2026: last trade 2026-12-31 00:00 UTC
GPU_FUT_NEXT = "GPU.H100.F2701"
RACK_SPOT = "RACK.KW.SPOT"
RACK_FUT = "RACK.KW.F2612"


def account(n: int) -> str:
    """A valid account address: ``0x`` and ``n`` in 40 lower-case hex digits."""
    return f"0x{n:040x}"


ALICE = account(0xA11CE)
BOB = account(0xB0B)
CAROL = account(0xCA201)
DAVE = account(0xDA7E)


def utc_ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
           second: int = 0) -> int:
    """Nanoseconds since the epoch of a UTC wall time."""
    return calendar.timegm((year, month, day, hour, minute, second)) * NS


DEC_1 = utc_ns(2026, 12, 1)
START = DEC_1 + 10 * 60 * NS  # 00:10 UTC on 1 December 2026: spot windows start at 01:00


def instrument(symbol: str) -> Instrument:
    """The listed instrument ``symbol``."""
    return REGISTRY[symbol]


def new_exchange(book_factory: BookFactory = CythonBook,
                 instruments: Iterable[Instrument] = REGISTRY) -> Exchange:
    """An exchange listing ``instruments`` (default: the whole registry)."""
    return Exchange(instruments, book_factory)


E = TypeVar("E")


def of_type(events: Sequence[ExchangeEvent], kind: type[E]) -> list[E]:
    """The events of one kind, in order."""
    return [event for event in events if isinstance(event, kind)]


def one(events: Sequence[ExchangeEvent], kind: type[E]) -> E:
    """The single event of ``kind``; fails if there is none or more than one."""
    found = of_type(events, kind)
    assert len(found) == 1, f"expected one {kind.__name__}, got {found} in {events}"
    return found[0]


class Desk:
    """A sequencer in front of an exchange, checking conservation after every command."""

    def __init__(self, exchange: Exchange | None = None, ts: int = START,
                 book_factory: BookFactory = CythonBook) -> None:
        self.ex = exchange if exchange is not None else new_exchange(book_factory)
        self.seq = self.ex.last_seq
        self.ts = ts
        self.journal: list[Sequenced] = []
        self._next_deposit = 1
        self._next_withdrawal = 1

    def apply(self, command: ExchangeCommand, ts: int | None = None) -> list[ExchangeEvent]:
        """Stamp ``command`` (at ``ts``, default the current time) and apply it."""
        if ts is not None:
            assert ts >= self.ts, "time runs forward"
            self.ts = ts
        self.seq += 1
        stamped = Sequenced(self.seq, self.ts, command)
        self.journal.append(stamped)
        events = self.ex.apply(stamped)
        ledger = self.ex.ledger
        assert ledger.conserved(), (stamped, ledger.total(), ledger.deposited, ledger.withdrawn)
        return events

    def at(self, ts: int) -> None:
        """Move the clock to ``ts`` without a command."""
        assert ts >= self.ts
        self.ts = ts

    # --- commands -------------------------------------------------------------------------

    def deposit(self, who: str, amount: int) -> list[ExchangeEvent]:
        """Credit ``amount`` with a fresh deposit id."""
        deposit_id = self._next_deposit
        self._next_deposit += 1
        return self.apply(CreditDeposit(deposit_id, who, amount))

    def withdraw(self, who: str, amount: int) -> list[ExchangeEvent]:
        """Request a withdrawal of ``amount`` with a fresh withdrawal id."""
        withdrawal_id = self._next_withdrawal
        self._next_withdrawal += 1
        return self.apply(RequestWithdrawal(withdrawal_id, who, amount))

    def place(self, who: str, symbol: str, side: Side, qty: int, price: int = 0,
              **options: Any) -> list[ExchangeEvent]:
        """Place an order; ``options`` are the other `PlaceOrder` fields."""
        return self.apply(PlaceOrder(who, symbol, side, qty, price, **options))

    def rest(self, who: str, symbol: str, side: Side, qty: int, price: int,
             **options: Any) -> int:
        """Place an order that must be accepted; return its order id."""
        events = self.place(who, symbol, side, qty, price, **options)
        return one(events, OrderAccepted).order_id

    def cancel(self, who: str, symbol: str, order_id: int) -> list[ExchangeEvent]:
        """Cancel one order."""
        return self.apply(CancelOrder(who, symbol, order_id))

    def amend(self, who: str, symbol: str, order_id: int, price: int,
              qty: int) -> list[ExchangeEvent]:
        """Amend one order."""
        return self.apply(AmendOrder(who, symbol, order_id, price, qty))

    def cancel_all(self, who: str, symbol: str | None = None,
                   side: Side | None = None) -> list[ExchangeEvent]:
        """Cancel an account's orders."""
        return self.apply(CancelAll(who, symbol, side))

    def capacity(self, who: str, underlying: str, units: int) -> list[ExchangeEvent]:
        """Set a provider's capacity."""
        return self.apply(SetCapacity(who, underlying, units))

    def fix(self, underlying: str, day: int, price: int) -> list[ExchangeEvent]:
        """Record an index fix."""
        return self.apply(IndexFix(underlying, day, price))

    def cut(self, ts: int | None = None) -> list[ExchangeEvent]:
        """Run a clearing cut."""
        return self.apply(ClearingCut(), ts)

    def timer(self, ts: int | None = None) -> list[ExchangeEvent]:
        """Let time pass to ``ts``."""
        return self.apply(Timer(), ts)

    # --- views ----------------------------------------------------------------------------

    def balances(self, who: str) -> Balances:
        """A copy of the account's balances (zeros for an account never seen)."""
        found = self.ex.ledger.accounts.get(who, Balances())
        return msgspec.structs.replace(found)

    def position(self, who: str, symbol: str) -> Position:
        """A copy of the account's position in a future (flat if none)."""
        found = self.ex.markets[symbol].positions.get(who, Position())
        return msgspec.structs.replace(found)
