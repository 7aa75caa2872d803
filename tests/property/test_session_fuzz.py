"""Fuzzing the message handler: arbitrary frames into logged-in and anonymous sessions.

Frames are random bytes and text, random JSON, and objects built from the API's real op and
field names with random values (some of them nearly valid requests, so that the engine is
reached too). Whatever comes in, the session never raises, answers each frame with exactly one
reply that is a JSON object with a ``type`` (echoing a valid ``id``), errors carry a code, a
refused frame leaves the exchange as it was, money is conserved, the gateway's view of the
orders agrees with the engine's, and the other account's order is never touched.
"""

from __future__ import annotations

import json
import tempfile
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import Reason
from engine.instruments import InstrumentErrorCode
from gateway import api
from gateway.session import ClientSession
from tests.ws_helpers import (
    ALICE,
    ALICE_KEY,
    BOB,
    BOB_KEY,
    NS,
    SPOT,
    Floor,
    Message,
    decode,
    place_request,
    reply_to,
)

T0 = 1_796_000_000 * NS
STEP = 10_000_000  # 10 ms between frames: the default rate limits never bite

REQUEST_TYPES = typing.get_args(api.ClientRequest)
OPS = sorted(t.__struct_config__.tag for t in REQUEST_TYPES)
FIELDS = sorted({f for t in REQUEST_TYPES for f in t.__struct_fields__}
                | set(api.Delegation.__struct_fields__))
GATEWAY_CODES = {c.value for c in api.ErrorCode} | {c.value.lower() for c in
                                                    InstrumentErrorCode}
ENGINE_CODES = {r.value for r in Reason}

WORDS = [SPOT, "GPU.H100.F2701", "RACK.KW.SPOT", "RACK.KW.F2701", "GPU.B200.SPOT", "NOPE.SPOT",
         "buy", "sell", "limit", "market", "stop_limit", "stop_market", "gtc", "ioc", "fok",
         "gtd", "cancel_newest", "cancel_oldest", "cancel_both", "decrement", "book", "trades",
         "ticker", "instruments", "orders", "fills", "positions", "balances", "2.400", "2.500",
         "2.125", "2.875", "2.4005", "150.00", "0", "-1", "1", "10", "100", "1.5", "1e3", "NaN",
         "Infinity", " 1", "0x" + "00" * 20, ALICE, BOB, "a1", "b1", "c1", "", "0x" + "ab" * 65]
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 3, -1, 10, 25, 500, 2**63 - 1, 2**63, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.sampled_from(WORDS),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
request_ids = st.one_of(st.integers(min_value=-(2**80), max_value=2**80), st.text(max_size=8),
                        st.none(), st.floats(allow_nan=False), st.lists(st.integers(),
                                                                        max_size=2))


def _with_id(obj: dict[str, Any], request_id: Any, keep: bool) -> dict[str, Any]:
    return {**obj, "id": request_id} if keep else obj


structured = st.builds(
    _with_id,
    st.builds(lambda op, fields: {"op": op, **fields},
              st.sampled_from([*OPS, "bogus", "PLACE"]),
              st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)),
    request_ids, st.booleans())


def _good_or(good: list[Any]) -> st.SearchStrategy[Any]:
    """Mostly one of ``good``, else any value."""
    return st.integers(0, 9).flatmap(lambda n: values if n == 0 else st.sampled_from(good))


good_ids = _good_or([1, 2, "r-1", 2**63, -5])


ORDER_IDS = st.integers(min_value=-1, max_value=6)
CL_ORD_IDS = ["a1", "a2", "a3", "b1"]
limit_places = st.fixed_dictionaries(
        {"op": st.just("place"), "id": good_ids, "symbol": _good_or([SPOT, "RACK.KW.SPOT"]),
         "side": _good_or(["buy", "sell"]), "qty": _good_or(["1", "2", "100"]),
         "cl_ord_id": _good_or(CL_ORD_IDS),
         "price": _good_or(["2.400", "2.450", "2.500", "2.600", "2.125", "5.00", "2.4"])},
        optional={"tif": _good_or(["gtc", "ioc", "fok"]), "post_only": st.booleans(),
                  "display_qty": _good_or(["1"]), "stp": _good_or(["decrement"])})
cancels_and_amends = st.fixed_dictionaries(
        {"op": st.sampled_from(["cancel", "amend"]), "id": good_ids},
        optional={"price": _good_or(["2.400", "2.300"]), "qty": _good_or(["1", "3"])}
    ).flatmap(lambda d: st.one_of(
        st.builds(lambda i: {**d, "order_id": i}, ORDER_IDS),
        st.builds(lambda c: {**d, "cl_ord_id": c}, _good_or(CL_ORD_IDS)))
    ).map(lambda d: d if d["op"] == "amend" else
          {k: v for k, v in d.items() if k not in ("price", "qty")})
near_valid = st.sampled_from([
    limit_places, limit_places, limit_places, cancels_and_amends, cancels_and_amends,
    st.fixed_dictionaries(
        {"op": st.just("place"), "id": good_ids, "symbol": st.just(SPOT),
         "side": _good_or(["buy", "sell"]), "qty": _good_or(["1"]),
         "cl_ord_id": _good_or(CL_ORD_IDS), "type": st.just("stop_limit"),
         "price": _good_or(["2.450"]), "stop_price": _good_or(["2.450", "2.550"])},
        optional={"tif": _good_or(["gtd"]), "expire_ts": st.integers()}),
    st.fixed_dictionaries({"op": st.just("mass_cancel"), "id": good_ids},
                          optional={"symbol": _good_or([SPOT]),
                                    "side": _good_or(["buy", "sell"])}),
    st.fixed_dictionaries({"op": st.just("withdraw"), "id": good_ids,
                           "amount": _good_or(["1", "0.000001"])}),
    st.fixed_dictionaries({"op": st.sampled_from(["subscribe", "unsubscribe"]), "id": good_ids,
                           "channel": _good_or(["book", "orders", "trades", "balances"])},
                          optional={"symbols": _good_or([[SPOT], ["RACK.KW.SPOT"]]),
                                    "depth": _good_or([10, 500])}),
    st.fixed_dictionaries({"op": st.just("resync"), "id": good_ids,
                           "symbol": _good_or([SPOT])}),
    st.fixed_dictionaries({"op": st.just("cancel_all_after"), "id": good_ids,
                           "timeout_ms": st.integers(min_value=-1, max_value=4_000_000)}),
]).flatmap(lambda strategy: strategy)


def _encode(obj: Any, as_bytes: bool) -> str | bytes:
    text = json.dumps(obj)
    return text.encode() if as_bytes else text


garbage = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    st.builds(_encode, values, st.booleans()),
    st.builds(_encode, structured, st.booleans()),
)
frames = st.integers(0, 2).flatmap(  # two thirds nearly valid, so the engine is reached
    lambda n: garbage if n == 0 else st.builds(_encode, near_valid, st.booleans()))


@contextmanager
def world() -> Iterator[tuple[Floor, ClientSession, int]]:
    """A fresh exchange: Bob rests a sell, Alice is logged in and rests a buy; yields the floor,
    Alice's session and the id of Bob's order."""
    with tempfile.TemporaryDirectory() as directory:
        floor = Floor(Path(directory))
        try:
            floor.fund(ALICE, BOB)
            floor.capacity(ALICE)
            floor.capacity(BOB)
            bob = floor.logged_in(BOB_KEY, T0)
            bob_order = reply_to(floor.send(bob, place_request(
                "b1", side="sell", price="2.600"), T0), 1)["order"]["order_id"]
            alice = floor.logged_in(ALICE_KEY, T0)
            floor.send(alice, place_request("a1"), T0)
            floor.send(alice, {"op": "subscribe", "channel": "orders", "id": 2}, T0)
            floor.send(alice, {"op": "subscribe", "channel": "book", "symbols": [SPOT],
                               "id": 3}, T0)
            yield floor, alice, bob_order
        finally:
            floor.close()


def valid_id(frame: str | bytes) -> tuple[bool, Any]:
    """Whether the frame is a JSON object with an int or string ``id``, and that id."""
    try:
        value = msgspec.json.decode(frame)
    except msgspec.DecodeError:
        return False, None
    if not isinstance(value, dict) or "id" not in value:
        return False, None
    request_id = value["id"]
    return isinstance(request_id, int | str) and not isinstance(request_id, bool), request_id


def orders_of(floor: Floor, account: str) -> dict[int, tuple[int, int, int, int]]:
    """The account's live orders on the engine: id -> (limit, remaining, filled, lock)."""
    return {o.order_id: (o.limit, o.remaining, o.filled, o.lock)
            for o in floor.exchange.orders.values() if o.account == account}


def check_frame(floor: Floor, session: ClientSession, frame: str | bytes, now: int,
                bob_order: int) -> list[Message]:
    """Feed one frame and check every property; return the session's output."""
    exchange = floor.exchange
    state, last_seq = exchange.state_hash(), exchange.last_seq
    mine, balances = orders_of(floor, ALICE), msgspec.json.encode(
        sorted(exchange.ledger.accounts.items()))
    bob_before = orders_of(floor, BOB)

    session.receive(frame, now)
    floor.pump()
    out = decode(session.drain())

    assert all(isinstance(m.get("type"), str) for m in out), out
    replies = [m for m in out if "id" in m]
    if not replies:  # a resync is answered by the snapshot itself
        request = msgspec.json.decode(frame)
        assert request["op"] == "resync", (frame, out)
        assert [(m["channel"], m["type"], m["symbol"]) for m in out] == [
            ("book", "snapshot", request["symbol"])]
        assert exchange.state_hash() == state
        return out
    assert len(replies) == 1, (frame, out)
    reply = replies[0]
    has_id, request_id = valid_id(frame)
    if has_id:
        assert reply["id"] == request_id
    if reply["type"] == "error":
        assert isinstance(reply["code"], str) and reply["code"] in GATEWAY_CODES | ENGINE_CODES
        assert isinstance(reply["msg"], str) and reply["msg"]
        assert orders_of(floor, ALICE) == mine
        assert msgspec.json.encode(sorted(exchange.ledger.accounts.items())) == balances
        if reply["code"] not in ENGINE_CODES:  # refused by the gateway itself
            assert exchange.last_seq == last_seq
    if exchange.last_seq == last_seq:
        assert exchange.state_hash() == state
    assert exchange.ledger.conserved()
    bob_after = orders_of(floor, BOB)
    if bob_order in bob_after:
        assert bob_after == bob_before
    else:  # only a buy at its price can take Bob's order (one lot) away
        assert any(t.price == "2.600" for t in floor.gateway.books[SPOT].trades)
    tracked = {o.order_id for o in floor.gateway.tracker.orders.values() if o.account == ALICE}
    assert tracked == set(orders_of(floor, ALICE))
    for message in out:  # Alice's private channels never show Bob's orders
        if message.get("channel") in ("orders", "fills") and "data" in message:
            assert all(item["cl_ord_id"] != "b1" or item["order_id"] != bob_order
                       for item in message["data"])
    return out


FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(frames, min_size=1, max_size=6))
def test_logged_in_session_survives_any_frames(batch: list[str | bytes]) -> None:
    with world() as (floor, alice, bob_order):
        now = T0
        for frame in batch:
            now += STEP
            check_frame(floor, alice, frame, now, bob_order)
        assert alice.close_reason is None
        pong = floor.send(alice, {"op": "ping", "id": "still-there"}, now + STEP)
        assert reply_to(pong, "still-there")["type"] == "pong"


@FUZZ
@given(st.lists(frames, min_size=1, max_size=6))
def test_anonymous_session_never_reaches_the_engine(batch: list[str | bytes]) -> None:
    with world() as (floor, _, bob_order):
        session = floor.session(T0)
        session.drain()
        state = floor.exchange.state_hash()
        now = T0
        for frame in batch:
            now += STEP
            out = check_frame(floor, session, frame, now, bob_order)
            assert not any(m.get("channel") in ("orders", "fills", "positions", "balances")
                           for m in out if "id" not in m)
            assert session.account is None
        assert floor.exchange.state_hash() == state
