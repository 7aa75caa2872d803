"""The message handler on bad input, sans-I/O: a `ClientSession` fed frames at chosen times.

Every refused request gets an error with a stable code (and its ``id`` when it had a valid
one), the session keeps answering, other sessions see nothing of it, and what was acknowledged
before is still on the book.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.messages import Side
from gateway.auth import NONCE_TTL_NS
from gateway.hub import Limits
from gateway.rate_limit import RateLimit
from gateway.session import CLOSE_POLICY, CLOSE_TRY_AGAIN, ClientSession
from tests.ws_helpers import (
    ALICE,
    ALICE_KEY,
    API_KEY,
    BOB,
    BOB_KEY,
    CAROL_KEY,
    NS,
    SPOT,
    Floor,
    Message,
    decode,
    delegated_login_request,
    login_request,
    of_type,
    place_request,
    reply_to,
)

T0 = 1_796_000_000 * NS
MS = 1_000_000


@pytest.fixture
def floor(tmp_path: Path) -> Iterator[Floor]:
    floor = Floor(tmp_path)
    floor.fund(ALICE, BOB)
    floor.capacity(ALICE)
    floor.capacity(BOB)
    yield floor
    floor.close()


def place(floor: Floor, session: ClientSession, cl_ord_id: str, now: int = T0,
          **fields: Any) -> Message:
    """Place an order that must be accepted; return its view."""
    reply = reply_to(floor.send(session, place_request(cl_ord_id, request_id=cl_ord_id,
                                                       **fields), now), cl_ord_id)
    assert reply["type"] == "order" and reply["order"]["status"] == "new", reply
    order: Message = reply["order"]
    return order


def error(messages: list[Message]) -> Message:
    """The one error among ``messages``."""
    errors = of_type(messages, "error")
    assert len(errors) == 1, messages
    return errors[0]


# --- malformed and invalid requests -----------------------------------------------------------

BAD_FRAMES: list[tuple[str, str | bytes, str, int | str | None]] = [
    ("malformed JSON", '{"op": "ping", "id": 7', "invalid_request", None),
    ("not JSON at all", "hello", "invalid_request", None),
    ("empty frame", "", "invalid_request", None),
    ("JSON array", '[{"op": "ping", "id": 7}]', "invalid_request", None),
    ("JSON string", '"ping"', "invalid_request", None),
    ("JSON number", "42", "invalid_request", None),
    ("JSON null", "null", "invalid_request", None),
    ("binary garbage", b"\x00\xff\xfe\x81", "invalid_request", None),
    ("no op", '{"id": 7}', "invalid_request", 7),
    ("unknown op", '{"op": "buy_everything", "id": 7}', "invalid_request", 7),
    ("op of the wrong type", '{"op": 3, "id": 7}', "invalid_request", 7),
    ("unknown field", '{"op": "ping", "id": 7, "urgent": true}', "invalid_request", 7),
    ("unknown field in place",
     json.dumps(place_request("x1", request_id=7, leverage="100")), "invalid_request", 7),
    ("qty as a number",
     json.dumps(place_request("x1", request_id=7) | {"qty": 1}), "invalid_request", 7),
    ("price as an object",
     json.dumps(place_request("x1", request_id=7) | {"price": {"v": "2.4"}}),
     "invalid_request", 7),
    ("side unknown", json.dumps(place_request("x1", request_id=7, side="long")),
     "invalid_request", 7),
    ("missing qty", json.dumps({k: v for k, v in place_request("x1", request_id=7).items()
                                if k != "qty"}), "invalid_request", 7),
    ("missing cl_ord_id", json.dumps({k: v for k, v in place_request("x1", request_id=7).items()
                                      if k != "cl_ord_id"}), "invalid_request", 7),
    ("negative quantity", json.dumps(place_request("x1", request_id=7, qty="-1")),
     "non_positive_quantity", 7),
    ("zero quantity", json.dumps(place_request("x1", request_id=7, qty="0")),
     "non_positive_quantity", 7),
    ("fractional lots", json.dumps(place_request("x1", request_id=7, qty="1.5")),
     "off_lot", 7),
    ("quantity in exponent form", json.dumps(place_request("x1", request_id=7, qty="1e3")),
     "invalid_quantity", 7),
    ("quantity beyond int64",
     json.dumps(place_request("x1", request_id=7, qty="9" * 30)), "invalid_quantity", 7),
    ("price off tick", json.dumps(place_request("x1", request_id=7, price="2.4005")),
     "off_tick", 7),
    ("price NaN", json.dumps(place_request("x1", request_id=7, price="NaN")),
     "invalid_price", 7),
    ("negative price", json.dumps(place_request("x1", request_id=7, price="-2.400")),
     "invalid_price", 7),
    ("limit without price", json.dumps({k: v for k, v in place_request(
        "x1", request_id=7).items() if k != "price"}), "invalid_request", 7),
    ("market with price", json.dumps(place_request("x1", request_id=7, type="market")),
     "invalid_request", 7),
    ("unknown symbol", json.dumps(place_request("x1", request_id=7, symbol="GPU.H999.SPOT")),
     "unknown_symbol", 7),
    ("huge expire_ts", json.dumps(place_request("x1", request_id=7, tif="gtd",
                                                expire_ts=10**30)), "invalid_request", 7),
    ("cl_ord_id too long", json.dumps(place_request("x" * 37, request_id=7)),
     "invalid_request", 7),
    ("cl_ord_id with a space", json.dumps(place_request("a b", request_id=7)),
     "invalid_request", 7),
    ("cl_ord_id with a quote", json.dumps(place_request('a"b', request_id=7)),
     "invalid_request", 7),
    ("cl_ord_id not ASCII", json.dumps(place_request("ordre\u00e9", request_id=7)),
     "invalid_request", 7),
    ("empty cl_ord_id", json.dumps(place_request("", request_id=7)), "invalid_request", 7),
    ("id as a float", '{"op": "ping", "id": 1.5}', "invalid_request", None),
    ("id as an object", '{"op": "ping", "id": {"n": 1}}', "invalid_request", None),
    ("huge order_id", '{"op": "cancel", "id": 7, "order_id": ' + "9" * 40 + "}",
     "unknown_order", 7),
    ("negative order_id", '{"op": "cancel", "id": 7, "order_id": -1}', "unknown_order", 7),
    ("cancel with both ids", '{"op": "cancel", "id": 7, "order_id": 1, "cl_ord_id": "a"}',
     "invalid_request", 7),
    ("amend without change", '{"op": "amend", "id": 7, "cl_ord_id": "keep"}',
     "invalid_request", 7),
    ("withdraw with exponent", '{"op": "withdraw", "id": 7, "amount": "1e6"}',
     "invalid_amount", 7),
    ("withdraw zero", '{"op": "withdraw", "id": 7, "amount": "0"}', "invalid_amount", 7),
    ("cancel_all_after negative", '{"op": "cancel_all_after", "id": 7, "timeout_ms": -5}',
     "invalid_request", 7),
    ("book depth not offered", '{"op": "subscribe", "id": 7, "channel": "book", '
     '"symbols": ["GPU.H100.SPOT"], "depth": 7}', "invalid_request", 7),
    ("unknown channel", '{"op": "subscribe", "id": 7, "channel": "gossip"}',
     "invalid_request", 7),
    ("book without symbols", '{"op": "subscribe", "id": 7, "channel": "book"}',
     "invalid_request", 7),
    ("subscribe an unknown symbol", '{"op": "subscribe", "id": "s", "channel": "trades", '
     '"symbols": ["NOPE.SPOT"]}', "unknown_symbol", "s"),
    ("resync without subscription", '{"op": "resync", "id": 7, "symbol": "GPU.H100.SPOT"}',
     "not_subscribed", 7),
    ("second login", json.dumps(login_request(ALICE_KEY, "0" * 32, 7)), "already_logged_in",
     7),
]


@pytest.mark.parametrize(("frame", "code", "request_id"),
                         [pytest.param(f, c, i, id=name) for name, f, c, i in BAD_FRAMES])
def test_bad_frames_get_a_clear_error_and_change_nothing(
        floor: Floor, frame: str | bytes, code: str, request_id: int | str | None) -> None:
    alice = floor.logged_in(ALICE_KEY, T0)
    kept = place(floor, alice, "keep")
    watcher = floor.logged_in(BOB_KEY, T0)
    floor.send(watcher, {"op": "subscribe", "id": 1, "channel": "book", "symbols": [SPOT]}, T0)
    state = floor.exchange.state_hash()

    answer = error(floor.send(alice, frame, T0))

    assert answer["code"] == code, answer
    assert answer["id"] == request_id
    assert answer["msg"]
    assert alice.close_reason is None
    assert floor.exchange.state_hash() == state
    assert floor.live_orders(ALICE) == {"keep": kept["order_id"]}
    assert watcher.drain() == []
    assert reply_to(floor.send(alice, {"op": "ping", "id": 8}, T0), 8)["type"] == "pong"


def test_huge_integer_ids_are_echoed_exactly(floor: Floor) -> None:
    alice = floor.logged_in(ALICE_KEY, T0)
    for request_id in (2**63 - 1, 2**64, -(10**30), 10**40):
        frame = '{"op": "ping", "id": ' + str(request_id) + "}"
        assert reply_to(floor.send(alice, frame, T0), request_id)["type"] == "pong"
        bad = '{"op": "pong", "id": ' + str(request_id) + "}"
        assert reply_to(floor.send(alice, bad, T0), request_id)["code"] == "invalid_request"


def test_engine_refusals_keep_the_book(floor: Floor) -> None:
    alice = floor.logged_in(ALICE_KEY, T0)
    kept = place(floor, alice, "keep")
    out_of_band = reply_to(floor.send(alice, place_request("far", price="9.000", request_id=3),
                                      T0), 3)
    assert out_of_band["type"] == "error" and out_of_band["code"] == "price_out_of_band"
    too_big = reply_to(floor.send(alice, place_request("big", qty="999999999", request_id=4),
                                  T0), 4)
    assert too_big["type"] == "error" and too_big["code"] in ("insufficient_funds",
                                                               "invalid_quantity")
    assert floor.live_orders(ALICE) == {"keep": kept["order_id"]}
    assert floor.exchange.ledger.conserved()


def test_order_ops_before_login_are_refused(floor: Floor) -> None:
    session = floor.session(T0)
    session.drain()
    requests: list[Message] = [
        place_request("a1", request_id=1),
        {"op": "cancel", "id": 2, "order_id": 1},
        {"op": "amend", "id": 3, "order_id": 1, "qty": "2"},
        {"op": "mass_cancel", "id": 4},
        {"op": "withdraw", "id": 5, "amount": "1"},
        {"op": "cancel_all_after", "id": 6, "timeout_ms": 1000},
        {"op": "subscribe", "id": 7, "channel": "orders"},
        {"op": "subscribe", "id": 8, "channel": "balances"},
    ]
    state = floor.exchange.state_hash()
    for request in requests:
        answer = error(floor.send(session, request, T0))
        assert (answer["id"], answer["code"]) == (request["id"], "not_logged_in")
    assert floor.exchange.state_hash() == state
    public = floor.send(session, {"op": "subscribe", "id": 9, "channel": "book",
                                  "symbols": [SPOT]}, T0)
    assert reply_to(public, 9)["type"] == "subscribed"


# --- login --------------------------------------------------------------------------------------


def fresh(floor: Floor, now: int = T0) -> tuple[ClientSession, str]:
    """A new session and the nonce of its welcome."""
    session = floor.session(now)
    welcome = decode(session.drain())[0]
    return session, str(welcome["nonce"])


def login_error(floor: Floor, session: ClientSession, request: Message, now: int = T0) -> str:
    """Send a login that must fail; return its message, and check nothing was granted."""
    answer = error(floor.send(session, request, now))
    assert answer["code"] == "login_failed"
    assert session.account is None
    assert error(floor.send(session, place_request("z", request_id=99), now))["code"] == \
        "not_logged_in"
    return str(answer["msg"])


def test_login_signed_over_other_text_fails(floor: Floor) -> None:
    session, nonce = fresh(floor)
    request = login_request(ALICE_KEY, nonce)
    request["signature"] = login_request(ALICE_KEY, "f" * 32)["signature"]
    assert "not by the account" in login_error(floor, session, request)


def test_login_signed_by_another_key_fails(floor: Floor) -> None:
    session, nonce = fresh(floor)
    request = login_request(BOB_KEY, nonce) | {"account": ALICE}
    assert "not by the account" in login_error(floor, session, request)


def test_login_with_a_garbage_signature_fails(floor: Floor) -> None:
    session, nonce = fresh(floor)
    request = login_request(ALICE_KEY, nonce) | {"signature": "0x" + "00" * 65}
    assert "does not recover" in login_error(floor, session, request)


def test_login_replayed_on_another_connection_fails(floor: Floor) -> None:
    first, nonce = fresh(floor)
    request = login_request(ALICE_KEY, nonce)
    assert floor.send(first, request, T0)[0]["type"] == "logged_in"
    second, _ = fresh(floor)
    assert "nonce" in login_error(floor, second, request)


def test_login_replayed_on_the_same_connection(floor: Floor) -> None:
    session, nonce = fresh(floor)
    good = login_request(ALICE_KEY, nonce)
    assert floor.send(session, good, T0)[0]["type"] == "logged_in"
    again = error(floor.send(session, good, T0))
    assert again["code"] == "already_logged_in"
    assert session.account == ALICE


def test_a_failed_login_spends_the_nonce(floor: Floor) -> None:
    session, nonce = fresh(floor)
    login_error(floor, session, login_request(BOB_KEY, nonce) | {"account": ALICE})
    assert "nonce" in login_error(floor, session, login_request(ALICE_KEY, nonce))
    challenge = floor.send(session, {"op": "challenge", "id": 2}, T0)[0]
    assert challenge["type"] == "challenge" and challenge["nonce"] != nonce
    ok = floor.send(session, login_request(ALICE_KEY, challenge["nonce"]), T0)
    assert ok[0]["type"] == "logged_in"


def test_an_expired_nonce_fails(floor: Floor) -> None:
    session, nonce = fresh(floor)
    late = T0 + NONCE_TTL_NS + 1
    assert "expired" in login_error(floor, session, login_request(ALICE_KEY, nonce), late)
    challenge = floor.send(session, {"op": "challenge", "id": 2}, late)[0]
    ok = floor.send(session, login_request(ALICE_KEY, challenge["nonce"]), late)
    assert ok[0]["type"] == "logged_in"


def test_a_nonce_is_good_until_its_expiry(floor: Floor) -> None:
    session, nonce = fresh(floor)
    ok = floor.send(session, login_request(ALICE_KEY, nonce), T0 + NONCE_TTL_NS)
    assert ok[0]["type"] == "logged_in"


def test_delegated_key_logs_in_for_the_account(floor: Floor) -> None:
    session, nonce = fresh(floor)
    request = delegated_login_request(ALICE_KEY, API_KEY, nonce, T0 // NS + 3600)
    reply = floor.send(session, request, T0)[0]
    assert reply["type"] == "logged_in" and reply["account"] == ALICE
    assert reply["key"] == request["delegation"]["key"]


def test_expired_delegation_fails(floor: Floor) -> None:
    session, nonce = fresh(floor)
    request = delegated_login_request(ALICE_KEY, API_KEY, nonce, T0 // NS)
    assert "expired" in login_error(floor, session, request)


def test_delegation_signed_by_another_account_fails(floor: Floor) -> None:
    session, nonce = fresh(floor)
    request = delegated_login_request(ALICE_KEY, API_KEY, nonce, T0 // NS + 3600,
                                      grantor_key=CAROL_KEY)
    assert "not signed by the account" in login_error(floor, session, request)


def test_delegation_with_the_login_signed_by_the_account_fails(floor: Floor) -> None:
    session, nonce = fresh(floor)
    request = delegated_login_request(ALICE_KEY, API_KEY, nonce, T0 // NS + 3600)
    request["signature"] = login_request(ALICE_KEY, nonce)["signature"]
    assert "delegated key" in login_error(floor, session, request)


# --- one account against another ----------------------------------------------------------------


def test_another_account_cannot_touch_an_order(floor: Floor) -> None:
    alice = floor.logged_in(ALICE_KEY, T0)
    floor.send(alice, {"op": "subscribe", "id": 1, "channel": "orders"}, T0)
    order = place(floor, alice, "mine")
    alice.drain()
    bob = floor.logged_in(BOB_KEY, T0)
    attempts: list[Message] = [
        {"op": "cancel", "id": 1, "order_id": order["order_id"]},
        {"op": "cancel", "id": 2, "cl_ord_id": "mine"},
        {"op": "amend", "id": 3, "order_id": order["order_id"], "qty": "5"},
        {"op": "amend", "id": 4, "cl_ord_id": "mine", "price": "2.300"},
    ]
    for attempt in attempts:
        answer = error(floor.send(bob, attempt, T0))
        assert (answer["id"], answer["code"]) == (attempt["id"], "unknown_order")
    mass = reply_to(floor.send(bob, {"op": "mass_cancel", "id": 5}, T0), 5)
    assert mass == {"type": "mass_cancelled", "id": 5, "cancelled": 0}
    assert floor.live_orders(ALICE) == {"mine": order["order_id"]}
    live = floor.exchange.orders[order["order_id"]]
    assert (live.remaining, live.placed and live.placed.price) == (1, 2400)
    assert alice.drain() == []  # not even an update on her orders channel


def test_the_same_client_order_id_is_per_account(floor: Floor) -> None:
    alice = floor.logged_in(ALICE_KEY, T0)
    bob = floor.logged_in(BOB_KEY, T0)
    mine = place(floor, alice, "same")
    theirs = place(floor, bob, "same", price="2.300")
    assert mine["order_id"] != theirs["order_id"]
    again = reply_to(floor.send(bob, place_request("same", request_id=9), T0), 9)
    assert again["order"]["order_id"] == theirs["order_id"]
    assert again["order"]["price"] == "2.300"
    assert floor.live_orders(ALICE) == {"same": mine["order_id"]}


def test_private_channels_stay_private(floor: Floor) -> None:
    alice = floor.logged_in(ALICE_KEY, T0)
    bob = floor.logged_in(BOB_KEY, T0)
    for session in (alice, bob):
        for n, channel in enumerate(("orders", "fills", "balances", "positions")):
            floor.send(session, {"op": "subscribe", "id": n, "channel": channel}, T0)
    place(floor, alice, "rest", price="2.500")
    bob_view = floor.send(bob, {"op": "ping", "id": 1}, T0)
    assert of_type(bob_view, "update") == []
    # a trade between them: each sees only its own side
    bob_msgs = floor.send(bob, place_request("hit", side="sell", price="2.500"), T0)
    assert reply_to(bob_msgs, 1)["order"]["status"] == "filled"
    fills = [f for m in bob_msgs if m.get("channel") == "fills" for f in m["data"]]
    assert [(f["cl_ord_id"], f["side"], f["liquidity"]) for f in fills] == [
        ("hit", "sell", "taker")]
    orders = [o for m in bob_msgs if m.get("channel") == "orders" for o in m["data"]]
    assert orders and {o["cl_ord_id"] for o in orders} == {"hit"}
    alice_msgs = decode(alice.drain())
    fills = [f for m in alice_msgs if m.get("channel") == "fills" for f in m["data"]]
    assert [(f["cl_ord_id"], f["side"], f["liquidity"]) for f in fills] == [
        ("rest", "buy", "maker")]
    for message in alice_msgs:
        for item in message.get("data", []):
            assert item.get("cl_ord_id") in (None, "rest")


# --- rate limits --------------------------------------------------------------------------------


def limited_floor(tmp_path: Path, limits: Limits) -> Floor:
    floor = Floor(tmp_path, limits)
    floor.fund(ALICE, BOB)
    return floor


def test_orders_beyond_the_connection_limit_are_refused(tmp_path: Path) -> None:
    floor = limited_floor(tmp_path, Limits(orders_per_connection=RateLimit(10, 3)))
    alice = floor.logged_in(ALICE_KEY, T0)
    codes = []
    for n in range(5):
        answer = floor.send(alice, place_request(f"o{n}", price=f"2.{400 + n}",
                                                 request_id=n), T0)
        codes.append(reply_to(answer, n).get("code"))
    assert codes == [None, None, None, "rate_limited", "rate_limited"]
    assert sorted(floor.live_orders(ALICE)) == ["o0", "o1", "o2"]
    # pings are not orders; a tenth of a second later one more order fits
    assert reply_to(floor.send(alice, {"op": "ping", "id": 9}, T0), 9)["type"] == "pong"
    later = floor.send(alice, place_request("o9", request_id=10), T0 + 100 * MS)
    assert reply_to(later, 10)["type"] == "order"
    floor.close()


def test_messages_beyond_the_connection_limit_are_refused(tmp_path: Path) -> None:
    floor = limited_floor(tmp_path, Limits(messages_per_connection=RateLimit(1, 2)))
    session = floor.session(T0)
    session.drain()
    kinds = [reply_to(floor.send(session, {"op": "ping", "id": n}, T0), n)
             for n in range(4)]
    assert [k.get("code", k["type"]) for k in kinds] == ["pong", "pong", "rate_limited",
                                                          "rate_limited"]
    floor.close()


def test_the_account_limit_is_shared_by_its_connections(tmp_path: Path) -> None:
    floor = limited_floor(tmp_path, Limits(orders_per_account=RateLimit(1, 2)))
    first = floor.logged_in(ALICE_KEY, T0)
    second = floor.logged_in(ALICE_KEY, T0)
    bob = floor.logged_in(BOB_KEY, T0)
    assert reply_to(floor.send(first, place_request("a", request_id=1), T0), 1)["type"] == \
        "order"
    assert reply_to(floor.send(second, place_request("b", price="2.300", request_id=2), T0),
                    2)["type"] == "order"
    third = reply_to(floor.send(second, place_request("c", price="2.200", request_id=3), T0),
                     3)
    assert third["code"] == "rate_limited"
    assert reply_to(floor.send(first, {"op": "cancel", "id": 4, "cl_ord_id": "a"}, T0),
                    4)["code"] == "rate_limited"
    # another account is not held back
    assert reply_to(floor.send(bob, place_request("x", request_id=5), T0), 5)["type"] == \
        "order"
    assert sorted(floor.live_orders(ALICE)) == ["a", "b"]
    floor.close()


def test_repeated_abuse_closes_the_connection(tmp_path: Path) -> None:
    limits = Limits(messages_per_connection=RateLimit(1, 1), abuse_strikes=3)
    floor = limited_floor(tmp_path, limits)
    alice = floor.logged_in(ALICE_KEY, T0 - 2 * NS)
    kept = place(floor, alice, "keep", now=T0 - NS)
    bystander = floor.logged_in(BOB_KEY, T0)
    floor.send(alice, {"op": "ping", "id": 0}, T0)  # the bucket is now empty
    strikes = [floor.send(alice, {"op": "ping", "id": n}, T0) for n in range(1, 5)]
    assert [error(s)["code"] for s in strikes[:3]] == ["rate_limited"] * 3
    assert alice.close_reason == (CLOSE_POLICY, "rate limit exceeded repeatedly")
    assert error(strikes[3])["code"] == "closing"
    assert floor.send(alice, {"op": "ping", "id": 9}, T0 + NS) == []  # closed: ignored
    alice.closed()
    assert floor.live_orders(ALICE) == {"keep": kept["order_id"]}
    assert reply_to(floor.send(bystander, {"op": "ping", "id": 1}, T0 + NS), 1)["type"] == \
        "pong"
    floor.close()


def test_strikes_count_only_in_a_row(tmp_path: Path) -> None:
    limits = Limits(messages_per_connection=RateLimit(10, 1), abuse_strikes=2)
    floor = limited_floor(tmp_path, limits)
    session = floor.session(T0)
    session.drain()
    now = T0
    for _ in range(10):  # one refused request now and then never closes the connection
        assert floor.send(session, {"op": "ping", "id": 1}, now)[0]["type"] == "pong"
        assert floor.send(session, {"op": "ping", "id": 2}, now)[0]["code"] == "rate_limited"
        now += 100 * MS
    assert session.close_reason is None
    floor.close()


# --- disconnects and the dead-man's switch ------------------------------------------------------


def test_cancel_on_disconnect_cancels_exactly_that_connections_orders(floor: Floor) -> None:
    careful = floor.logged_in(ALICE_KEY, T0, cancel_on_disconnect=True)
    other = floor.logged_in(ALICE_KEY, T0)
    bob = floor.logged_in(BOB_KEY, T0, cancel_on_disconnect=True)
    for n in range(3):
        place(floor, careful, f"c{n}", price=f"2.{300 + n}")
    place(floor, other, "o1")
    place(floor, bob, "b1", price="2.200")
    careful.closed()
    floor.pump()
    assert sorted(floor.live_orders(ALICE)) == ["o1"]
    assert sorted(floor.live_orders(BOB)) == ["b1"]
    other.closed()  # without cancel_on_disconnect its orders stay
    floor.pump()
    assert sorted(floor.live_orders(ALICE)) == ["o1"]


def test_cancel_on_disconnect_covers_orders_still_in_flight(floor: Floor) -> None:
    alice = floor.logged_in(ALICE_KEY, T0, cancel_on_disconnect=True)
    place(floor, alice, "acked")
    alice.receive(json.dumps(place_request("in_flight", price="2.300")), T0)
    alice.closed()  # gone before the place was acknowledged
    floor.pump()
    floor.pump()
    assert floor.live_orders(ALICE) == {}


def test_cancel_all_after_fires_when_due(floor: Floor) -> None:
    alice = floor.logged_in(ALICE_KEY, T0)
    bob = floor.logged_in(BOB_KEY, T0)
    place(floor, alice, "a1")
    place(floor, alice, "a2", price="2.300")
    place(floor, bob, "b1", price="2.200")
    armed = reply_to(floor.send(alice, {"op": "cancel_all_after", "id": 5,
                                        "timeout_ms": 500}, T0), 5)
    assert armed["trigger_ts"] == str(T0 + 500 * MS)
    alice.tick(T0 + 499 * MS)
    floor.gateway.tick(T0 + 499 * MS)
    floor.pump()
    assert sorted(floor.live_orders(ALICE)) == ["a1", "a2"]
    floor.send(alice, {"op": "cancel_all_after", "id": 6, "timeout_ms": 500}, T0 + 400 * MS)
    floor.gateway.tick(T0 + 800 * MS)  # re-armed at 400 ms: not due until 900 ms
    floor.pump()
    assert sorted(floor.live_orders(ALICE)) == ["a1", "a2"]
    floor.gateway.tick(T0 + 900 * MS)
    floor.pump()
    assert floor.live_orders(ALICE) == {}
    assert sorted(floor.live_orders(BOB)) == ["b1"]


def test_cancel_all_after_zero_turns_it_off(floor: Floor) -> None:
    alice = floor.logged_in(ALICE_KEY, T0)
    place(floor, alice, "a1")
    floor.send(alice, {"op": "cancel_all_after", "id": 1, "timeout_ms": 100}, T0)
    off = reply_to(floor.send(alice, {"op": "cancel_all_after", "id": 2, "timeout_ms": 0},
                              T0), 2)
    assert off["trigger_ts"] == ""
    floor.gateway.tick(T0 + NS)
    floor.pump()
    assert sorted(floor.live_orders(ALICE)) == ["a1"]


def test_cancel_all_after_fires_after_the_connection_is_gone(floor: Floor) -> None:
    alice = floor.logged_in(ALICE_KEY, T0)
    place(floor, alice, "a1")
    floor.send(alice, {"op": "cancel_all_after", "id": 1, "timeout_ms": 200}, T0)
    alice.closed()  # the client vanished: that is what the switch is for
    floor.gateway.tick(T0 + 100 * MS)
    floor.pump()
    assert sorted(floor.live_orders(ALICE)) == ["a1"]
    floor.gateway.tick(T0 + 200 * MS)
    floor.pump()
    assert floor.live_orders(ALICE) == {}


# --- slow consumers -----------------------------------------------------------------------------


def test_a_slow_book_reader_is_conflated_to_a_fresh_snapshot(tmp_path: Path) -> None:
    floor = limited_floor(tmp_path, Limits(outbox_soft=20, outbox_hard=60))
    maker = floor.logged_in(ALICE_KEY, T0)
    reader = floor.session(T0)
    reader.drain()
    floor.send(reader, {"op": "subscribe", "id": 1, "channel": "book", "symbols": [SPOT],
                        "depth": 25}, T0)
    longest = 0
    for n in range(100):
        place(floor, maker, f"m{n}", price=f"2.{200 + n:03d}")
        longest = max(longest, len(reader.outbox))
    assert longest <= 21
    assert reader.close_reason is None
    queued = decode(reader.drain())
    view = floor.gateway.books[SPOT].view(25)
    assert view.seq >= 100
    book = [m for m in queued if m.get("channel") == "book"]
    assert book[0]["type"] == "snapshot" and book[0]["seq"] <= view.seq
    assert [m["seq"] for m in book[1:]] == list(range(book[0]["seq"] + 1, view.seq + 1))
    # a reader that applies what it got ends with the engine's book
    levels = dict(book[0]["bids"])
    for update in book[1:]:
        assert update["type"] == "update" and update["prev_seq"] == update["seq"] - 1
        levels.update(update["bids"])
    shown = {p: q for p, q in levels.items() if q != "0"}
    engine = floor.exchange.markets[SPOT].book.depth(Side.BUY, 25)
    assert shown == {f"{p // 1000}.{p % 1000:03d}": str(q) for p, q in engine}
    assert len(shown) == 25
    floor.close()


def test_conflation_leaves_one_snapshot_at_the_current_seq(tmp_path: Path) -> None:
    floor = limited_floor(tmp_path, Limits(outbox_soft=5, outbox_hard=1000))
    maker = floor.logged_in(ALICE_KEY, T0)
    reader = floor.session(T0)
    reader.drain()
    floor.send(reader, {"op": "subscribe", "id": 1, "channel": "book", "symbols": [SPOT]}, T0)
    floor.send(reader, {"op": "ping", "id": 2}, T0)
    reader.receive('{"op": "ping", "id": 3}', T0)  # queued, not drained: must survive
    for n in range(5):  # the fifth update overflows: pong + 5 updates > 5
        place(floor, maker, f"m{n}", price=f"2.{300 + n:03d}")
    queued = decode(p for _, p in reader.outbox)
    assert [m["type"] for m in queued] == ["pong", "snapshot"]
    snapshot = queued[1]
    assert snapshot["seq"] == floor.gateway.books[SPOT].view(10).seq == 5
    assert [p for p, _ in snapshot["bids"]] == [f"2.{300 + n:03d}" for n in range(4, -1, -1)]
    place(floor, maker, "m5", price="2.305")
    update = decode(p for _, p in reader.outbox)[-1]
    assert (update["type"], update["prev_seq"], update["seq"]) == ("update", 5, 6)
    assert update["bids"] == [["2.305", "1"]]
    floor.close()


def test_a_hopeless_reader_is_closed_and_memory_stays_bounded(tmp_path: Path) -> None:
    floor = limited_floor(tmp_path, Limits(outbox_soft=10, outbox_hard=30))
    floor.capacity(BOB)
    maker = floor.logged_in(ALICE_KEY, T0)
    taker = floor.logged_in(BOB_KEY, T0)
    reader = floor.session(T0)
    reader.drain()
    floor.send(reader, {"op": "subscribe", "id": 1, "channel": "trades", "symbols": [SPOT]}, T0)
    floor.send(reader, {"op": "subscribe", "id": 2, "channel": "book", "symbols": [SPOT]}, T0)
    healthy = floor.session(T0)
    floor.send(healthy, {"op": "subscribe", "id": 1, "channel": "trades", "symbols": [SPOT]},
               T0)
    longest = 0
    for n in range(40):
        place(floor, maker, f"m{n}", price="2.500")
        floor.send(taker, place_request(f"t{n}", side="sell", price="2.500", tif="ioc",
                                        request_id=n), T0)
        longest = max(longest, len(reader.outbox))
        assert len(healthy.drain()) >= 1
    assert longest <= 31
    assert reader.close_reason == (CLOSE_TRY_AGAIN, "slow consumer: too many messages queued")
    [last] = decode(p for _, p in reader.outbox)  # the queue is dropped: it would never be read
    assert (last["type"], last["code"]) == ("error", "closing")
    reader.closed()
    assert reader not in floor.gateway.sessions
    assert all(reader not in s for s in floor.gateway.trade_subscribers.values())
    floor.close()
