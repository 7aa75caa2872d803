"""The trader client against a real in-process server: login, order entry, idempotency, and
local books that verify every checksum and equal the engine's book, resyncing after a gap."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from engine.commands import CreditDeposit, SetCapacity
from engine.messages import Side
from gateway.api import Level
from gateway.auth import address_of
from gateway.client import RequestRefused, TraderClient, delegate
from gateway.hub import Gateway
from gateway.serve import open_sequencer
from gateway.server import ExchangeServer

SYMBOL = "GPU.H100.SPOT"
KEYS = ["0x" + f"{i:02x}" * 32 for i in range(1, 5)]
API_KEY = "0x" + "a5" * 32


class Exchange:
    """A funded in-process exchange for the tests."""

    def __init__(self, gateway: Gateway, server: ExchangeServer) -> None:
        self.gateway = gateway
        self.server = server
        self.url = f"ws://127.0.0.1:{server.port}/"

    def depth(self, side: Side, levels: int = 10) -> list[Level]:
        """The engine's book (not the gateway's copy) as API levels, best first."""
        market = self.gateway.exchange.markets[SYMBOL]
        spec = market.instrument
        return [(spec.ticks_to_price(p), spec.lots_to_qty(q))
                for p, q in market.book.depth(side, levels)]

    async def client(self, key: str | None = None, **options: object) -> TraderClient:
        """A connected client, logged in with ``key`` if given."""
        client = TraderClient(**options)  # type: ignore[arg-type]
        await client.connect(self.url)
        if key is not None:
            await client.login(key)
        return client


@asynccontextmanager
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    """A server with the test accounts funded and able to sell H100 capacity."""
    sequencer = open_sequencer(tmp_path)
    gateway = Gateway(sequencer)
    server = ExchangeServer(gateway, port=0)
    await server.start()
    try:
        for number, key in enumerate(KEYS, 1):
            gateway.submit(CreditDeposit(number, address_of(key), 10**12))
            gateway.submit(SetCapacity(address_of(key), "GPU.H100", 10**6))
        server.pump()
        yield Exchange(gateway, server)
    finally:
        await server.stop()
        sequencer.journal.close()


def run(tmp_path: Path, test: Callable[[Exchange], Awaitable[None]]) -> None:
    async def main() -> None:
        async with exchange(tmp_path) as ex:
            await asyncio.wait_for(test(ex), 60)

    asyncio.run(main())


def test_login_with_the_account_key_and_with_a_delegated_api_key(tmp_path: Path) -> None:
    async def test(ex: Exchange) -> None:
        own = await ex.client()
        logged = await own.login(KEYS[0])
        assert logged.account == logged.key == address_of(KEYS[0])

        account = address_of(KEYS[1])
        grant = delegate(KEYS[1], address_of(API_KEY), int(time.time()) + 3600)
        bot = await ex.client()
        logged = await bot.login(API_KEY, account=account, delegation=grant)
        assert (logged.account, logged.key) == (account, address_of(API_KEY))
        order = await bot.place(SYMBOL, "buy", "1", "2.400")
        assert ex.gateway.exchange.orders[order.order_id].account == account

        expired = delegate(KEYS[1], address_of(API_KEY), int(time.time()) - 1)
        refused = await ex.client()
        with pytest.raises(RequestRefused) as caught:
            await refused.login(API_KEY, account=account, delegation=expired)
        assert caught.value.code == "login_failed"
        # a second attempt on the same connection asks for a fresh nonce and succeeds
        assert (await refused.login(KEYS[2])).account == address_of(KEYS[2])
        assert own.close_status is None
        for client in (own, bot, refused):
            await client.close()
        assert own.close_status == (1000, "")

    run(tmp_path, test)


def test_place_amend_cancel_round_trip(tmp_path: Path) -> None:
    async def test(ex: Exchange) -> None:
        client = await ex.client(KEYS[0])
        placed = await client.place(SYMBOL, "buy", "5", "2.400", cl_ord_id="rt-1")
        assert (placed.status, placed.price, placed.qty, placed.cl_ord_id) == \
            ("new", "2.400", "5", "rt-1")
        amended = await client.amend(placed.order_id, price="2.410", qty="3")
        assert (amended.order_id, amended.price, amended.remaining) == \
            (placed.order_id, "2.410", "3")
        assert ex.depth(Side.BUY) == [("2.410", "3")]
        cancelled = await client.cancel(cl_ord_id="rt-1")
        assert (cancelled.order_id, cancelled.status) == (placed.order_id, "cancelled")
        assert ex.depth(Side.BUY) == []
        with pytest.raises(RequestRefused) as caught:
            await client.cancel(placed.order_id)
        assert caught.value.code == "unknown_order"
        with pytest.raises(RequestRefused) as caught:
            await client.place(SYMBOL, "buy", "1", "9.000")
        assert caught.value.code == "price_out_of_band"
        await client.close()

    run(tmp_path, test)


def test_mass_cancel_dead_mans_switch_and_withdraw(tmp_path: Path) -> None:
    async def test(ex: Exchange) -> None:
        client = await ex.client(KEYS[0])
        for price in ("2.400", "2.401", "2.402"):
            await client.place(SYMBOL, "buy", "1", price)
        assert await client.mass_cancel(SYMBOL) == 3
        assert ex.depth(Side.BUY) == []
        armed = await client.cancel_all_after(60_000)
        assert armed.timeout_ms == 60_000 and int(armed.trigger_ts) > time.time_ns()
        assert (await client.cancel_all_after(0)).trigger_ts == ""
        withdrawal = await client.withdraw("12.5")
        assert withdrawal.amount == "12.500000" and withdrawal.withdrawal_id > 0
        await client.close()

    run(tmp_path, test)


def test_same_cl_ord_id_twice_is_one_order(tmp_path: Path) -> None:
    async def test(ex: Exchange) -> None:
        client = await ex.client(KEYS[0])
        first = await client.place(SYMBOL, "buy", "2", "2.450", cl_ord_id="dup-1")
        again = await client.place(SYMBOL, "buy", "2", "2.450", cl_ord_id="dup-1")
        assert again.order_id == first.order_id
        # two in flight at once: the second waits for the first's order
        both = await asyncio.gather(
            client.place(SYMBOL, "buy", "1", "2.440", cl_ord_id="dup-2"),
            client.place(SYMBOL, "buy", "1", "2.440", cl_ord_id="dup-2"))
        assert both[0].order_id == both[1].order_id
        account = address_of(KEYS[0])
        live = [o for o in ex.gateway.exchange.orders.values() if o.account == account]
        assert len(live) == 2
        assert ex.depth(Side.BUY) == [("2.450", "2"), ("2.440", "1")]
        await client.close()

    run(tmp_path, test)


async def random_orders(clients: list[TraderClient], count: int, seed: int) -> None:
    """Random places (some crossing), cancels and amends around 2.500 from ``clients``."""
    rng = random.Random(seed)
    live: dict[int, list[int]] = {i: [] for i in range(len(clients))}
    for _ in range(count):
        who = rng.randrange(len(clients))
        client, orders = clients[who], live[who]
        roll = rng.random()
        try:
            if roll < 0.6 or not orders:
                side = rng.choice(("buy", "sell"))
                ticks = rng.randrange(2440, 2560)
                order = await client.place(SYMBOL, side, str(rng.randrange(1, 20)),
                                           f"{ticks / 1000:.3f}")
                if order.status in ("new", "partially_filled"):
                    orders.append(order.order_id)
            elif roll < 0.85:
                await client.cancel(orders.pop(rng.randrange(len(orders))))
            else:
                order_id = orders[rng.randrange(len(orders))]
                await client.amend(order_id, qty=str(rng.randrange(1, 10)))
        except RequestRefused as exc:  # the order traded away meanwhile
            assert exc.code == "unknown_order", exc


def assert_book_matches(ex: Exchange, client: TraderClient) -> None:
    book = client.books[SYMBOL]
    assert book.synced
    assert book.bids() == ex.depth(Side.BUY)
    assert book.asks() == ex.depth(Side.SELL)
    assert book.checksum() == int(ex.gateway.books[SYMBOL].view(10).checksum())


def test_two_subscribers_books_verify_and_equal_the_engines(tmp_path: Path) -> None:
    async def test(ex: Exchange) -> None:
        watchers = [await ex.client(), await ex.client(KEYS[3])]
        for watcher in watchers:
            await watcher.subscribe("book", [SYMBOL], depth=10)
        traders = [await ex.client(KEYS[0]), await ex.client(KEYS[1])]
        await random_orders(traders, 400, seed=1)
        for watcher in watchers:
            await watcher.ping()  # everything queued before the pong has arrived
            assert_book_matches(ex, watcher)
            assert (watcher.checksum_failures, watcher.gaps, watcher.resyncs) == (0, 0, 0)
            assert watcher.books[SYMBOL].seq == ex.gateway.books[SYMBOL].view(10).seq
        assert ex.gateway.books[SYMBOL].view(10).seq > 200
        assert ex.depth(Side.BUY) and ex.depth(Side.SELL)
        for client in watchers + traders:
            await client.close()

    run(tmp_path, test)


class DroppingClient(TraderClient):
    """A client that loses its ``drop``-th book update on the way in."""

    def __init__(self, drop: int) -> None:
        super().__init__(on_message=lambda _: None)
        self.drop = drop
        self.updates = 0

    def handle_frame(self, frame: str | bytes) -> None:
        if '"channel":"book","type":"update"' in str(frame):
            self.updates += 1
            if self.updates == self.drop:
                return
        super().handle_frame(frame)


def test_a_lost_update_is_resynced_to_a_correct_book(tmp_path: Path) -> None:
    async def test(ex: Exchange) -> None:
        watcher = DroppingClient(drop=5)
        await watcher.connect(ex.url)
        await watcher.subscribe("book", [SYMBOL])
        trader = await ex.client(KEYS[0])
        await random_orders([trader], 60, seed=2)
        await watcher.ping()
        assert watcher.updates > 5
        assert (watcher.gaps, watcher.resyncs, watcher.checksum_failures) == (1, 1, 0)
        assert_book_matches(ex, watcher)
        for client in (watcher, trader):
            await client.close()

    run(tmp_path, test)
