"""Two `cmx shard` processes against one real redis-server: each runs its own instruments
with its own collateral, journals its own requests, and recovers after a clean stop."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from engine.commands import CreditDeposit, ExchangeCommand, PlaceOrder, SetCapacity
from engine.events import (
    BalanceChanged,
    DeliveryOpened,
    DepositCredited,
    ExchangeEvent,
    OrderAccepted,
    OrderRejected,
    Reason,
    Trade,
)
from engine.messages import Side
from engine.shard import submit_request
from loadtest.bench_engine import account
from tests.integration.conftest import RedisServer
from tests.integration.shard_driver import (
    GPU_SYMBOLS,
    PREFIX,
    RACK_SYMBOLS,
    REGISTRY,
    Recovery,
    ShardProcess,
    check_end_state,
    journal_records,
    published,
    published_through,
)

E = TypeVar("E", bound=ExchangeEvent)

USDC = 1_000_000
ALICE, BOB = account(1), account(2)
GPU_SPOT, GPU_FUT = (REGISTRY[s] for s in GPU_SYMBOLS)
RACK_FUT = REGISTRY[RACK_SYMBOLS[1]]
GPU_PRICE = GPU_FUT.price_to_ticks("2.50")
GPU_SPOT_PRICE = GPU_SPOT.price_to_ticks("2.50")
RACK_PRICE = RACK_FUT.price_to_ticks("150.00")
SYMBOLS = {"gpu": GPU_SYMBOLS, "rack": RACK_SYMBOLS}

# What each shard is sent, by label, in order.
REQUESTS: dict[str, dict[str, ExchangeCommand]] = {
    "gpu": {
        "fund alice": CreditDeposit(1, ALICE, 100_000 * USDC),
        "fund bob": CreditDeposit(2, BOB, 100_000 * USDC),
        "alice sells the future": PlaceOrder(ALICE, GPU_FUT.symbol, Side.SELL, 3, GPU_PRICE),
        "bob buys the future": PlaceOrder(BOB, GPU_FUT.symbol, Side.BUY, 2, GPU_PRICE),
        "alice offers GPUs": SetCapacity(ALICE, "GPU.H100", 4),
        "alice sells spot": PlaceOrder(ALICE, GPU_SPOT.symbol, Side.SELL, 2, GPU_SPOT_PRICE),
        "bob buys spot": PlaceOrder(BOB, GPU_SPOT.symbol, Side.BUY, 2, GPU_SPOT_PRICE),
        "alice buys a rack future": PlaceOrder(ALICE, RACK_FUT.symbol, Side.BUY, 1, RACK_PRICE),
    },
    "rack": {
        "alice sells unfunded": PlaceOrder(ALICE, RACK_FUT.symbol, Side.SELL, 2, RACK_PRICE),
        "fund alice": CreditDeposit(3, ALICE, 50_000 * USDC),
        "fund bob": CreditDeposit(4, BOB, 50_000 * USDC),
        "alice sells the future": PlaceOrder(ALICE, RACK_FUT.symbol, Side.SELL, 2, RACK_PRICE),
        "bob buys the future": PlaceOrder(BOB, RACK_FUT.symbol, Side.BUY, 2, RACK_PRICE),
        "bob buys a gpu future": PlaceOrder(BOB, GPU_FUT.symbol, Side.BUY, 1, GPU_PRICE),
    },
}


@pytest.fixture
def shards(redis_server: RedisServer, tmp_path: Path) -> Iterator[dict[str, ShardProcess]]:
    """Shards ``gpu`` and ``rack``, started and recovered (empty), killed at the end."""
    started: dict[str, ShardProcess] = {}
    try:
        for name, symbols in SYMBOLS.items():
            started[name] = ShardProcess(redis_server.url, name, symbols, tmp_path / name)
            assert started[name].start() == Recovery(0, "0-0", 0)
        yield started
    finally:
        for shard in started.values():
            if shard.alive:
                shard.kill()


def submit_all(client: redis.Redis, shards: dict[str, ShardProcess]) -> dict[str, list[str]]:
    """Send every shard its `REQUESTS`, alternating between shards, and wait until each
    shard has published them all; returns the request entry ids by shard."""
    ids: dict[str, list[str]] = {name: [] for name in REQUESTS}
    queues = {name: list(requests.values()) for name, requests in REQUESTS.items()}
    while any(queues.values()):
        for name, queue in queues.items():
            if queue:
                ids[name].append(submit_request(client, PREFIX, name, queue.pop(0)))
    for name, shard in shards.items():
        wait_published(client, shard, len(ids[name]))
    return ids


def wait_published(client: redis.Redis, shard: ShardProcess, seq: int) -> None:
    """Wait until ``shard`` has published the events of command ``seq``."""
    shard.wait_until(lambda: published_through(client, shard.name) >= seq, 10,
                     f"shard {shard.name} to publish command {seq}")


def events_by_label(client: redis.Redis, shard: str) -> dict[str, list[ExchangeEvent]]:
    """Each request's published events, by its label in `REQUESTS`."""
    released = published(client, shard)
    assert [r.seq for r in released] == list(range(1, len(REQUESTS[shard]) + 1))
    return {label: r.events for label, r in zip(REQUESTS[shard], released, strict=True)}


def only(kind: type[E], events: Sequence[ExchangeEvent]) -> E:
    """The single event of ``kind`` among ``events``."""
    found = [e for e in events if isinstance(e, kind)]
    assert len(found) == 1, f"expected one {kind.__name__} in {events}"
    return found[0]


def symbols_in(events: dict[str, list[ExchangeEvent]], *, but: str) -> set[str]:
    """Every symbol an event names, leaving out the request labelled ``but``."""
    return {symbol for label, found in events.items() if label != but for e in found
            if isinstance(symbol := getattr(e, "symbol", None), str)}


def test_each_shard_trades_its_own_instruments_on_its_own_collateral(
        redis_server: RedisServer, shards: dict[str, ShardProcess]) -> None:
    client = redis_server.client()
    submit_all(client, shards)
    gpu, rack = events_by_label(client, "gpu"), events_by_label(client, "rack")

    assert gpu["fund alice"] == [DepositCredited(1, ALICE, 100_000 * USDC),
                                 BalanceChanged(ALICE, 100_000 * USDC, 0, 0, 0)]
    accepted = only(OrderAccepted, gpu["alice sells the future"])
    assert (accepted.symbol, accepted.side, accepted.qty) == (GPU_FUT.symbol, Side.SELL, 3)
    trade = only(Trade, gpu["bob buys the future"])
    assert (trade.symbol, trade.price, trade.qty) == (GPU_FUT.symbol, GPU_PRICE, 2)
    assert (trade.maker_account, trade.taker_account) == (ALICE, BOB)
    assert (trade.maker_remaining, trade.taker_remaining) == (1, 0)
    assert {e.account for e in gpu["bob buys the future"] if isinstance(e, BalanceChanged)} \
        == {ALICE, BOB}
    spot = only(Trade, gpu["bob buys spot"])
    assert (spot.symbol, spot.qty, spot.maker_account) == (GPU_SPOT.symbol, 2, ALICE)
    assert only(DeliveryOpened, gpu["bob buys spot"]).buyer == BOB
    assert gpu["alice buys a rack future"] == [
        OrderRejected(0, ALICE, RACK_FUT.symbol, "", Reason.UNKNOWN_SYMBOL)]
    assert symbols_in(gpu, but="alice buys a rack future") == set(GPU_SYMBOLS)

    # alice's 100,000 USDC on the gpu shard are no collateral on the rack shard
    assert rack["alice sells unfunded"] == [
        OrderRejected(0, ALICE, RACK_FUT.symbol, "", Reason.INSUFFICIENT_MARGIN)]
    assert rack["fund alice"] == [DepositCredited(3, ALICE, 50_000 * USDC),
                                  BalanceChanged(ALICE, 50_000 * USDC, 0, 0, 0)]
    assert only(OrderAccepted, rack["alice sells the future"]).symbol == RACK_FUT.symbol
    trade = only(Trade, rack["bob buys the future"])
    assert (trade.symbol, trade.price, trade.qty) == (RACK_FUT.symbol, RACK_PRICE, 2)
    assert (trade.maker_account, trade.taker_account) == (ALICE, BOB)
    assert rack["bob buys a gpu future"] == [
        OrderRejected(0, BOB, GPU_FUT.symbol, "", Reason.UNKNOWN_SYMBOL)]
    assert symbols_in(rack, but="bob buys a gpu future") == {RACK_FUT.symbol}
    for events in (gpu, rack):
        for found in events.values():
            for balance in (e for e in found if isinstance(e, BalanceChanged)):
                total = balance.available + balance.reserved + balance.margin + balance.escrow
                assert 0 < total <= (100_000 if events is gpu else 50_000) * USDC


def test_each_journal_holds_its_shards_requests_in_order(
        redis_server: RedisServer, shards: dict[str, ShardProcess]) -> None:
    client = redis_server.client()
    ids = submit_all(client, shards)
    for name, requests in REQUESTS.items():
        records = journal_records(client, name)
        assert [r.seq for r in records] == list(range(1, len(requests) + 1))
        assert [r.origin for r in records] == ids[name]
        assert [r.command for r in records] == list(requests.values())
        assert [r.ts for r in records] == sorted(r.ts for r in records)
        assert [r.ts for r in published(client, name)] == [r.ts for r in records]


def test_a_stopped_shard_recovers_and_sequences_on(
        redis_server: RedisServer, shards: dict[str, ShardProcess], tmp_path: Path) -> None:
    client = redis_server.client()
    ids = submit_all(client, shards)
    for name, shard in shards.items():
        assert shard.terminate() == 0
        end = check_end_state(client, name, tmp_path / name, SYMBOLS[name], ids[name])
        assert end.journaled == len(REQUESTS[name])

    for deposit_id, (name, shard) in enumerate(shards.items(), 10):
        done = len(REQUESTS[name])
        assert shard.start() == Recovery(done, ids[name][-1], 0)
        later = submit_request(client, PREFIX, name, CreditDeposit(deposit_id, BOB, USDC))
        wait_published(client, shard, done + 1)
        record = journal_records(client, name)[-1]
        assert (record.seq, record.origin) == (done + 1, later)
        released = published(client, name)[-1]
        assert released.seq == done + 1
        assert released.events[0] == DepositCredited(deposit_id, BOB, USDC)
        assert shard.terminate() == 0
        check_end_state(client, name, tmp_path / name, SYMBOLS[name], [*ids[name], later])
