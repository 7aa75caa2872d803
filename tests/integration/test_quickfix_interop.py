"""Interoperability with a stock FIX engine: a QuickFIX initiator, validating with the FIX44.xml
it ships, logs on to CMX's acceptor with a signed Logon, enters, amends, cancels and
mass-cancels orders and trades; every ExecutionReport, OrderCancelReject and
OrderMassCancelReport CMX sends must reach QuickFIX's fromApp (pass its validation) and
QuickFIX must never reject anything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

from engine.commands import CreditDeposit, PlaceOrder, SetCapacity
from engine.messages import Side
from gateway.auth import address_of
from gateway.fix_app import FixAcceptor
from gateway.fix_server import FixServer
from gateway.fix_store import file_stores
from gateway.hub import Gateway
from gateway.serve import open_sequencer
from gateway.server import ExchangeServer
from tests.integration.quickfix_initiator import FixMessage, QuickFixInitiator, utc_timestamp

SYMBOL = "GPU.H100.SPOT"
MM = "MM1"
MM_KEY = "0x" + "3c" * 32
COUNTERPARTY_KEY = "0x" + "4d" * 32
BUY, SELL = "1", "2"  # Side 54
LIMIT = "2"  # OrdType 40
NEW, FILLED, CANCELED, REPLACED, REJECTED, TRADE = "0", "2", "4", "5", "8", "F"  # 150 / 39
CANCEL_ALL_ORDERS = "7"  # MassCancelRequestType 530 and MassCancelResponse 531


class Venue:
    """The exchange with its FIX acceptor, and QuickFIX logged on to it as ``MM``."""

    def __init__(self, gateway: Gateway, server: ExchangeServer,
                 quickfix: QuickFixInitiator) -> None:
        self.gateway = gateway
        self.server = server
        self.quickfix = quickfix

    def counterparty_sells(self, price: str, qty: int) -> None:
        """A resting sell by another account, entered straight into the engine."""
        instrument = self.gateway.exchange.markets[SYMBOL].instrument
        self.gateway.submit(PlaceOrder(address_of(COUNTERPARTY_KEY), SYMBOL, Side.SELL, qty,
                                       instrument.price_to_ticks(price)))
        self.server.pump()


@asynccontextmanager
async def venue(tmp_path: Path) -> AsyncIterator[Venue]:
    """Both accounts funded and able to sell H100 capacity; QuickFIX logged on. On the way
    out QuickFIX logs out, and must not have rejected anything."""
    sequencer = open_sequencer(tmp_path / "exchange")
    gateway = Gateway(sequencer)
    server = ExchangeServer(gateway, port=0)
    await server.start()
    for number, key in enumerate((MM_KEY, COUNTERPARTY_KEY), 1):
        gateway.submit(CreditDeposit(number, address_of(key), 10**12))
        gateway.submit(SetCapacity(address_of(key), "GPU.H100", 10**6))
    server.pump()
    acceptor = FixServer(FixAcceptor(gateway, file_stores(tmp_path / "fix")), server.commit,
                         port=0)
    await acceptor.start()
    quickfix = QuickFixInitiator(tmp_path / "quickfix", acceptor.port, {MM: MM_KEY})
    quickfix.start()
    try:
        await quickfix.logged_on(MM)
        yield Venue(gateway, server, quickfix)
    finally:
        await quickfix.stop()
        await acceptor.stop()
        await server.stop()
        sequencer.journal.close()
    assert quickfix.problems() == []


def run(tmp_path: Path, test: Callable[[Venue], Awaitable[None]]) -> None:
    async def main() -> None:
        async with venue(tmp_path) as trading:
            await test(trading)

    asyncio.run(asyncio.wait_for(main(), 120))


def new_order(cl_ord_id: str, side: str, price: str, qty: str) -> list[tuple[int, str]]:
    """NewOrderSingle D body: a GTC limit order."""
    return [(11, cl_ord_id), (55, SYMBOL), (54, side), (60, utc_timestamp()), (38, qty),
            (40, LIMIT), (44, price), (59, "1")]


def decimals(message: FixMessage, *tags: int) -> tuple[Decimal, ...]:
    """The values of price and quantity ``tags`` as numbers (FIX allows "2.4" for "2.400")."""
    values = []
    for tag in tags:
        value = message.get(tag)
        assert value is not None, f"no tag {tag} in {message}"
        values.append(Decimal(value))
    return tuple(values)


def numbers(*texts: str) -> tuple[Decimal, ...]:
    """Expected prices and quantities."""
    return tuple(Decimal(text) for text in texts)


def test_signed_logon_order_entry_and_mass_cancel_pass_quickfix_validation(
        tmp_path: Path) -> None:
    async def test(venue: Venue) -> None:
        quickfix = venue.quickfix
        logon = next(t.message for t in quickfix.traffic()
                     if t.outbound and t.message.msg_type == "A")
        assert logon.get(553) == address_of(MM_KEY)

        quickfix.send(MM, "D", new_order("o1", BUY, "2.400", "1"))
        new = await quickfix.received(MM, "8", {11: "o1", 150: NEW})
        assert (new.get(39), new.get(54), new.get(55)) == (NEW, BUY, SYMBOL)
        assert decimals(new, 44, 151, 14) == numbers("2.4", "1", "0")
        order_id = new.get(37) or ""

        quickfix.send(MM, "G", [(41, "o1"), (11, "o2"), (37, order_id), (55, SYMBOL),
                                (54, BUY), (60, utc_timestamp()), (38, "2"), (40, LIMIT),
                                (44, "2.390")])
        replaced = await quickfix.received(MM, "8", {11: "o2", 150: REPLACED})
        assert (replaced.get(41), replaced.get(37), replaced.get(39)) == ("o1", order_id, NEW)
        assert decimals(replaced, 44, 151) == numbers("2.39", "2")

        quickfix.send(MM, "F", [(41, "o2"), (11, "o3"), (55, SYMBOL), (54, BUY),
                                (60, utc_timestamp()), (38, "2")])
        canceled = await quickfix.received(MM, "8", {11: "o3", 150: CANCELED})
        assert (canceled.get(41), canceled.get(37), canceled.get(39)) == ("o2", order_id,
                                                                            CANCELED)
        assert decimals(canceled, 151) == numbers("0")

        quickfix.send(MM, "F", [(41, "o2"), (11, "o3b"), (55, SYMBOL), (54, BUY),
                                (60, utc_timestamp()), (38, "2")])
        too_late = await quickfix.received(MM, "9", {11: "o3b"})
        assert (too_late.get(41), too_late.get(434)) == ("o2", "1")

        quickfix.send(MM, "D", new_order("o4", BUY, "2.300", "1"))
        quickfix.send(MM, "D", new_order("o5", SELL, "2.700", "1"))
        resting = [(await quickfix.received(MM, "8", {11: cl, 150: NEW})).get(37) or ""
                   for cl in ("o4", "o5")]
        quickfix.send(MM, "q", [(11, "o6"), (530, CANCEL_ALL_ORDERS), (60, utc_timestamp())])
        report = await quickfix.received(MM, "r", {11: "o6"})
        assert (report.get(530), report.get(531)) == (CANCEL_ALL_ORDERS, CANCEL_ALL_ORDERS)
        for resting_id in resting:
            await quickfix.received(MM, "8", {37: resting_id, 150: CANCELED})

    run(tmp_path, test)


def test_trade_reports_pass_quickfix_validation(tmp_path: Path) -> None:
    async def test(venue: Venue) -> None:
        quickfix = venue.quickfix
        # resting, then filled by the counterparty's sell: the passive side's Trade report
        quickfix.send(MM, "D", new_order("t1", BUY, "2.400", "1"))
        await quickfix.received(MM, "8", {11: "t1", 150: NEW})
        venue.counterparty_sells("2.400", 1)
        passive = await quickfix.received(MM, "8", {11: "t1", 150: TRADE})
        assert passive.get(39) == FILLED
        assert decimals(passive, 31, 32, 151, 14, 6) == numbers("2.4", "1", "0", "1", "2.4")

        # crossing the counterparty's resting sell: the aggressor's Trade report
        venue.counterparty_sells("2.410", 2)
        quickfix.send(MM, "D", new_order("t2", BUY, "2.420", "1"))
        aggressor = await quickfix.received(MM, "8", {11: "t2", 150: TRADE})
        assert aggressor.get(39) == FILLED
        assert decimals(aggressor, 31, 32, 151, 14) == numbers("2.41", "1", "0", "1")

        exec_ids = [t.message.get(17) for t in quickfix.traffic()
                    if not t.outbound and t.message.msg_type == "8"]
        assert len(set(exec_ids)) == len(exec_ids), "ExecID 17 must be unique"

    run(tmp_path, test)


def test_refused_order_report_passes_quickfix_validation(tmp_path: Path) -> None:
    async def test(venue: Venue) -> None:
        quickfix = venue.quickfix
        quickfix.send(MM, "D", new_order("x1", BUY, "9.000", "1"))  # far outside the band
        refused = await quickfix.received(MM, "8", {11: "x1", 150: REJECTED})
        assert (refused.get(39), refused.get(54)) == (REJECTED, BUY)

    run(tmp_path, test)
