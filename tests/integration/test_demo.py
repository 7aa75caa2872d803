"""The demo market behind a real server: a websocket client sees a live, verifiable book."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import suppress
from decimal import Decimal
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from engine.events import CommandRejected, OrderRejected
from engine.exchange import Exchange
from engine.sequencer import decode_sequenced
from gateway.checksum import book_checksum
from gateway.demo import dev_accounts, run_demo
from gateway.hub import Gateway
from gateway.local_book import BookStatus, LocalBook
from gateway.serve import open_sequencer
from gateway.server import ExchangeServer

SYMBOL = "GPU.H100.SPOT"
DEADLINE_S = 30.0


async def watch(port: int) -> dict[str, Any]:
    """Subscribe to the book and trades of `SYMBOL` and follow them until the book has been
    two-sided and a trade has printed; every book message is checked against a local book."""
    book = LocalBook(SYMBOL, depth=10)
    seen: dict[str, Any] = {"updates": 0, "trades": [], "two_sided": 0, "snapshot": None}
    async with connect(f"ws://127.0.0.1:{port}/") as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "channel": "book",
                                  "symbols": [SYMBOL], "depth": 10}))
        await ws.send(json.dumps({"op": "subscribe", "id": 2, "channel": "trades",
                                  "symbols": [SYMBOL]}))
        deadline = time.monotonic() + DEADLINE_S
        while not (seen["trades"] and seen["two_sided"] >= 5 and seen["updates"] >= 20):
            timeout = deadline - time.monotonic()
            assert timeout > 0, f"no live market within {DEADLINE_S} s: {seen}"
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
            if message.get("type") == "error":
                raise AssertionError(message)
            channel, kind = message.get("channel"), message.get("type")
            if channel == "book" and kind in ("snapshot", "update"):
                assert message["symbol"] == SYMBOL
                assert book.apply(message) == BookStatus.APPLIED, message
                assert message["checksum"] == book_checksum(book.bids(), book.asks())
                if kind == "snapshot":
                    seen["snapshot"] = message
                else:
                    seen["updates"] += 1
                bid, ask = book.best_bid(), book.best_ask()
                if bid is not None and ask is not None:
                    assert Decimal(bid[0]) < Decimal(ask[0])
                    seen["two_sided"] += 1
            elif channel == "trades" and kind == "update":
                seen["trades"].extend(message["trades"])
    return seen


def check_journal(gateway: Gateway) -> None:
    """Replay what the demo journaled on a fresh exchange: nothing refused, same state."""
    live = gateway.exchange
    replayed = Exchange(sorted((m.instrument for m in live.markets.values()),
                               key=lambda i: i.instrument_id))
    refused: list[OrderRejected | CommandRejected] = []
    for _, record in gateway.sequencer.journal.read(1):
        events = replayed.apply(decode_sequenced(record))
        refused.extend(e for e in events if isinstance(e, OrderRejected | CommandRejected))
    assert replayed.last_seq == live.last_seq > 500
    assert replayed.state_hash() == live.state_hash()
    assert refused == []
    assert all(live.ledger.accounts[a].total() > 0 for a in dev_accounts())
    assert live.ledger.conserved()


def test_demo_market_is_live_over_the_websocket_api(tmp_path: Path) -> None:
    async def main() -> dict[str, Any]:
        sequencer = open_sequencer(tmp_path)
        gateway = Gateway(sequencer)
        server = ExchangeServer(gateway, port=0)
        await server.start()
        demo = asyncio.create_task(run_demo(gateway, server.pump, interval_s=0.02))
        try:
            return await watch(server.port)
        finally:
            demo.cancel()
            with suppress(asyncio.CancelledError):
                await demo
            await server.stop()
            try:
                check_journal(gateway)
            finally:
                sequencer.journal.close()

    seen = asyncio.run(main())
    assert seen["snapshot"] is not None
    assert seen["updates"] >= 20
    for trade in seen["trades"]:
        assert Decimal("2.125") <= Decimal(trade["price"]) <= Decimal("2.875")  # the band
        assert int(trade["qty"]) >= 1
