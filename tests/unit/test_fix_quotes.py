"""FIX quoting, sans-I/O: MassQuote i as post-only orders per QuoteEntryID acknowledged by
MassQuoteAcknowledgement b, replacement of earlier quotes, QuoteCancel Z; every message passes
the stock FIX44 dictionary."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from engine.commands import PlaceOrder
from engine.messages import Side
from gateway.fix_codec import Field, FixMessage
from gateway.rate_limit import RateLimit
from tests.fix_helpers import FixLink, fix_acceptor, of_type, stock_problem
from tests.ws_helpers import ALICE, ALICE_KEY, BOB, Floor

FUTURE = "GPU.H100.F2701"
OTHER = "GPU.H200.F2701"
Entry = tuple[str, str, str | None, str | None, str | None, str | None]
"""QuoteEntryID, Symbol, BidPx, OfferPx, BidSize, OfferSize."""
ACK_TAGS = (302, 295, 299, 55, 368)


@pytest.fixture
def floor(tmp_path: Path) -> Iterator[Floor]:
    floor = Floor(tmp_path / "data")
    floor.fund(ALICE, BOB)
    yield floor
    floor.close()


@pytest.fixture
def mm(floor: Floor) -> FixLink:
    return FixLink(floor, fix_acceptor(floor), ALICE_KEY, time.time_ns())


def mass_quote(quote_id: str, *sets: tuple[str, Sequence[Entry]],
               extra: Sequence[Field] = ()) -> list[Field]:
    """A MassQuote i body."""
    body: list[Field] = [(117, quote_id), *extra, (296, len(sets))]
    for set_id, entries in sets:
        body += [(302, set_id), (304, len(entries)), (295, len(entries))]
        for entry_id, symbol, bid, offer, bid_size, offer_size in entries:
            body += [(299, entry_id), (55, symbol)]
            body += [(tag, value) for tag, value in ((132, bid), (133, offer),
                                                     (134, bid_size), (135, offer_size))
                     if value is not None]
    return body


def ack(messages: Sequence[FixMessage]) -> FixMessage:
    [answer] = of_type(messages, "b")
    assert stock_problem(answer) is None, (stock_problem(answer), answer)
    return answer


def rejected_entries(answer: FixMessage) -> dict[str, str | None]:
    """QuoteEntryID -> QuoteEntryRejectReason of the entries the acknowledgement lists."""
    return {entry.get(299) or "": entry.get(368)
            for quote_set in answer.groups(296, ACK_TAGS)
            for entry in quote_set.groups(295, ACK_TAGS[2:])}


def quotes(floor: Floor) -> dict[str, tuple[str, int, int, int]]:
    """The account's live quote orders: client id -> (symbol, order id, price ticks, open
    lots)."""
    live = {o.order_id for o in floor.exchange.orders.values()}
    return {o.cl_ord_id: (o.symbol, o.order_id, o.price, o.remaining)
            for o in floor.gateway.tracker.orders.values()
            if o.account == ALICE and o.cl_ord_id.startswith("Q:") and o.order_id in live}


def ticks(floor: Floor, price: str, symbol: str = FUTURE) -> int:
    return floor.exchange.markets[symbol].instrument.price_to_ticks(price)


def test_entries_become_post_only_orders_and_are_acknowledged(floor: Floor,
                                                                mm: FixLink) -> None:
    answer = ack(mm.send("i", mass_quote("q1", ("s1", [
        ("h100", FUTURE, "2.450", "2.550", "3", "4"),
        ("h200", OTHER, "3.400", None, "2", None)]))))
    assert (answer.get(117), answer.get(297), answer.get(296)) == ("q1", "0", None)
    live = quotes(floor)
    assert {cl: (symbol, price, qty) for cl, (symbol, _, price, qty) in live.items()} == {
        "Q:h100:B": (FUTURE, ticks(floor, "2.450"), 3),
        "Q:h100:S": (FUTURE, ticks(floor, "2.550"), 4),
        "Q:h200:B": (OTHER, ticks(floor, "3.400", OTHER), 2)}
    orders = floor.exchange.orders
    assert all((placed := orders[order_id].placed) is not None and placed.post_only
               for _, order_id, _, _ in live.values())


def test_a_new_quote_for_an_entry_replaces_the_old_one(floor: Floor, mm: FixLink) -> None:
    ack(mm.send("i", mass_quote("q1", ("s", [("e1", FUTURE, "2.450", "2.550", "3", "3")]))))
    before = quotes(floor)
    answer = ack(mm.send("i", mass_quote("q2", ("s", [
        ("e1", FUTURE, "2.460", "2.550", "5", "1")]))))
    assert answer.get(297) == "0"
    after = quotes(floor)
    assert after["Q:e1:B"] == (FUTURE, before["Q:e1:B"][1], ticks(floor, "2.460"), 5)
    assert after["Q:e1:S"] == (FUTURE, before["Q:e1:S"][1], ticks(floor, "2.550"), 1)
    ack(mm.send("i", mass_quote("q3", ("s", [("e1", FUTURE, "2.460", "2.550", "0", "1")]))))
    assert quotes(floor).keys() == {"Q:e1:S"}
    ack(mm.send("i", mass_quote("q4", ("s", [("e1", FUTURE, None, None, None, None)]))))
    assert quotes(floor) == {}


def test_an_unchanged_quote_sends_nothing_to_the_engine(floor: Floor, mm: FixLink) -> None:
    body = mass_quote("q1", ("s", [("e1", FUTURE, "2.450", "2.550", "3", "3")]))
    ack(mm.send("i", body))
    seq = floor.exchange.last_seq
    assert ack(mm.send("i", body)).get(297) == "0"
    assert floor.exchange.last_seq == seq


def test_a_quote_moving_through_its_own_offer_moves_the_offer_first(floor: Floor,
                                                                      mm: FixLink) -> None:
    ack(mm.send("i", mass_quote("q1", ("s", [("e1", FUTURE, "2.450", "2.500", "1", "1")]))))
    answer = ack(mm.send("i", mass_quote("q2", ("s", [
        ("e1", FUTURE, "2.550", "2.600", "1", "1")]))))
    assert answer.get(297) == "0", answer
    assert {cl: price for cl, (_, _, price, _) in quotes(floor).items()} == {
        "Q:e1:B": ticks(floor, "2.550"), "Q:e1:S": ticks(floor, "2.600")}


def test_failed_entries_are_listed_with_their_reason(floor: Floor, mm: FixLink) -> None:
    answer = ack(mm.send("i", mass_quote("q1", ("s1", [
        ("good", FUTURE, "2.450", "2.550", "1", "1"),
        ("nosym", "NOPE", "2.450", "2.550", "1", "1")]), ("s2", [
        ("badpx", FUTURE, "2.4501", "2.550", "1", "1"),
        ("bad id!", FUTURE, "2.450", "2.550", "1", "1")]))))
    assert answer.get(297) == "0"
    assert rejected_entries(answer) == {"nosym": "1", "badpx": "8", "bad id!": "99"}
    assert answer.get(58)
    assert quotes(floor).keys() == {"Q:good:B", "Q:good:S"}  # nothing of "badpx" was sent
    listed = ack(mm.send("i", mass_quote("q2", ("s1", [
        ("good", FUTURE, "2.440", "2.550", "1", "1"),
        ("nosym", "NOPE", "2.450", "2.550", "1", "1")]), extra=[(301, "2")])))
    assert rejected_entries(listed) == {"good": None, "nosym": "1"}


def test_a_quote_the_engine_refuses_is_rejected(floor: Floor, mm: FixLink) -> None:
    floor.gateway.submit(PlaceOrder(BOB, FUTURE, Side.SELL, 5, ticks(floor, "2.500")))
    floor.pump()
    messages = mm.send("i", mass_quote("q1", ("s", [("e1", FUTURE, "2.500", None, "1", None)])))
    answer = ack(messages)
    assert (answer.get(297), rejected_entries(answer)) == ("5", {"e1": "8"})
    assert quotes(floor) == {}
    reports = [(m.get(11), m.get(150)) for m in of_type(messages, "8")]
    assert reports == [("Q:e1:B", "0"), ("Q:e1:B", "4")]  # accepted, then removed unmatched


def test_a_refused_update_takes_the_old_quote_down(floor: Floor, mm: FixLink) -> None:
    ack(mm.send("i", mass_quote("q1", ("s", [("e1", FUTURE, "2.450", None, "1", None)]))))
    floor.gateway.submit(PlaceOrder(BOB, FUTURE, Side.SELL, 5, ticks(floor, "2.500")))
    floor.pump()
    answer = ack(mm.send("i", mass_quote("q2", ("s", [
        ("e1", FUTURE, "2.505", None, "1", None)]))))
    assert (answer.get(297), rejected_entries(answer)) == ("5", {"e1": "8"})
    assert quotes(floor) == {}  # not left at 2.450
    assert floor.exchange.markets[FUTURE].book.depth(Side.BUY, 5) == []


def test_quote_cancel_by_symbol_and_all(floor: Floor, mm: FixLink) -> None:
    ack(mm.send("i", mass_quote("q1", ("s", [
        ("a", FUTURE, "2.450", "2.550", "1", "1"),
        ("b", OTHER, "3.400", "3.600", "1", "1")]))))
    mm.send("D", [(11, "plain"), (55, FUTURE), (54, "1"), (60, "20260101-00:00:00"),
                  (38, "1"), (40, "2"), (44, "2.400")])
    answer = ack(mm.send("Z", [(117, "c1"), (298, "1"), (295, 1), (55, FUTURE)]))
    assert (answer.get(117), answer.get(297)) == ("c1", "1")
    assert quotes(floor).keys() == {"Q:b:B", "Q:b:S"}
    assert floor.gateway.tracker.find(ALICE, None, "plain") is not None
    answer = ack(mm.send("Z", [(117, "c2"), (298, "4")]))
    assert answer.get(297) == "4"
    assert quotes(floor) == {}
    assert floor.gateway.tracker.find(ALICE, None, "plain") is not None
    assert ack(mm.send("Z", [(117, "c3"), (298, "4")])).get(297) == "4"  # nothing left


@pytest.mark.parametrize(("body", "reason"), [
    ([(117, "c"), (298, "2")], "99"),
    ([(117, "c"), (298, "1"), (295, 1), (55, "NOPE")], "1"),
    ([(117, "c"), (298, "1")], "1"),
])
def test_unsupported_quote_cancels_are_rejected(mm: FixLink, body: list[Field],
                                                reason: str) -> None:
    answer = ack(mm.send("Z", body))
    assert (answer.get(297), answer.get(300)) == ("5", reason)


def test_quotes_placed_in_the_same_batch_are_cancelled(floor: Floor, mm: FixLink) -> None:
    mm.send("i", mass_quote("q1", ("s", [("e1", FUTURE, "2.450", "2.550", "1", "1")])),
            pump=False)
    mm.send("Z", [(117, "c1"), (298, "4")], pump=False)
    floor.pump()
    answers = of_type(mm.received(), "b")
    assert [(a.get(117), a.get(297)) for a in answers] == [("q1", "0"), ("c1", "4")]
    assert quotes(floor) == {}


def test_missing_quote_id_gets_a_session_reject(mm: FixLink) -> None:
    body = mass_quote("q1", ("s", [("e1", FUTURE, "2.450", "2.550", "1", "1")]))[1:]
    [reject] = of_type(mm.send("i", body, admin=True), "3")
    assert (reject.get(371), reject.get(373), reject.get(372)) == ("117", "1", "i")


def test_quotes_go_with_cancel_on_disconnect(floor: Floor) -> None:
    mm = FixLink(floor, fix_acceptor(floor), ALICE_KEY, time.time_ns(), logon=[(8013, "Y")])
    ack(mm.send("i", mass_quote("q1", ("s", [("e1", FUTURE, "2.450", "2.550", "1", "1")]))))
    assert len(quotes(floor)) == 2
    mm.close()
    assert quotes(floor) == {}


def test_rate_limited_quotes_are_rejected(floor: Floor) -> None:
    mm = FixLink(floor, fix_acceptor(floor, RateLimit(1, 1)), ALICE_KEY, time.time_ns())
    body = mass_quote("q1", ("s", [("e1", FUTURE, "2.450", "2.550", "1", "1")]))
    assert ack(mm.send("i", body)).get(297) == "0"
    answer = ack(mm.send("i", body))
    assert (answer.get(297), answer.get(300)) == ("5", "3")


def test_a_quote_filled_is_reported_and_requoted(floor: Floor, mm: FixLink) -> None:
    ack(mm.send("i", mass_quote("q1", ("s", [("e1", FUTURE, "2.450", "2.550", "2", "2")]))))
    mm.received()
    floor.gateway.submit(PlaceOrder(BOB, FUTURE, Side.BUY, 2, ticks(floor, "2.550")))
    floor.pump()
    [fill] = [m for m in of_type(mm.received(), "8") if m.get(150) == "F"]
    assert (fill.get(11), fill.get(39), fill.get(32)) == ("Q:e1:S", "2", "2")
    assert stock_problem(fill) is None
    assert ack(mm.send("i", mass_quote("q2", ("s", [
        ("e1", FUTURE, "2.450", "2.560", "2", "2")])))).get(297) == "0"
    assert quotes(floor)["Q:e1:S"][2:] == (ticks(floor, "2.560"), 2)
