"""A market maker's FIX session across a restart of `cmx serve` (kill -9 and Ctrl-C).

Between the client and the exchange sits a TCP relay that can hold back what the exchange
sends and then drop it with the connection: the ExecutionReports the exchange wrote before it
died but the client never read. After the restart on the same data directory and FIX port,
the client reconnects by itself, both sides continue their sequence numbers, the held-back
reports come again by resend (PossDup), orders the client entered while the exchange was down
reach it by resend too, and every order's New report arrives exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest

from engine.commands import CreditDeposit
from engine.journal import FsyncPolicy
from gateway.auth import address_of
from gateway.fix_client import FixClient
from gateway.fix_codec import FixMessage
from gateway.serve import open_sequencer
from tests.integration.test_serve import KEY, LISTING, SYMBOL, ServeProcess, free_port


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory whose journal holds a deposit for KEY's account."""
    directory = tmp_path / "data"
    sequencer = open_sequencer(directory, fsync=FsyncPolicy.ALWAYS, listing_date=LISTING)
    sequencer.submit(CreditDeposit(1, address_of(KEY), 1_000_000_000_000))
    sequencer.sync()
    sequencer.journal.close()
    return directory


class Relay:
    """Forwards TCP connections on ``port`` to ``upstream_port``; ``hold`` keeps what the
    upstream sends instead of forwarding it, ``cut`` drops every connection and what is
    held."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.holding = False
        self.held = bytearray()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()

    def held_reports(self) -> int:
        return self.held.count(b"\x0135=8\x01")

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        self.held.clear()
        self.holding = False

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1",
                                                                 self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer, downstream=False),
                             self._pipe(up_reader, writer, downstream=True),
                             return_exceptions=True)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *,
                    downstream: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if downstream and self.holding:
                    self.held += data
                else:
                    sink.write(data)
        sink.transport.abort()


async def until(condition: object, timeout_s: float = 20.0) -> None:
    """Wait until ``condition()`` holds."""
    assert callable(condition)
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


def new_reports(messages: list[FixMessage]) -> list[FixMessage]:
    return [m for m in messages if m.msg_type == "8" and m.get(150) == "0"]


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGINT],
                         ids=["kill-9", "ctrl-c"])
def test_the_session_survives_a_restart(data_dir: Path, tmp_path: Path,
                                        stop_signal: signal.Signals) -> None:
    fix_port = free_port()

    def serve() -> ServeProcess:
        return ServeProcess(data_dir, "--fix-port", str(fix_port))

    async def main() -> None:
        server = await asyncio.to_thread(serve)
        relay = Relay(fix_port)
        await relay.start()
        received: list[FixMessage] = []
        client = FixClient("127.0.0.1", relay.port, KEY, sender_comp_id="MM1",
                           store_dir=tmp_path / "client-store", on_message=received.append,
                           backoff_s=(0.05, 0.5))
        try:
            await client.start(timeout_s=30)

            def place(count: int, start: int) -> list[str]:
                return [client.new_order(SYMBOL, "buy", "1", f"2.{300 + 5 * i}")
                        for i in range(start, start + count)]

            first = place(5, 0)
            await until(lambda: len(new_reports(received)) == 5)

            relay.holding = True  # what the exchange sends next never reaches the client
            unread = place(5, 5)
            await until(lambda: relay.held_reports() == 5)
            sender_before = client.store.next_sender_seq()
            target_before = client.store.next_target_seq()

            os.kill(server.proc.pid, stop_signal)
            assert await asyncio.to_thread(server.proc.wait, 30) == (
                -signal.SIGKILL if stop_signal is signal.SIGKILL else 0)
            relay.cut()
            await until(lambda: not client.logged_on)
            while_down = place(2, 10)  # stored; they reach the exchange by resend

            server = await asyncio.to_thread(serve)
            await until(lambda: client.logons == 2, 30)
            everything = first + unread + while_down
            await until(lambda: {m.get(11) for m in new_reports(received)} >= set(everything))
            await asyncio.sleep(0.5)  # a duplicate would arrive in this time

            reports = new_reports(received)
            assert sorted(m.get(11) or "" for m in reports) == sorted(everything)
            assert {m.get(11) for m in reports if m.get(43) == "Y"} == set(unread)
            assert len({m.get(37) for m in reports}) == len(everything)
            # numbers continued on both sides: nothing was reset
            assert client.store.next_sender_seq() > sender_before + len(while_down)
            assert client.store.next_target_seq() > target_before + len(unread)
            assert not [m for m in received if m.msg_type in ("3", "j")]
            seqs = [int(m.get(34) or 0) for m in received]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

            client.mass_cancel(SYMBOL)
            await until(lambda: any(m.msg_type == "r" for m in received))
            report = next(m for m in received if m.msg_type == "r")
            assert report.get(533) == str(len(everything))
        finally:
            await client.close()
            await relay.stop()
            if server.proc.poll() is None:
                server.stop()

    asyncio.run(main())
