"""A trader client that keeps no books still notices a gap in a book's ``seq`` and resyncs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.api import BookMessage
from gateway.client import TraderClient
from tests.ws_helpers import SPOT, Floor, serving


def test_a_seq_only_client_resyncs_on_a_gap(tmp_path: Path) -> None:
    floor = Floor(tmp_path)

    async def main() -> None:
        async with serving(floor) as server:
            books: list[BookMessage] = []
            client = TraderClient(on_message=lambda m: books.append(m)
                                  if isinstance(m, BookMessage) else None, keep_books=False)
            await client.connect(f"ws://127.0.0.1:{server.port}/")
            await client.subscribe("book", [SPOT])
            while not books:
                await asyncio.sleep(0.01)
            assert not client.books  # no local book, no checksum work
            snapshot = books[-1]
            client.handle_frame(json.dumps({  # an update that skips one seq
                "channel": "book", "type": "update", "symbol": SPOT,
                "seq": snapshot.seq + 2, "prev_seq": snapshot.seq + 1, "ts": "1",
                "bids": [], "asks": [], "checksum": 0}))
            assert (client.gaps, client.resyncs) == (1, 1)
            while books[-1].type != "snapshot" or len(books) < 3:
                await asyncio.sleep(0.01)  # the server answers the resync with a snapshot
            await client.close()

    try:
        asyncio.run(main())
    finally:
        floor.close()
