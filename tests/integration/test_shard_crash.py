"""A `cmx shard` under fire while requests keep coming: the shard process killed at random
moments, and separately its redis-server restarted under it (killed, or shut down cleanly).

Afterwards every request is journaled exactly once in request order, every command's events
are published exactly once and equal an uninterrupted replay of the journal, and a shard
recovering then reaches the replay's state (see `check_end_state`).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from engine.commands import ExchangeCommand
from loadtest.bench_engine import engine_stream
from tests.integration.conftest import RedisServer
from tests.integration.shard_driver import (
    GPU_SYMBOLS,
    REGISTRY,
    RequestDriver,
    ShardProcess,
    check_end_state,
    wait_drained,
)

SEED = 20261130
SNAPSHOT_EVERY = 500  # recoveries then start from snapshots as well as from genesis
KILLS = 20
RESTARTS = 5


@pytest.fixture(scope="module")
def stream() -> list[ExchangeCommand]:
    """Far more requests than a test gets through: they flow until the driver is stopped.
    The first 1,000 are deposits, funding every account of the order flow."""
    return engine_stream(60_000, SEED, REGISTRY["GPU.H100.F2701"])


@pytest.mark.slow
def test_a_shard_killed_at_random_moments_journals_every_request_once(
        redis_server: RedisServer, tmp_path: Path, stream: list[ExchangeCommand]) -> None:
    rng = random.Random(SEED)
    data_dir = tmp_path / "gpu"
    driver = RequestDriver(redis_server.url, "gpu", stream, SEED)
    with ShardProcess(redis_server.url, "gpu", GPU_SYMBOLS, data_dir,
                      snapshot_every=SNAPSHOT_EVERY) as shard:
        shard.start()
        driver.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.02, 0.3))  # from the moment the shard recovered
            shard.kill()
            shard.start()
        assert driver.is_alive(), "the request stream ran dry before the last kill"
        acknowledged = driver.finish()
        client = redis_server.client()
        wait_drained(client, shard)
        assert shard.terminate() == 0
    recoveries = shard.recoveries
    assert len(recoveries) == KILLS + 1
    seqs = [r.seq for r in recoveries]
    assert seqs == sorted(seqs), f"a restart lost journaled commands: {seqs}"
    assert len(set(seqs)) > KILLS // 2, f"the kills hardly interrupted any work: {seqs}"
    end = check_end_state(client, "gpu", data_dir, GPU_SYMBOLS, acknowledged)
    assert end.journaled == end.requests >= len(acknowledged) > 2 * KILLS


@pytest.mark.slow
@pytest.mark.parametrize("kill", [True, False], ids=["redis-killed", "redis-shut-down"])
def test_a_shard_rides_through_redis_restarts(redis_server: RedisServer, tmp_path: Path,
                                              stream: list[ExchangeCommand],
                                              kill: bool) -> None:
    rng = random.Random(SEED + kill)
    data_dir = tmp_path / "gpu"
    driver = RequestDriver(redis_server.url, "gpu", stream, SEED)
    with ShardProcess(redis_server.url, "gpu", GPU_SYMBOLS, data_dir,
                      snapshot_every=SNAPSHOT_EVERY) as shard:
        shard.start()
        pid = shard.pid
        driver.start()
        for restart in range(1, RESTARTS + 1):
            time.sleep(rng.uniform(0.05, 0.3))  # from the moment the shard recovered
            redis_server.stop(kill=kill)
            time.sleep(rng.uniform(0.0, 0.3))  # Redis stays down a while
            redis_server.start()
            shard.wait_recovered(restart + 1)
        assert driver.is_alive(), "the request stream ran dry before the last restart"
        acknowledged = driver.finish()
        client = redis_server.client()
        wait_drained(client, shard)
        assert shard.alive and shard.pid == pid, "the shard did not ride through"
        assert shard.terminate() == 0
    assert driver.failed_batches > 0, "the driver never found Redis down"
    seqs = [r.seq for r in shard.recoveries]
    assert seqs == sorted(seqs), f"a Redis restart lost journaled commands: {seqs}"
    end = check_end_state(client, "gpu", data_dir, GPU_SYMBOLS, acknowledged)
    assert end.journaled == end.requests >= len(acknowledged) > RESTARTS
