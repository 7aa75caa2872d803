"""The asyncio websocket server: a thin layer that moves frames between sockets and sessions.

One port serves both the websocket API (any path, on an Upgrade request) and, over plain HTTP,
the market page and its assets from ``gateway/static`` plus ``/api/status``. Other parts of
the process add JSON routes (``routes``) and websocket endpoints (``socket_routes``) by path.
After each burst of input the server asks the journal to commit; the sequencer's released
events go to `Gateway.publish` once the journal reports them durable, so nothing reaches a
client before its command is on disk.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from importlib.resources import files
from typing import Any

import msgspec
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from engine.journal import FileJournal
from gateway.hub import Gateway
from gateway.session import ClientSession

log = logging.getLogger(__name__)

MAX_FRAME = 64 * 1024
DIRECT_WRITE_LIMIT = 256 * 1024  # bytes waiting in a socket's buffer past which we queue
TICK_S = 0.1
STATIC = files("gateway") / "static"


class ExchangeServer:
    """Runs a `Gateway` behind websockets on ``host``:``port``."""

    def __init__(self, gateway: Gateway, *, host: str = "127.0.0.1", port: int = 8765,
                 clock: Callable[[], int] = time.time_ns,
                 status: Callable[[], dict[str, Any]] | None = None) -> None:
        self.gateway = gateway
        self.host = host
        self.port = port
        self.clock = clock
        self._status = status
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pump_due = False
        self._flush_due = False
        self._ticker: asyncio.Task[None] | None = None
        self.connections: set[ServerConnection] = set()
        self.routes: dict[str, Callable[[dict[str, str]], Any]] = {}
        """Extra JSON answers over HTTP GET, by path; the callable gets the query
        parameters and returns what to encode (None: 404)."""
        self.socket_routes: dict[str, Callable[[ServerConnection], Awaitable[None]]] = {}
        """Websocket endpoints other than the API, by path."""

    async def start(self) -> None:
        """Listen; ``port`` 0 picks a free one (read it back from ``port``)."""
        self._loop = asyncio.get_running_loop()
        journal = self.gateway.sequencer.journal
        if isinstance(journal, FileJournal):
            loop = self._loop

            def durable(_seq: int) -> None:
                loop.call_soon_threadsafe(self._release)

            journal.on_durable = durable
        self._server = await serve(self._connection, self.host, self.port,
                                   process_request=self._http, max_size=MAX_FRAME,
                                   max_queue=64, compression=None, ping_interval=20,
                                   ping_timeout=60, server_header="CMX")
        self.port = self._server.sockets[0].getsockname()[1] if self._server.sockets else \
            self.port
        self._ticker = asyncio.create_task(self._tick_loop())

    async def stop(self) -> None:
        """Stop accepting, close every connection, and release what is durable."""
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        journal = self.gateway.sequencer.journal
        if isinstance(journal, FileJournal):
            journal.on_durable = None
        self.gateway.publish(self.gateway.sequencer.sync())

    # --- data path ----------------------------------------------------------------------------

    def pump(self) -> None:
        """Commit the journal once the current burst of input is handled."""
        if not self._pump_due and self._loop is not None:
            self._pump_due = True
            self._loop.call_soon(self._commit)

    def commit(self) -> None:
        """Hand everything journaled to the OS now (fsynced by the journal's policy), and
        release what is durable."""
        self._commit()

    def _commit(self) -> None:
        self._pump_due = False
        journal = self.gateway.sequencer.journal
        if isinstance(journal, FileJournal):
            if not journal.commit_soon():
                return  # on_durable calls _release from the fsync thread's report
        else:
            journal.sync()
        self._release()

    def _release(self) -> None:
        gateway = self.gateway
        gateway.publish(gateway.sequencer.release())
        if gateway.dirty and not self._flush_due and self._loop is not None:
            self._flush_due = True
            self._loop.call_later(gateway.market_data_interval_ns / 1e9, self._flush)
        journal = self.gateway.sequencer.journal
        if journal.last_seq > journal.durable_seq:  # publishing submitted more (deferred
            self.pump()                              # cancels, cancel-on-disconnect)

    def _flush(self) -> None:
        self._flush_due = False
        self.gateway.flush_market_data()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = self.clock()
            self.gateway.tick(now)
            for session in list(self.gateway.sessions):
                if isinstance(session, ClientSession):
                    session.tick(now)
            self.pump()

    # --- connections --------------------------------------------------------------------------

    async def _connection(self, connection: ServerConnection) -> None:
        request = connection.request
        route = self.socket_routes.get(request.path.split("?", 1)[0]) if request else None
        if route is not None:
            await route(connection)
            return
        session = ClientSession(self.gateway, self.clock())
        wake = asyncio.Event()
        session.wakeup = wake.set
        session.direct = lambda payload: _write_now(connection, payload)
        wake.set()  # the welcome is already queued
        writer = asyncio.create_task(self._write(connection, session, wake))
        self.connections.add(connection)
        try:
            async for frame in connection:
                session.receive(frame, self.clock())
                self.pump()
                if session.close_reason is not None:
                    break
        except ConnectionClosed:
            pass
        finally:
            self.connections.discard(connection)
            session.closed()
            self.pump()
            if session.close_reason is None:
                writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _write(self, connection: ServerConnection, session: ClientSession,
                     wake: asyncio.Event) -> None:
        try:
            while True:
                await wake.wait()
                wake.clear()
                while (frame := session.pop()) is not None:
                    session.writing = True
                    await connection.send(frame)
                    session.writing = False
                if session.close_reason is not None:
                    code, reason = session.close_reason
                    await connection.close(code, reason)
                    return
        except ConnectionClosed:
            return

    # --- HTTP ---------------------------------------------------------------------------------

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        path = request.path.split("?", 1)[0]
        if path == "/api/status":
            body = msgspec.json.encode(self.status())
            return _response(HTTPStatus.OK, "application/json", body)
        route = self.routes.get(path)
        if route is not None:
            query = dict(urllib.parse.parse_qsl(request.path.partition("?")[2]))
            answer = route(query)
            if answer is None:
                return _response(HTTPStatus.NOT_FOUND, "application/json",
                                 b'{"error":"not found"}')
            return _response(HTTPStatus.OK, "application/json", msgspec.json.encode(answer))
        name = "index.html" if path in ("", "/") else path.lstrip("/")
        if "/" in name or name.startswith(".") or not (STATIC / name).is_file():
            return _response(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8",
                             b"not found\n")
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type == "application/javascript":
            content_type += "; charset=utf-8"
        return _response(HTTPStatus.OK, content_type, (STATIC / name).read_bytes())

    def status(self) -> dict[str, Any]:
        """What ``/api/status`` answers. ``routes`` lists the JSON paths other parts added:
        the page asks only for those it finds there (a 404 would show as a console error)."""
        exchange = self.gateway.exchange
        status: dict[str, Any] = {
            "last_seq": exchange.last_seq,
            "durable_seq": self.gateway.sequencer.journal.durable_seq,
            "connections": len(self.connections),
            "instruments": len(exchange.markets),
            "routes": sorted(self.routes),
        }
        if self._status is not None:
            status.update(self._status())
        return status


def _write_now(connection: ServerConnection, payload: str) -> bool:
    """Write a message without waiting, unless the socket is backed up (the session then
    queues it, and its outbox limits and conflation apply). One encoded message shared by
    many subscribers is thus written to each at the cost of framing it, with no task switch."""
    transport = connection.transport
    if connection.protocol.state is not State.OPEN or \
            transport.get_write_buffer_size() > DIRECT_WRITE_LIMIT:
        return False
    broadcast((connection,), payload)
    return True


def _response(status: HTTPStatus, content_type: str, body: bytes) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store"), ("Connection", "close")])
    return Response(status.value, status.phrase, headers, body)
