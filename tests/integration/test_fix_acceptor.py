"""The FIX acceptor over TCP: logon by signature, order entry, ExecutionReports, rejects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from engine.commands import CreditDeposit
from gateway.auth import address_of
from gateway.fix_app import FixAcceptor
from gateway.fix_client import FixClient, LogonRefused
from gateway.fix_codec import Field, FixMessage
from gateway.fix_server import FixServer
from gateway.fix_store import file_stores
from gateway.hub import Gateway
from gateway.serve import open_sequencer
from gateway.server import ExchangeServer

KEY = "0x" + "44" * 32
OTHER_KEY = "0x" + "55" * 32
FUTURE = "GPU.H100.F2701"


async def expect(client: FixClient, msg_type: str, **tags: str) -> FixMessage:
    """The next message of ``msg_type`` with the given ``t<tag>`` values (others are
    skipped)."""
    while True:
        message = await asyncio.wait_for(client.messages.get(), 10)
        if message.msg_type == msg_type and all(
                message.get(int(tag[1:])) == value for tag, value in tags.items()):
            return message


async def logged_on(port: int, key: str, sender: str = "MM1") -> FixClient:
    """A FIX client logged on as ``key``'s account."""
    client = FixClient("127.0.0.1", port, key, sender_comp_id=sender)
    await client.start(timeout_s=10)
    return client


@asynccontextmanager
async def exchange(tmp_path: Path) -> AsyncIterator[tuple[Gateway, int]]:
    sequencer = open_sequencer(tmp_path / "data")
    gateway = Gateway(sequencer)
    server = ExchangeServer(gateway, port=0)
    await server.start()
    for deposit_id, key in enumerate((KEY, OTHER_KEY), start=1):
        gateway.submit(CreditDeposit(deposit_id, address_of(key), 10**12))
    server.pump()
    fix = FixServer(FixAcceptor(gateway, file_stores(tmp_path / "fix")), server.commit, port=0)
    await fix.start()
    try:
        yield gateway, fix.port
    finally:
        await fix.stop()
        await server.stop()
        sequencer.journal.close()


def order(cl_ord_id: str, side: str = "1", price: str = "2.400", qty: str = "2"
          ) -> list[Field]:
    return [(11, cl_ord_id), (55, FUTURE), (54, side), (60, "20261130-00:00:00.000"),
            (38, qty), (40, "2"), (44, price), (59, "1")]


def test_order_entry_round_trip(tmp_path: Path) -> None:
    async def main() -> None:
        async with exchange(tmp_path) as (gateway, port):
            mm = await logged_on(port, KEY)
            mm.send("D", order("A1"))
            new = await expect(mm, "8", t150="0")
            assert (new.get(11), new.get(39), new.get(151), new.get(14)) == ("A1", "0", "2", "0")
            order_id = new.get(37)
            mm.send("G", [(41, "A1"), (11, "A2"), (55, FUTURE), (54, "1"),
                          (60, "20261130-00:00:00.000"), (38, "3"), (40, "2"),
                          (44, "2.405")])
            replaced = await expect(mm, "8", t150="5")
            assert (replaced.get(11), replaced.get(41), replaced.get(44), replaced.get(151)) \
                == ("A2", "A1", "2.405", "3")
            taker = await logged_on(port, OTHER_KEY, sender="TK1")
            taker.send("D", order("T1", side="2", price="2.405", qty="1"))
            fill = await expect(mm, "8", t150="F")
            assert (fill.get(37), fill.get(31), fill.get(32), fill.get(151), fill.get(14),
                    fill.get(39), fill.get(6)) == (order_id, "2.405", "1", "2", "1", "1",
                                                   "2.405")
            await expect(taker, "8", t150="F", t39="2")
            mm.send("F", [(41, "A2"), (11, "A3"), (55, FUTURE), (54, "1"),
                          (60, "20261130-00:00:00.000")])
            cancelled = await expect(mm, "8", t150="4")
            assert (cancelled.get(11), cancelled.get(41), cancelled.get(39)) == \
                ("A3", "A2", "4")
            mm.send("F", [(41, "A2"), (11, "A4"), (55, FUTURE), (54, "1"),
                          (60, "20261130-00:00:00.000")])
            reject = await expect(mm, "9")
            assert (reject.get(11), reject.get(434), reject.get(102)) == ("A4", "1", "1")
            for i in range(3):
                mm.send("D", order(f"B{i}", price=f"2.3{i}0"))
                await expect(mm, "8", t150="0", t11=f"B{i}")
            mm.send("q", [(11, "M1"), (530, "7"), (60, "20261130-00:00:00.000")])
            report = await expect(mm, "r")
            assert (report.get(530), report.get(531), report.get(533)) == ("7", "7", "3")
            assert not [o for o in gateway.exchange.orders.values()
                        if o.account == mm.account]

    asyncio.run(main())


def test_a_logon_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with exchange(tmp_path) as (_, port):
            # claims KEY's account, signs with its own key
            impostor = FixClient("127.0.0.1", port, OTHER_KEY, sender_comp_id="MM1",
                                 account=address_of(KEY))
            with pytest.raises(LogonRefused, match="signature is not by the account"):
                await impostor.start(timeout_s=10)
            assert not impostor.logged_on

    asyncio.run(main())
