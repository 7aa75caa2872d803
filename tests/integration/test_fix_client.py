"""The FIX client and the quoting bot against the exchange's acceptor over TCP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from engine.instruments import Instrument, utc_today
from engine.messages import Side
from engine.registry import Registry
from gateway.auth import address_of
from gateway.client import delegate
from gateway.fix_client import FixClient, LogonRefused
from gateway.hub import Gateway
from gateway.market_maker import MarketMaker, QuoteParams, Quoter
from tests.integration.test_fix_acceptor import FUTURE, KEY, OTHER_KEY, exchange, expect

API_KEY = "0x" + "77" * 32


def future() -> Instrument:
    return Registry.load(listing_date=utc_today()).get(FUTURE)


def resting(gateway: Gateway, key: str) -> dict[Side, list[int]]:
    """The account's resting prices (ticks) by side, sorted."""
    account = address_of(key)
    prices: dict[Side, list[int]] = {Side.BUY: [], Side.SELL: []}
    for order in gateway.exchange.orders.values():
        if order.account == account:
            prices[order.side].append(order.limit)
    return {side: sorted(found) for side, found in prices.items()}


async def until(condition: object, timeout_s: float = 10.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


def test_request_helpers(tmp_path: Path) -> None:
    async def main() -> None:
        async with exchange(tmp_path) as (gateway, port):
            client = FixClient("127.0.0.1", port, KEY, sender_comp_id="MM1")
            await client.start(timeout_s=10)
            first = client.new_order(FUTURE, "buy", "2", "2.400")
            new = await expect(client, "8", t150="0", t11=first)
            assert (new.get(54), new.get(44), new.get(151)) == ("1", "2.400", "2")
            moved = client.replace(first, "2.405", "3")
            replaced = await expect(client, "8", t150="5", t11=moved)
            assert (replaced.get(41), replaced.get(44), replaced.get(151)) == \
                (first, "2.405", "3")
            gone = client.cancel(moved)
            cancelled = await expect(client, "8", t150="4", t11=gone)
            assert cancelled.get(41) == moved
            with pytest.raises(KeyError):
                client.cancel(moved)  # no longer live
            client.new_order(FUTURE, "sell", "1", "2.600", post_only=True)
            client.new_order(FUTURE, "buy", "1", "2.300", stp="cancel_oldest")
            mass = client.mass_cancel(FUTURE)
            report = await expect(client, "r", t11=mass)
            assert report.get(533) == "2"
            assert resting(gateway, KEY) == {Side.BUY: [], Side.SELL: []}
            await client.close()

    asyncio.run(main())


def test_a_delegated_api_key_logs_on_for_the_account(tmp_path: Path) -> None:
    async def main() -> None:
        async with exchange(tmp_path) as (gateway, port):
            grant = delegate(KEY, address_of(API_KEY), int(time.time()) + 3600)
            client = FixClient("127.0.0.1", port, API_KEY, sender_comp_id="MM1",
                               account=address_of(KEY), delegation=grant)
            await client.start(timeout_s=10)
            placed = client.new_order(FUTURE, "buy", "1", "2.400")
            await expect(client, "8", t150="0", t11=placed)
            assert resting(gateway, KEY)[Side.BUY] == [future().price_to_ticks("2.400")]
            await client.close()

            expired = delegate(KEY, address_of(API_KEY), int(time.time()) - 1)
            stale = FixClient("127.0.0.1", port, API_KEY, sender_comp_id="MM2",
                              account=address_of(KEY), delegation=expired)
            with pytest.raises(LogonRefused, match="expired"):
                await stale.start(timeout_s=10)

    asyncio.run(main())


def test_a_restarted_client_continues_its_numbers(tmp_path: Path) -> None:
    async def main() -> None:
        async with exchange(tmp_path) as (_, port):
            store = tmp_path / "mm-store"
            client = FixClient("127.0.0.1", port, KEY, sender_comp_id="MM1", store_dir=store)
            await client.start(timeout_s=10)
            placed = client.new_order(FUTURE, "buy", "1", "2.400")
            await expect(client, "8", t150="0", t11=placed)
            sent, received = client.store.next_sender_seq(), client.store.next_target_seq()
            await client.close()

            again = FixClient("127.0.0.1", port, KEY, sender_comp_id="MM1", store_dir=store)
            await again.start(timeout_s=10)
            assert again.store.next_sender_seq() > sent  # Logon and Logout came after
            assert again.store.next_target_seq() > received
            with pytest.raises(KeyError):  # a new client object knows no earlier orders
                again.cancel(placed)
            mass = again.mass_cancel()
            report = await expect(again, "r", t11=mass)
            assert report.get(533) == "1"
            await again.close()

    asyncio.run(main())


def test_the_quoting_bot_quotes_skews_on_a_fill_and_cancels_on_shutdown(
        tmp_path: Path) -> None:
    spec = future()
    reference = spec.reference_price_ticks

    async def main() -> None:
        async with exchange(tmp_path) as (gateway, port):
            client = FixClient("127.0.0.1", port, KEY, sender_comp_id="MM1",
                               store_dir=tmp_path / "mm")
            await client.start(timeout_s=10)
            params = QuoteParams(levels=2, size=1, spread_ticks=2, max_position=4,
                                 skew_ticks=4)
            maker = MarketMaker(client, spec, Quoter(params, spec.price_band(), reference))
            stop = asyncio.Event()
            running = asyncio.create_task(maker.run(stop))
            flat = {Side.BUY: [reference - 2, reference - 1],
                    Side.SELL: [reference + 1, reference + 2]}
            await until(lambda: resting(gateway, KEY) == flat)

            taker = FixClient("127.0.0.1", port, OTHER_KEY, sender_comp_id="TK1")
            await taker.start(timeout_s=10)
            taker.new_order(FUTURE, "sell", "1", spec.ticks_to_price(reference - 1), tif="ioc")
            await until(lambda: maker.quoter.position == 1)
            skewed = {Side.BUY: [reference - 3, reference - 2],  # long one: one tick lower
                      Side.SELL: [reference, reference + 1]}
            await until(lambda: resting(gateway, KEY) == skewed)

            stop.set()
            assert await asyncio.wait_for(running, 10) == 4
            assert resting(gateway, KEY) == {Side.BUY: [], Side.SELL: []}
            await client.close()
            await taker.close()

    asyncio.run(main())
