"""ExecutionReports for orders the FIX connection did not place itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fix_helpers import FixLink, fix_acceptor, of_type
from tests.ws_helpers import ALICE, ALICE_KEY, BOB, BOB_KEY, NS, Floor, place_request, reply_to

T0 = 1_796_000_000 * NS
FUTURE = "GPU.H100.F2701"


@pytest.fixture
def floor(tmp_path: Path) -> Iterator[Floor]:
    floor = Floor(tmp_path)
    floor.fund(ALICE, BOB)
    yield floor
    floor.close()


def test_fills_of_an_order_placed_over_websocket_are_counted_once(floor: Floor) -> None:
    web = floor.logged_in(ALICE_KEY, T0)
    placed = reply_to(floor.send(web, place_request("w1", qty="3", symbol=FUTURE), T0), 1)
    order_id = str(placed["order"]["order_id"])
    mm = FixLink(floor, fix_acceptor(floor), ALICE_KEY, T0)  # logs on after the order
    bob = floor.logged_in(BOB_KEY, T0)
    floor.send(bob, place_request("b1", side="sell", qty="1", symbol=FUTURE), T0)
    [partial] = of_type(mm.received(), "8")
    assert (partial.get(37), partial.get(150), partial.get(14), partial.get(151)) == \
        (order_id, "F", "1", "2")
    floor.send(bob, place_request("b2", side="sell", qty="2", symbol=FUTURE), T0)
    [full] = of_type(mm.received(), "8")  # reported though the fill ends the order
    assert (full.get(150), full.get(39), full.get(14), full.get(151)) == ("F", "2", "3", "0")
