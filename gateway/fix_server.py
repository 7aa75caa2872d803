"""The FIX acceptor's asyncio server: bytes between TCP connections and `FixConnection`s.

It carries out the session's actions (write, disconnect) and drives its timers. Order matters
after each read: first the journal takes the commands the input caused (``commit``: handed to
the OS at once, fsynced by the journal's policy), then the session store records the inbound
sequence numbers, then replies are written. A crash can thus never leave the store claiming a
message whose order the journal lacks (the client would not resend it). ExecutionReports go
out once their commands are durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from gateway.fix_app import FixAcceptor, FixConnection
from gateway.fix_session import Action, Disconnect, Send

log = logging.getLogger(__name__)

TIMER_S = 0.2
READ_SIZE = 64 * 1024


class FixServer:
    """Listens on ``host``:``port`` for FIX initiators (``port`` 0 picks a free one)."""

    def __init__(self, acceptor: FixAcceptor, commit: Callable[[], None], *,
                 host: str = "127.0.0.1", port: int = 9878,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.acceptor = acceptor
        self.commit = commit
        self.host = host
        self.port = port
        self.clock = clock
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        closed = asyncio.Event()

        def carry(actions: list[Action]) -> None:
            connection.session.commit()  # the store before the bytes it covers
            for action in actions:
                if isinstance(action, Send) and not closed.is_set() and not writer.is_closing():
                    writer.write(action.data)
                elif isinstance(action, Disconnect):
                    closed.set()
                    writer.close()

        connection = FixConnection(self.acceptor, carry, self.clock())
        timer = asyncio.create_task(self._timer(connection, carry, closed))
        try:
            carry(connection.connection_made(self.clock()))
            while not closed.is_set():
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                actions = connection.on_bytes(data, self.clock())
                self.commit()
                carry(actions)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            timer.cancel()
            closed.set()
            actions = connection.connection_lost(self.clock())
            self.commit()
            carry(actions)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def _timer(self, connection: FixConnection, carry: Callable[[list[Action]], None],
                     closed: asyncio.Event) -> None:
        while not closed.is_set():
            await asyncio.sleep(TIMER_S)
            carry(connection.on_timer(self.clock()))
