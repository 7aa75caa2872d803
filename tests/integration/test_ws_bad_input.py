"""Bad input over real websockets: the server answers or closes cleanly, keeps serving the
others, and loses nothing that was acknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from gateway.hub import Limits
from gateway.rate_limit import RateLimit
from gateway.server import ExchangeServer
from tests.ws_helpers import (
    ALICE,
    ALICE_KEY,
    BOB,
    BOB_KEY,
    CAROL,
    CAROL_KEY,
    SPOT,
    Floor,
    WsClient,
    journaled_orders,
    place_request,
    serving,
    settle,
)

Scenario = Callable[[Floor, ExchangeServer], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario, limits: Limits | None = None) -> Floor:
    """Run ``scenario`` against a fresh server with Alice, Bob and Carol funded; return the
    floor (its journal closed) for checks after the server stopped."""
    floor = Floor(tmp_path, limits)

    async def main() -> None:
        async with asyncio.timeout(60), serving(floor) as server:
            floor.fund(ALICE, BOB, CAROL)
            for account in (ALICE, BOB, CAROL):
                floor.capacity(account)
            await settle(server)
            await scenario(floor, server)

    try:
        asyncio.run(main())
    finally:
        floor.close()
    return floor


async def placed(client: WsClient, cl_ord_id: str, **fields: str) -> int:
    """Place an order that must be accepted; return its order id."""
    reply = await client.request(place_request(cl_ord_id, request_id=cl_ord_id, **fields))
    assert reply["type"] == "order", reply
    order_id: int = reply["order"]["order_id"]
    return order_id


async def trading_goes_on(bob: WsClient, tag: str) -> None:
    """Bob can still place and cancel."""
    await placed(bob, f"{tag}-live", price="2.200")
    await placed(bob, f"{tag}-gone", price="2.150")
    reply = await bob.request({"op": "cancel", "cl_ord_id": f"{tag}-gone"})
    assert reply["type"] == "order" and reply["order"]["status"] == "cancelled"


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until ``condition`` holds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


BAD: list[tuple[str | bytes, str, int | str | None]] = [
    ('{"op": "place", ', "invalid_request", None),
    ("[1, 2, 3]", "invalid_request", None),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "invalid_request", None),
    ('{"op": "teleport", "id": "t1"}', "invalid_request", "t1"),
    ('{"op": "ping", "id": "t2", "verbose": true}', "invalid_request", "t2"),
    (json.dumps(place_request("w1", request_id="t3") | {"qty": 5}), "invalid_request", "t3"),
    (json.dumps(place_request("w1", request_id="t4") | {"price": {"px": "2.4"}}),
     "invalid_request", "t4"),
    ('{"op": "place", "id": "t5", "symbol": "GPU.H100.SPOT"}', "invalid_request", "t5"),
    (json.dumps(place_request("w1", request_id="t6", qty="-3")), "non_positive_quantity",
     "t6"),
    (json.dumps(place_request("w1", request_id="t7", price="2.4001")), "off_tick", "t7"),
    (json.dumps(place_request("w1", request_id="t8", price="2.900")), "price_out_of_band",
     "t8"),
    (json.dumps(place_request("w1", request_id="t9", symbol="GPU.A100.SPOT")),
     "unknown_symbol", "t9"),
    ('{"op": "cancel", "id": ' + "7" * 60 + ', "order_id": ' + "9" * 60 + "}",
     "unknown_order", int("7" * 60)),
    (json.dumps(place_request("c" * 40, request_id="t10")), "invalid_request", "t10"),
    (json.dumps(place_request("bad/id", request_id="t11")), "invalid_request", "t11"),
]


def test_bad_frames_get_errors_and_trading_goes_on(tmp_path: Path) -> None:
    async def scenario(floor: Floor, server: ExchangeServer) -> None:
        async with WsClient.connect(server.port) as alice, \
                WsClient.connect(server.port) as bob:
            await alice.login(ALICE_KEY)
            await bob.login(BOB_KEY)
            await bob.request({"op": "subscribe", "channel": "book", "symbols": [SPOT]})
            kept = await placed(alice, "keep")
            for frame, code, request_id in BAD:
                answer = await alice.request(frame, request_id)
                assert (answer["type"], answer["code"]) == ("error", code), (frame, answer)
            assert await alice.request({"op": "ping"}) != {}
            after = await placed(alice, "after", price="2.450")
            update = await bob.until(lambda m: m.get("type") == "update"
                                     and ["2.450", "1"] in m["bids"])
            assert update["prev_seq"] == update["seq"] - 1
            await trading_goes_on(bob, "b")
            assert floor.live_orders(ALICE) == {"keep": kept, "after": after}

    floor = run(tmp_path, scenario)
    assert [o.client_order_id for o in journaled_orders(floor.data_dir)
            if o.account == ALICE] == ["keep", "w1", "after"]  # w1: the out-of-band refusal


def test_an_oversized_frame_closes_with_1009_and_others_go_on(tmp_path: Path) -> None:
    async def scenario(floor: Floor, server: ExchangeServer) -> None:
        async with WsClient.connect(server.port) as alice, \
                WsClient.connect(server.port) as bob:
            await alice.login(ALICE_KEY)
            await bob.login(BOB_KEY)
            kept = await placed(alice, "keep")
            await alice.ws.send('{"op": "ping", "id": "' + "x" * (64 * 1024) + '"}')
            with pytest.raises(ConnectionClosed):
                await alice.next()
            assert alice.ws.close_code == 1009
            await trading_goes_on(bob, "b")
            assert floor.live_orders(ALICE) == {"keep": kept}
        async with WsClient.connect(server.port) as again:
            await again.login(ALICE_KEY)
            assert await again.request({"op": "ping"}) != {}

    run(tmp_path, scenario)


def test_a_flood_is_rate_limited_then_closed_with_1008(tmp_path: Path) -> None:
    limits = Limits(messages_per_connection=RateLimit(20, 5),
                    orders_per_account=RateLimit(20, 5), abuse_strikes=10)

    async def scenario(floor: Floor, server: ExchangeServer) -> None:
        async with WsClient.connect(server.port) as alice, \
                WsClient.connect(server.port) as alice2, \
                WsClient.connect(server.port) as bob:
            await alice.login(ALICE_KEY)
            await alice2.login(ALICE_KEY)
            await bob.login(BOB_KEY)
            # the account limit: two connections share five orders
            for n in range(4):
                await alice2.ws.send(json.dumps(place_request(f"a{n}", request_id=n,
                                                              price=f"2.{300 + n}")))
            answers = [await alice2.until(lambda m: "id" in m) for _ in range(4)]
            assert [(a["id"], a["type"]) for a in answers] == [(n, "order") for n in range(4)]
            early = await alice.request(place_request("x", request_id="x", price="2.200"))
            late = await alice.request(place_request("y", request_id="y", price="2.210"))
            assert [early["type"], late.get("code")] == ["order", "rate_limited"]
            # the connection limit, then the close
            for n in range(40):
                await alice.ws.send(json.dumps({"op": "ping", "id": n}))
            codes = []
            with pytest.raises(ConnectionClosed):
                while True:
                    message = await alice.next()
                    codes.append(message.get("code", message["type"]))
            assert alice.ws.close_code == 1008
            assert "pong" in codes and "rate_limited" in codes
            assert codes[-1] == "closing"
            await trading_goes_on(bob, "b")
            assert sorted(floor.live_orders(ALICE)) == ["a0", "a1", "a2", "a3", "x"]

    run(tmp_path, scenario, limits)


async def raw_handshake(port: int) -> socket.socket:
    """A TCP socket that completed a websocket upgrade (nothing read beyond the response)."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += await asyncio.to_thread(sock.recv, 4096)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def test_clients_vanishing_mid_stream(tmp_path: Path) -> None:
    async def scenario(floor: Floor, server: ExchangeServer) -> None:
        async with WsClient.connect(server.port) as bob:
            await bob.login(BOB_KEY)
            # a connection that asked for cancel-on-disconnect, and one that did not
            async with WsClient.connect(server.port) as careful, \
                    WsClient.connect(server.port) as careless:
                await careful.login(ALICE_KEY, cancel_on_disconnect=True)
                await careless.login(CAROL_KEY)
                await placed(careful, "c1")
                await placed(careful, "c2", price="2.410")
                kept = await placed(careless, "k1", price="2.420")
                before = len(server.connections)
                careful.ws.transport.abort()  # no close frame: the socket just goes
                careless.ws.transport.abort()
                await trading_goes_on(bob, "b1")
                await wait_for(lambda: len(server.connections) == before - 2)
                await wait_for(lambda: floor.live_orders(ALICE) == {})
                assert floor.live_orders(CAROL) == {"k1": kept}
            # half a frame, then the socket closes
            sock = await raw_handshake(server.port)
            frame = json.dumps(place_request("half")).encode()
            mask = os.urandom(4)
            header = struct.pack("!BBH", 0x81, 0x80 | 126, len(frame)) + mask
            body = bytes(b ^ mask[i % 4] for i, b in enumerate(frame))
            sock.sendall(header + body[: len(body) // 2])
            await asyncio.sleep(0.05)
            sock.close()
            # a frame header promising more than the server accepts
            sock = await raw_handshake(server.port)
            sock.sendall(struct.pack("!BBQ", 0x81, 0x80 | 127, 1 << 40) + mask + b"{")
            await asyncio.sleep(0.05)
            sock.close()
            await trading_goes_on(bob, "b2")
            await wait_for(lambda: len(server.connections) == 1)
            assert sorted(floor.live_orders(BOB)) == ["b1-live", "b2-live"]
            assert server.status()["connections"] == 1

    floor = run(tmp_path, scenario)
    assert "half" not in [o.client_order_id for o in journaled_orders(floor.data_dir)]


def test_cancel_all_after_fires_when_the_client_is_gone(tmp_path: Path) -> None:
    async def scenario(floor: Floor, server: ExchangeServer) -> None:
        async with WsClient.connect(server.port) as bob, \
                WsClient.connect(server.port) as alice:
            await bob.login(BOB_KEY)
            await alice.login(ALICE_KEY)
            await placed(alice, "a1")
            await placed(alice, "a2", price="2.300")
            await placed(bob, "b1", price="2.200")
            armed = await alice.request({"op": "cancel_all_after", "timeout_ms": 300})
            assert armed["trigger_ts"]
            alice.ws.transport.abort()
            await asyncio.sleep(0.1)
            assert sorted(floor.live_orders(ALICE)) == ["a1", "a2"]  # not yet due
            await wait_for(lambda: floor.live_orders(ALICE) == {}, timeout=3)
            assert sorted(floor.live_orders(BOB)) == ["b1"]
            assert await bob.request({"op": "ping"}) != {}

    run(tmp_path, scenario)
