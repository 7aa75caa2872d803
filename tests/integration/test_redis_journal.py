"""The Redis Streams journal and event stream against a real redis-server."""

from __future__ import annotations

import pytest
import redis

from engine.journal import Journal, JournalError
from engine.redis_journal import RedisStreamJournal
from tests.integration.conftest import RedisServer

PAYLOADS = [f"command {i}".encode() + bytes([i % 256]) * i for i in range(1, 21)]


def test_round_trip(redis_server: RedisServer) -> None:
    journal: Journal = RedisStreamJournal(redis_server.client(), "shard-1:in")
    assert (journal.last_seq, journal.durable_seq) == (0, 0)
    assert [journal.append(p) for p in PAYLOADS] == list(range(1, 21))
    assert journal.sync() == journal.durable_seq == journal.last_seq == 20
    assert list(journal.read()) == list(enumerate(PAYLOADS, 1))
    assert list(journal.read(from_seq=19)) == [(19, PAYLOADS[18]), (20, PAYLOADS[19])]
    assert list(journal.read(from_seq=21)) == []
    journal.close()


def test_entries_carry_the_seq_as_their_id(redis_server: RedisServer) -> None:
    client = redis_server.client()
    RedisStreamJournal(client, "s").append(b"payload")
    assert client.xrange("s") == [(b"1-0", {b"p": b"payload"})]


def test_read_pages_through_long_streams(redis_server: RedisServer) -> None:
    journal = RedisStreamJournal(redis_server.client(), "s", page_size=7)
    journal.append_many(PAYLOADS)
    assert list(journal.read()) == list(enumerate(PAYLOADS, 1))
    assert [seq for seq, _ in journal.read(from_seq=14)] == list(range(14, 21))


def test_seq_continues_with_a_new_client(redis_server: RedisServer) -> None:
    RedisStreamJournal(redis_server.client(), "s").append_many(PAYLOADS[:3])
    journal = RedisStreamJournal(redis_server.client(), "s")
    assert journal.last_seq == journal.durable_seq == 3
    assert journal.append(b"four") == 4
    assert list(journal.read()) == [*enumerate(PAYLOADS[:3], 1), (4, b"four")]


def test_a_writer_that_fell_behind_is_refused(redis_server: RedisServer) -> None:
    first = RedisStreamJournal(redis_server.client(), "s")
    stale = RedisStreamJournal(redis_server.client(), "s")
    first.append(b"one")
    with pytest.raises(JournalError, match="refused seq 1"):
        stale.append(b"other one")
    first.append_many([b"two", b"three"])
    with pytest.raises(JournalError, match="refused seq 1"):
        stale.append_many([b"x", b"y", b"z", b"w"])  # seq 4 would fit: the batch is whole or not
    assert stale.last_seq == 0
    assert list(first.read()) == [(1, b"one"), (2, b"two"), (3, b"three")]


def test_append_many_in_batches(redis_server: RedisServer) -> None:
    journal = RedisStreamJournal(redis_server.client(), "s", batch_size=6)
    assert journal.append_many([]) == 0
    assert journal.append(b"first") == 1
    assert journal.append_many(PAYLOADS) == 21
    assert journal.append_many(PAYLOADS[:1]) == 22
    assert list(journal.read()) == [(1, b"first"), *enumerate(PAYLOADS, 2), (22, PAYLOADS[0])]
    assert RedisStreamJournal(redis_server.client(), "s").last_seq == 22


def test_a_killed_server_keeps_every_acknowledged_record(redis_server: RedisServer) -> None:
    journal = RedisStreamJournal(redis_server.client(), "s")
    for payload in PAYLOADS:
        journal.append(payload)
    journal.append_many(PAYLOADS * 50)
    redis_server.stop(kill=True)  # no shutdown: only the fsynced AOF survives
    redis_server.start()
    recovered = RedisStreamJournal(redis_server.client(), "s")
    assert recovered.last_seq == 20 + 1000
    assert [p for _, p in recovered.read()] == PAYLOADS + PAYLOADS * 50


def test_a_missing_seq_is_reported(redis_server: RedisServer) -> None:
    client = redis_server.client()
    RedisStreamJournal(client, "s").append_many(PAYLOADS[:5])
    client.xdel("s", "3-0")
    with pytest.raises(JournalError, match="missing seq 3"):
        list(RedisStreamJournal(client, "s").read())


def test_a_stream_of_other_entries_is_no_journal(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.xadd("s", {b"p": b"x"}, id="5-1")
    with pytest.raises(JournalError, match="not a journal record"):
        RedisStreamJournal(client, "s")


def test_clients_that_decode_replies_are_refused(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisStreamJournal(client, "s")
