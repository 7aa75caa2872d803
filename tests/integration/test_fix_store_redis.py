"""The Redis FIX session store against a real redis-server: the store contract, atomic
commits, a server restart, and a FIX session that resumes through it."""

from __future__ import annotations

from gateway.fix_session import FixSession
from gateway.fix_store import MemoryStore, RedisStore, SessionStore, redis_stores
from tests.integration.conftest import RedisServer
from tests.unit.test_fix_session import ACC, INI, Link
from tests.unit.test_fix_store import exercise_store


def test_redis_store_contract(redis_server: RedisServer) -> None:
    client = redis_server.client()
    exercise_store(lambda: RedisStore(client, "test:fix:CMX-MM1"))
    assert sorted(client.keys("test:fix:*")) == [b"test:fix:CMX-MM1:messages",
                                                  b"test:fix:CMX-MM1:seqnums"]


def test_redis_opener_shares_one_store_per_pair(redis_server: RedisServer) -> None:
    open_store = redis_stores(redis_server.client(), "p:")
    store = open_store("CMX", "MM1")
    assert open_store("CMX", "MM1") is store
    store.set_next_target_seq(3)
    store.close()
    assert open_store("CMX", "MM1").next_target_seq() == 3
    assert redis_server.client().hget("p:CMX-MM1:seqnums", "target") == b"3"


def test_changes_are_invisible_until_commit(redis_server: RedisServer) -> None:
    client = redis_server.client()
    writer = RedisStore(client, "k")
    writer.save_sent(1, b"one")
    writer.set_next_sender_seq(2)
    assert RedisStore(client, "k").next_sender_seq() == 1
    assert client.exists("k:messages") == 0
    writer.commit()
    reader = RedisStore(client, "k")
    assert reader.next_sender_seq() == 2
    assert reader.sent(1, 1) == [(1, b"one")]


def test_committed_state_survives_a_server_restart(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.client(), "k")
    store.save_sent(3, b"three")
    store.set_next_sender_seq(4)
    store.set_next_target_seq(9)
    store.commit()
    redis_server.stop(kill=True)
    redis_server.start()
    reopened = RedisStore(redis_server.client(), "k")
    assert (reopened.next_sender_seq(), reopened.next_target_seq()) == (4, 9)
    assert reopened.sent(1, 10) == [(3, b"three")]


def test_session_resumes_through_redis_after_the_exchange_restarts(
    redis_server: RedisServer,
) -> None:
    client_store = MemoryStore()
    first = Link(client_store)
    opener = redis_stores(redis_server.client(), "cmx:fix:")
    stores: dict[tuple[str, str], SessionStore] = {}
    first.stores = stores
    first.sessions[ACC] = FixSession.acceptor(
        "CMX", lambda sender, target: stores.setdefault((sender, target), opener(sender, target)),
        lambda _: None)
    first.connect()
    first.send(INI, "D", [(11, "A")])
    first.lose[ACC] = True  # the exchange dies after sending these, before they arrive
    first.send(ACC, "8", [(37, "report 1")])
    first.send(ACC, "8", [(37, "report 2")])
    first.run(INI, first.initiator.connection_lost(first.now))

    restarted = redis_stores(redis_server.client(), "cmx:fix:")  # a new process, new client
    second = Link(client_store)
    second.sessions[ACC] = FixSession.acceptor("CMX", restarted, lambda _: None)
    second.connect()
    assert second.wire(INI)[0] == ("A", 3)
    assert second.wire(ACC)[0] == ("A", 4)
    assert [message.get(37) for message in second.delivered(INI)] == ["report 1", "report 2"]
    assert [message.get_int(34) for message in second.delivered(INI)] == [2, 3]
    assert client_store.next_target_seq() == 5
