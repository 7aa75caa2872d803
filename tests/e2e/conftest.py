"""End-to-end fixtures: an exchange served from a background thread, traders that reach it
over the websocket API, and Debian's headless Chromium driven by Playwright."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Playwright,
    ViewportSize,
    sync_playwright,
)
from websockets.sync.client import ClientConnection, connect

from engine.commands import CreditDeposit, SetCapacity
from engine.messages import Side
from gateway.auth import address_of, login_text, sign_text
from gateway.hub import Gateway
from gateway.serve import open_sequencer
from gateway.server import ExchangeServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
BUYER_KEY = "0x" + "11" * 32
SELLER_KEY = "0x" + "22" * 32
FUNDS = 1_000_000 * 1_000_000  # one million USDC, in micro-USDC
CAPACITY = 10_000
REPLY_TIMEOUT_S = 10.0
WAIT_S = 10.0
"""How long a page test waits for the page to show something."""
VIEWPORT: ViewportSize = {"width": 1440, "height": 960}

T = TypeVar("T")
Ladder = tuple[list[tuple[str, str]], list[tuple[str, str]]]


class ServedExchange:
    """A `Gateway` and `ExchangeServer` on port 0, run by an asyncio loop in its own thread.

    Everything that touches the exchange goes through `call`, so it runs on that loop."""

    def __init__(self, data_dir: Path) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.sequencer = open_sequencer(data_dir)
        self.gateway = Gateway(self.sequencer)
        self.server = ExchangeServer(self.gateway, port=0)
        self.run(self.server.start())
        self.url = f"http://127.0.0.1:{self.server.port}/"
        self.ws_url = f"ws://127.0.0.1:{self.server.port}/"

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(REPLY_TIMEOUT_S)

    def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the server's loop and return its result."""
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(function())
            except BaseException as exc:  # handed back to the caller's thread
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(REPLY_TIMEOUT_S)

    def submit(self, command: Any) -> None:
        """Sequence an operator command (a deposit, a capacity) and commit it."""

        def run() -> None:
            self.gateway.submit(command)
            self.server.pump()

        self.call(run)

    def ladder(self, symbol: str, levels: int) -> Ladder:
        """The engine's top ``levels`` bids and asks of ``symbol`` as the API formats them."""

        def read() -> Ladder:
            market = self.gateway.exchange.markets[symbol]
            spec = market.instrument
            return tuple(  # type: ignore[return-value]
                [(spec.ticks_to_price(p), spec.lots_to_qty(q))
                 for p, q in market.book.depth(side, levels)]
                for side in (Side.BUY, Side.SELL))

        return self.call(read)

    def drop_connections(self) -> None:
        """Close every client connection from the server's side, as a restart would."""

        async def drop() -> None:
            await asyncio.gather(*(c.close() for c in list(self.server.connections)))

        self.run(drop())

    def close(self) -> None:
        """Stop the server, close the journal and end the loop's thread."""
        self.run(self.server.stop())
        self.sequencer.journal.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(REPLY_TIMEOUT_S)
        self._loop.close()


class Trader:
    """One logged-in websocket connection that places orders and waits for their replies."""

    def __init__(self, socket: ClientConnection, key: str) -> None:
        self.account = address_of(key)
        self._socket = socket
        self._next_id = 0
        welcome = json.loads(self._socket.recv(REPLY_TIMEOUT_S))
        nonce = welcome["nonce"]
        reply = self.request({"op": "login", "account": self.account, "nonce": nonce,
                              "signature": sign_text(key, login_text(self.account, nonce))})
        assert reply["type"] == "logged_in", reply

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a request and return the reply that echoes its id."""
        self._next_id += 1
        self._socket.send(json.dumps({**message, "id": self._next_id}))
        while True:
            reply: dict[str, Any] = json.loads(self._socket.recv(REPLY_TIMEOUT_S))
            if reply.get("id") == self._next_id:
                return reply

    def place(self, side: str, price: str, qty: str, symbol: str = "GPU.H100.SPOT") -> \
            dict[str, Any]:
        """A GTC limit order; returns the order as the exchange accepted it."""
        reply = self.request({"op": "place", "symbol": symbol, "side": side, "price": price,
                              "qty": qty, "cl_ord_id": f"e2e-{self._next_id + 1}"})
        assert reply["type"] == "order", reply
        assert reply["order"]["status"] in ("new", "partially_filled", "filled"), reply
        order: dict[str, Any] = reply["order"]
        return order


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[ServedExchange]:
    """A fresh exchange with a funded buyer and a funded seller that has H100 capacity."""
    served = ServedExchange(tmp_path / "data")
    try:
        for deposit_id, key in enumerate((BUYER_KEY, SELLER_KEY), start=1):
            served.submit(CreditDeposit(deposit_id, address_of(key), FUNDS))
        served.submit(SetCapacity(address_of(SELLER_KEY), "GPU.H100", CAPACITY))
        yield served
    finally:
        served.close()


@pytest.fixture
def traders(exchange: ServedExchange) -> Iterator[tuple[Trader, Trader]]:
    """The buyer and the seller, logged in."""
    with connect(exchange.ws_url) as buyer, connect(exchange.ws_url) as seller:
        yield Trader(buyer, BUYER_KEY), Trader(seller, SELLER_KEY)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    """Playwright's driver (it drives the system's Chromium; no browser download). Module
    scope: while it is open its event loop runs in this thread, which would make every later
    test module's ``asyncio.run`` fail."""
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's Chromium, headless; its absence fails the tests rather than skipping them."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install chromium (./dev test does)"
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


def wait_for(what: str, check: Callable[[], object], expected: object) -> None:
    """Poll ``check`` until it returns ``expected``; fail naming what was last seen."""
    deadline = time.monotonic() + WAIT_S
    seen = check()
    while seen != expected:
        assert time.monotonic() < deadline, f"{what}: expected {expected!r}, page shows {seen!r}"
        time.sleep(0.05)
        seen = check()


PageOpener = Callable[..., Page]
"""``open_page()`` (``open_page(allow_404=True)`` where a test expects a 404 to be logged)."""


@pytest.fixture
def open_page(browser: Browser, exchange: ServedExchange) -> Iterator[PageOpener]:
    """Opens the exchange's market page in a new tab; the test fails if a page reported a
    script error or logged one to the console (but a 404, for a test that expects one)."""
    pages: list[Page] = []
    errors: list[str] = []
    allowed: list[str] = []

    def record(message: ConsoleMessage) -> None:
        if message.type == "error" and not any(text in message.text for text in allowed):
            errors.append(message.text)

    def opener(*, allow_404: bool = False) -> Page:
        if allow_404:
            allowed.append("status of 404")
        page = browser.new_page(viewport=VIEWPORT)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", record)
        pages.append(page)
        page.goto(exchange.url)
        return page

    yield opener
    for page in pages:
        page.close()
    assert errors == []
