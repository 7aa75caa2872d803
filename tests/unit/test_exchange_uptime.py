"""Provider nodes, uptime epochs and attestations, and spot deliveries settled from them.

GPU.H100.SPOT: 1 000 micro-USDC per tick-lot, delivery in the next whole UTC hour; epochs
here last 5 minutes, so an hour window has 12 (epoch n starts n x 5 min after midnight on
1 December: the 01:00-02:00 window is epochs 12 to 23). RACK.KW.SPOT delivers over the next
UTC day; its tests use 2-hour epochs, 12 a day. Premium 100 %, bond 25 %, maker fee 0, taker
fee 5 bp.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
import pytest

from engine.commands import (
    AttestationAccepted,
    DeregisterNode,
    OpenEpoch,
    RegisterNode,
    SettleDelivery,
)
from engine.cython_book import CythonBook
from engine.events import (
    AttestationRecorded,
    CommandRejected,
    DeliveryAllocated,
    DeliveryOpened,
    DeliverySettled,
    EpochOpened,
    ExchangeEvent,
    NodeDeregistered,
    NodeRegistered,
    OrderAccepted,
    OrderRejected,
    Reason,
)
from engine.exchange import Exchange
from engine.exchange_state import decode_state, encode_state
from engine.ledger import FEE_ACCOUNT, INSURANCE_FUND, Balances
from engine.market import BookFactory
from engine.reference_book import ReferenceBook
from engine.sequencer import decode_sequenced, encode_sequenced
from engine.uptime import ATTESTED_EPOCHS
from tests.exchange_helpers import (
    ALICE,
    BOB,
    BUY,
    CAROL,
    DAVE,
    DEC_1,
    GPU_SPOT,
    HOUR,
    NS,
    RACK_SPOT,
    SELL,
    Desk,
    account,
    new_exchange,
    of_type,
    one,
)

EPOCH = 5 * 60 * NS
GPU_TV = 1_000
RACK_TV = 10_000
SELLER_FUNDS = 100_000_000
BUYER_FUNDS = 200_000_000
WINDOW = range(12, 24)  # the epochs of 01:00-02:00


def node(n: int) -> str:
    """A node key's address; nodes sort by ``n``."""
    return account(0x90DE_0000 + n)


def beacon(epoch: int) -> str:
    return f"0x{0xBEAC0000 + epoch:064x}"


def digest(node_address: str, epoch: int) -> str:
    return f"0x{int(node_address, 16) * 1000 + epoch:064x}"


def attestation(node_address: str, epoch: int) -> AttestationAccepted:
    return AttestationAccepted(node_address, epoch, 7 * epoch, digest(node_address, epoch))


def open_epoch(desk: Desk, epoch: int, attesting: Iterable[str] = (),
               length: int = EPOCH) -> list[ExchangeEvent]:
    """Open ``epoch`` at its start time, then record the attestations of ``attesting``."""
    start = DEC_1 + epoch * length
    events = desk.apply(OpenEpoch(epoch, beacon(epoch), start, length), max(start, desk.ts))
    assert one(events, EpochOpened) == EpochOpened(epoch, beacon(epoch), start, length)
    for address in attesting:
        recorded = one(desk.apply(attestation(address, epoch)), AttestationRecorded)
        assert (recorded.node, recorded.epoch) == (address, epoch)
    return events


def register(desk: Desk, address: str, provider: str, units: int,
             underlying: str = "GPU.H100") -> None:
    events = desk.apply(RegisterNode(address, provider, underlying, units))
    assert events == [NodeRegistered(address, provider, underlying, units)]


def rejected(events: list[ExchangeEvent]) -> Reason:
    return one(events, CommandRejected).reason


def funded(*sellers: str) -> Desk:
    desk = Desk()  # 00:10 UTC, 1 December 2026: spot fills deliver 01:00-02:00
    desk.deposit(ALICE, BUYER_FUNDS)
    for seller in sellers:
        desk.deposit(seller, SELLER_FUNDS)
    return desk


def total_money(desk: Desk) -> int:
    return sum(b.total() for b in desk.ex.ledger.accounts.values())


# --- registration, epochs and attestations ---------------------------------------------------


def test_a_node_registration_is_refused_with_its_reason_and_changes_nothing() -> None:
    desk = funded()
    register(desk, node(1), BOB, 8)
    refusals = [
        (RegisterNode("0xnot-a-node", BOB, "GPU.H100", 8), Reason.INVALID_NODE),
        (RegisterNode(node(2).upper(), BOB, "GPU.H100", 8), Reason.INVALID_NODE),
        (RegisterNode("0x" + "0" * 40, BOB, "GPU.H100", 8), Reason.INVALID_NODE),
        (RegisterNode(node(2), "0xnot-an-account", "GPU.H100", 8), Reason.INVALID_ACCOUNT),
        (RegisterNode(node(2), FEE_ACCOUNT, "GPU.H100", 8), Reason.INVALID_ACCOUNT),
        (RegisterNode(node(2), BOB, "GPU.X1", 8), Reason.UNKNOWN_UNDERLYING),
        (RegisterNode(node(2), BOB, GPU_SPOT, 8), Reason.UNKNOWN_UNDERLYING),
        (RegisterNode(node(2), BOB, "GPU.H100", 0), Reason.INVALID_AMOUNT),
        (RegisterNode(node(2), BOB, "GPU.H100", -1), Reason.INVALID_AMOUNT),
        (RegisterNode(node(1), CAROL, "GPU.H200", 4), Reason.NODE_REGISTERED),
        (RegisterNode(node(1), BOB, "GPU.H100", 8), Reason.NODE_REGISTERED),
    ]
    state = desk.ex.state()
    for command, reason in refusals:
        assert desk.apply(command) == [
            CommandRejected("register_node", command.node, 0, reason)], command
    # the refusals left everything as it was, but the sequence number
    assert msgspec.structs.replace(desk.ex.state(), last_seq=state.last_seq) == state
    register(desk, node(2), CAROL, 40, "RACK.KW")  # kW of a rack controller
    assert sorted(desk.ex.uptime.nodes) == [node(1), node(2)]


def test_deregistration_needs_a_known_node_and_can_only_come_sooner() -> None:
    desk = funded()
    register(desk, node(1), BOB, 8)
    assert rejected(desk.apply(DeregisterNode(node(9), DEC_1 + HOUR))) == Reason.UNKNOWN_NODE
    assert rejected(desk.apply(DeregisterNode(node(1), -1))) == Reason.INVALID_AMOUNT
    assert desk.apply(DeregisterNode(node(1), DEC_1 + 3 * HOUR)) == [
        NodeDeregistered(node(1), BOB, DEC_1 + 3 * HOUR)]
    for later in (DEC_1 + 3 * HOUR, DEC_1 + 4 * HOUR):  # the same again, or later: refused
        assert desk.apply(DeregisterNode(node(1), later)) == [
            CommandRejected("deregister_node", node(1), 0, Reason.NODE_DEREGISTERED)]
    assert desk.apply(DeregisterNode(node(1), DEC_1 + 2 * HOUR)) == [
        NodeDeregistered(node(1), BOB, DEC_1 + 2 * HOUR)]
    assert desk.ex.uptime.nodes[node(1)].deregistered_at == DEC_1 + 2 * HOUR


def test_epochs_are_numbered_and_started_in_increasing_order() -> None:
    desk = funded()
    open_epoch(desk, 2)
    start = DEC_1 + 3 * EPOCH
    refusals = [
        (OpenEpoch(2, beacon(2), start, EPOCH), Reason.INVALID_EPOCH),  # the same number
        (OpenEpoch(1, beacon(1), start, EPOCH), Reason.INVALID_EPOCH),  # a lower number
        (OpenEpoch(3, beacon(3), DEC_1 + 2 * EPOCH, EPOCH), Reason.INVALID_EPOCH),  # no later
        (OpenEpoch(3, beacon(3), start, 0), Reason.INVALID_EPOCH),
        (OpenEpoch(-3, beacon(3), start, EPOCH), Reason.INVALID_EPOCH),
        (OpenEpoch(3, beacon(3)[2:], start, EPOCH), Reason.INVALID_BEACON),  # no 0x
        (OpenEpoch(3, beacon(3).upper().replace("0X", "0x"), start, EPOCH),
         Reason.INVALID_BEACON),
        (OpenEpoch(3, beacon(3)[:-2], start, EPOCH), Reason.INVALID_BEACON),  # 31 bytes
    ]
    for command, reason in refusals:
        assert desk.apply(command) == [
            CommandRejected("open_epoch", "", command.epoch, reason)], command
    assert list(desk.ex.uptime.epochs) == [2]
    open_epoch(desk, 5)  # numbers and times may skip an epoch the bridge never opened
    assert list(desk.ex.uptime.epochs) == [2, 5]


def test_an_attestation_counts_once_for_an_active_node_in_a_known_epoch() -> None:
    desk = funded()
    register(desk, node(1), BOB, 8)
    register(desk, node(2), BOB, 8)
    open_epoch(desk, 2, [node(1)])
    assert desk.apply(attestation(node(2), 2)) == [AttestationRecorded(node(2), 2, BOB)]
    state = desk.ex.state()
    refusals = [
        (attestation(node(1), 2), Reason.DUPLICATE_ATTESTATION),
        (AttestationAccepted(node(1), 2, 99, digest(node(1), 3)), Reason.DUPLICATE_ATTESTATION),
        (attestation(node(9), 2), Reason.UNKNOWN_NODE),
        (attestation(node(1), 3), Reason.UNKNOWN_EPOCH),
        (AttestationAccepted(node(1), 3, 1, "0x1234"), Reason.INVALID_ATTESTATION),
        (AttestationAccepted(node(1), 3, 1 << 64, digest(node(1), 3)),
         Reason.INVALID_ATTESTATION),
    ]
    for command, reason in refusals:
        assert desk.apply(command) == [
            CommandRejected("attestation_accepted", command.node, command.epoch, reason)]
    # the refusals left everything as it was, but the sequence number
    assert msgspec.structs.replace(desk.ex.state(), last_seq=state.last_seq) == state
    # deregistered from the start of epoch 4: epoch 3 still counts, epoch 4 does not
    desk.apply(DeregisterNode(node(1), DEC_1 + 4 * EPOCH))
    open_epoch(desk, 3, [node(1)])
    open_epoch(desk, 4)
    assert rejected(desk.apply(attestation(node(1), 4))) == Reason.NODE_INACTIVE
    assert sorted(desk.ex.uptime.attested) == [(node(1), 2), (node(1), 3), (node(2), 2)]


# --- capacity and allocation -------------------------------------------------------------------


def test_a_provider_with_nodes_sells_only_what_its_nodes_attested_lately() -> None:
    desk = funded(BOB)
    desk.capacity(BOB, "GPU.H100", 100)  # set capacity no longer counts once nodes exist
    register(desk, node(1), BOB, 8)
    refused = desk.place(BOB, GPU_SPOT, SELL, 1, 2600)
    assert one(refused, OrderRejected).reason == Reason.CAPACITY_EXCEEDED
    open_epoch(desk, 2, [node(1)])
    order = desk.rest(BOB, GPU_SPOT, SELL, 8, 2600)
    assert one(desk.place(BOB, GPU_SPOT, SELL, 1, 2600), OrderRejected).reason == \
        Reason.CAPACITY_EXCEEDED
    desk.cancel(BOB, GPU_SPOT, order)
    # the node stays quiet: it sells while epoch 2 is among the last three opened
    for epoch in range(3, 2 + ATTESTED_EPOCHS):
        open_epoch(desk, epoch)
        assert of_type(desk.place(BOB, GPU_SPOT, SELL, 8, 2600), OrderAccepted)
        desk.cancel_all(BOB)
    open_epoch(desk, 2 + ATTESTED_EPOCHS)
    assert one(desk.place(BOB, GPU_SPOT, SELL, 1, 2600), OrderRejected).reason == \
        Reason.CAPACITY_EXCEEDED
    desk.apply(attestation(node(1), 2 + ATTESTED_EPOCHS))  # up again
    assert of_type(desk.place(BOB, GPU_SPOT, SELL, 8, 2600), OrderAccepted)
    # a provider without nodes keeps its set capacity
    desk.deposit(CAROL, SELLER_FUNDS)
    desk.capacity(CAROL, "GPU.H100", 3)
    assert of_type(desk.place(CAROL, GPU_SPOT, SELL, 3, 2600), OrderAccepted)


def test_a_delivery_is_allocated_to_the_sellers_nodes_in_address_order() -> None:
    desk = funded(BOB)
    register(desk, node(2), BOB, 4)
    register(desk, node(1), BOB, 4)
    register(desk, node(3), BOB, 4)  # registered but never attests
    open_epoch(desk, 2, [node(2), node(1)])
    desk.rest(BOB, GPU_SPOT, SELL, 8, 2600)
    events = desk.place(ALICE, GPU_SPOT, BUY, 6, 2600)
    opened = one(events, DeliveryOpened)
    assert of_type(events, DeliveryAllocated) == [
        DeliveryAllocated(opened.delivery_id, node(1), 4),
        DeliveryAllocated(opened.delivery_id, node(2), 2)]
    assert desk.ex.deliveries[opened.delivery_id].allocation == [(node(1), 4), (node(2), 2)]
    events = desk.place(ALICE, GPU_SPOT, BUY, 2, 2600)
    assert of_type(events, DeliveryAllocated) == [DeliveryAllocated(2, node(2), 2)]
    assert desk.ex.uptime.allocated == {(node(1), DEC_1 + HOUR): 4, (node(2), DEC_1 + HOUR): 4}
    assert one(desk.place(BOB, GPU_SPOT, SELL, 1, 2600), OrderRejected).reason == \
        Reason.CAPACITY_EXCEEDED
    # an attested delivery settles from attestations, never by command
    desk.at(DEC_1 + 2 * HOUR)
    assert desk.apply(SettleDelivery(1, 12, 12)) == [
        CommandRejected("settle_delivery", "", 1, Reason.DELIVERY_ATTESTED)]


def test_lots_no_node_can_take_stay_unallocated_and_count_as_undelivered() -> None:
    desk = funded(BOB)
    register(desk, node(1), BOB, 4)
    open_epoch(desk, 2, [node(1)])
    desk.rest(BOB, GPU_SPOT, SELL, 4, 2600)  # checked against the 01:00 window
    for epoch in range(3, 14):  # the node goes quiet; at 01:05 the sell fills for 02:00
        open_epoch(desk, epoch)
    events = desk.place(ALICE, GPU_SPOT, BUY, 4, 2600)
    opened = one(events, DeliveryOpened)
    assert opened.window_start == DEC_1 + 2 * HOUR
    assert of_type(events, DeliveryAllocated) == []
    assert desk.ex.deliveries[opened.delivery_id].allocation == []
    for epoch in range(14, 37):
        open_epoch(desk, epoch)
    premium, bond = 2600 * 4 * GPU_TV, 2600 * 4 * GPU_TV // 4
    settled = one(desk.timer(DEC_1 + 3 * HOUR + EPOCH), DeliverySettled)
    assert settled == DeliverySettled(opened.delivery_id, 0, 4 * 12, 0, 0, premium, bond, 0)
    assert desk.balances(BOB) == Balances(available=SELLER_FUNDS - bond)
    assert desk.balances(ALICE) == Balances(
        available=BUYER_FUNDS - premium * 5 // 10_000 + bond)


# --- settlement -------------------------------------------------------------------------------

PROVIDERS = {  # seller: its two nodes and their GPUs
    BOB: ((node(11), 4), (node(12), 4)),
    CAROL: ((node(21), 2), (node(22), 2)),
    DAVE: ((node(31), 3), (node(32), 1)),
}
STOPS = node(12)  # Bob's second node stops attesting halfway through the window
MISSES = node(32)  # Dave's second node misses one epoch


def attesting(epoch: int) -> list[str]:
    nodes = [address for fleet in PROVIDERS.values() for address, _ in fleet]
    if epoch >= 18:
        nodes.remove(STOPS)
    if epoch == 20:
        nodes.remove(MISSES)
    return nodes


def three_providers() -> Desk:
    """Three providers with two nodes each sell to Alice for 01:00-02:00; the window runs
    with one node stopping halfway and another missing an epoch; the timer settles."""
    desk = funded(*PROVIDERS)
    for provider, fleet in PROVIDERS.items():
        for address, units in fleet:
            register(desk, address, provider, units)
    open_epoch(desk, 2, attesting(2))
    desk.rest(BOB, GPU_SPOT, SELL, 6, 2600)
    desk.rest(CAROL, GPU_SPOT, SELL, 4, 2610)
    desk.place(ALICE, GPU_SPOT, BUY, 10, 2610)  # Alice takes Bob's and Carol's offers
    desk.rest(ALICE, GPU_SPOT, BUY, 4, 2620)
    desk.place(DAVE, GPU_SPOT, SELL, 4, 2615)  # Dave hits Alice's bid: Dave is the taker
    for epoch in range(3, 25):
        open_epoch(desk, epoch, attesting(epoch))
    return desk


def test_three_providers_are_paid_pro_rata_to_their_attested_node_epochs() -> None:
    desk = three_providers()
    deliveries = desk.ex.deliveries
    assert [(d.seller, d.qty, d.allocation) for d in deliveries.values()] == [
        (BOB, 6, [(node(11), 4), (node(12), 2)]),
        (CAROL, 4, [(node(21), 2), (node(22), 2)]),
        (DAVE, 4, [(node(31), 3), (node(32), 1)]),
    ]
    # the window ended at 02:00; its last epoch's attestations may still come until 02:05
    assert of_type(desk.timer(DEC_1 + 2 * HOUR), DeliverySettled) == []
    assert of_type(desk.timer(DEC_1 + 2 * HOUR + EPOCH - 1), DeliverySettled) == []
    events = desk.timer(DEC_1 + 2 * HOUR + EPOCH)
    # Bob: 4 GPUs x 12 epochs + 2 GPUs x 6 epochs of 6 x 12; a maker, so no seller fee
    # Carol: all 48; Dave: 3 x 12 + 1 x 11 of 48, a taker paying 5 bp on what he earned
    bob_premium, carol_premium, dave_premium = 15_600_000, 10_440_000, 10_480_000
    assert (bob_premium, carol_premium, dave_premium) == \
        (2600 * 6 * GPU_TV, 2610 * 4 * GPU_TV, 2620 * 4 * GPU_TV)  # Dave sold at Alice's bid
    bob_bond, carol_bond, dave_bond = 3_900_000, 2_610_000, 2_620_000
    bob_earned = 15_600_000 * 60 // 72  # 13 000 000
    bob_compensation = 3_900_000 * 12 // 72  # 650 000
    dave_earned = 10_480_000 * 47 // 48  # 10 261 666
    dave_fee = dave_earned * 5 // 10_000  # 5 130
    dave_compensation = 2_620_000 * 1 // 48  # 54 583
    assert of_type(events, DeliverySettled) == [
        DeliverySettled(1, 60, 72, bob_earned, 0, bob_premium - bob_earned,
                        bob_compensation, bob_bond - bob_compensation),
        DeliverySettled(2, 48, 48, carol_premium, 0, 0, 0, carol_bond),
        DeliverySettled(3, 47, 48, dave_earned - dave_fee, dave_fee,
                        dave_premium - dave_earned, dave_compensation,
                        dave_bond - dave_compensation),
    ]
    assert (bob_earned, bob_compensation, dave_earned, dave_fee, dave_compensation) == \
        (13_000_000, 650_000, 10_261_666, 5_130, 54_583)
    assert desk.balances(BOB) == Balances(available=SELLER_FUNDS + 13_000_000 - 650_000)
    assert desk.balances(CAROL) == Balances(available=SELLER_FUNDS + 10_440_000)
    assert desk.balances(DAVE) == \
        Balances(available=SELLER_FUNDS + 10_261_666 - 5_130 - 54_583)
    alice_fees = (bob_premium + carol_premium) * 5 // 10_000  # taker on the first fills
    alice_paid = bob_earned + carol_premium + dave_earned
    assert desk.balances(ALICE) == Balances(
        available=BUYER_FUNDS - alice_fees - alice_paid + bob_compensation + dave_compensation)
    assert desk.balances(FEE_ACCOUNT) == Balances(available=alice_fees + dave_fee)
    assert all(b.escrow == 0 for b in desk.ex.ledger.accounts.values())
    assert desk.ex.deliveries == {} and desk.ex.sold == {}
    assert desk.ex.uptime.allocated == {}
    assert total_money(desk) == BUYER_FUNDS + 3 * SELLER_FUNDS
    assert desk.balances(INSURANCE_FUND) == Balances()


def test_old_epochs_and_attestations_are_forgotten_once_nothing_needs_them() -> None:
    desk = three_providers()
    uptime = desk.ex.uptime
    # the open deliveries keep their window's epochs (12 to 23), and the last three stay
    assert list(uptime.epochs) == [*WINDOW, 24]
    assert {epoch for _, epoch in uptime.attested} == set(WINDOW) | {24}
    desk.timer(DEC_1 + 2 * HOUR + EPOCH)
    open_epoch(desk, 25, attesting(25))
    assert list(uptime.epochs) == [23, 24, 25]
    assert {epoch for _, epoch in uptime.attested} == {23, 24, 25}


def test_a_window_without_epochs_is_wholly_undelivered() -> None:
    desk = funded(BOB)
    register(desk, node(1), BOB, 4)
    open_epoch(desk, 2, [node(1)])
    desk.rest(BOB, GPU_SPOT, SELL, 3, 2600)
    desk.place(ALICE, GPU_SPOT, BUY, 3, 2600)
    # the bridge opens no epoch: the hour is 12 of the last epoch's 5 minutes, none proven
    settled = one(desk.timer(DEC_1 + 2 * HOUR + EPOCH), DeliverySettled)
    premium, bond = 2600 * 3 * GPU_TV, 2600 * 3 * GPU_TV // 4
    assert settled == DeliverySettled(1, 0, 3 * 12, 0, 0, premium, bond, 0)


def test_rack_load_settles_from_its_controllers_over_the_day() -> None:
    length = 2 * HOUR  # 12 epochs a day: 2 December is epochs 12 to 23
    desk = funded(BOB)
    register(desk, node(1), BOB, 3, "RACK.KW")
    register(desk, node(2), BOB, 2, "RACK.KW")
    open_epoch(desk, 0, [node(1), node(2)], length)
    # GPU capacity is apart: Bob has no GPU node, and no GPU capacity set
    assert one(desk.place(BOB, GPU_SPOT, SELL, 1, 2600), OrderRejected).reason == \
        Reason.CAPACITY_EXCEEDED
    desk.rest(BOB, RACK_SPOT, SELL, 5, 510)
    events = desk.place(ALICE, RACK_SPOT, BUY, 5, 510)
    assert of_type(events, DeliveryAllocated) == [DeliveryAllocated(1, node(1), 3),
                                                   DeliveryAllocated(1, node(2), 2)]
    for epoch in range(1, 25):  # the 2 kW controller goes quiet halfway through the day
        open_epoch(desk, epoch, [node(1)] if epoch >= 18 else [node(1), node(2)], length)
    assert of_type(desk.timer(DEC_1 + 2 * 24 * HOUR + length - 1), DeliverySettled) == []
    settled = one(desk.timer(DEC_1 + 2 * 24 * HOUR + length), DeliverySettled)
    premium = 510 * 5 * RACK_TV
    bond = premium // 4
    earned = premium * 48 // 60  # 3 kW x 12 + 2 kW x 6 of 5 kW x 12
    compensation = bond * 12 // 60
    assert settled == DeliverySettled(1, 48, 60, earned, 0, premium - earned, compensation,
                                      bond - compensation)
    assert (earned, compensation) == (20_400_000, 1_275_000)
    assert desk.balances(BOB) == Balances(available=SELLER_FUNDS + earned - compensation)
    assert desk.balances(ALICE) == Balances(
        available=BUYER_FUNDS - premium * 5 // 10_000 - earned + compensation)


def test_deregistration_honours_what_the_node_sold_and_stops_it_selling_more() -> None:
    desk = funded(BOB)
    register(desk, node(1), BOB, 4)
    register(desk, node(2), BOB, 4)
    open_epoch(desk, 2, [node(1), node(2)])
    desk.rest(BOB, GPU_SPOT, SELL, 4, 2600)
    desk.place(ALICE, GPU_SPOT, BUY, 4, 2600)  # on node 1, for 01:00-02:00
    # notice for the window's end: node 1 still sells 01:00-02:00, and nothing later
    desk.apply(DeregisterNode(node(1), DEC_1 + 2 * HOUR))
    desk.rest(BOB, GPU_SPOT, SELL, 4, 2600)
    assert one(desk.place(ALICE, GPU_SPOT, BUY, 4, 2600), DeliveryAllocated) == \
        DeliveryAllocated(2, node(2), 4)
    # brought forward to 01:30: node 1 owes its delivery, but sells nothing new; the lots
    # it holds take nothing from node 2
    desk.apply(DeregisterNode(node(1), DEC_1 + HOUR + 30 * 60 * NS))
    for epoch in range(3, 13):
        open_epoch(desk, epoch, [node(1), node(2)])
    assert desk.ts == DEC_1 + HOUR  # sells now deliver 02:00-03:00
    assert one(desk.place(BOB, GPU_SPOT, SELL, 5, 2600), OrderRejected).reason == \
        Reason.CAPACITY_EXCEEDED
    assert of_type(desk.place(BOB, GPU_SPOT, SELL, 4, 2600), OrderAccepted)
    for epoch in range(13, 25):
        open_epoch(desk, epoch, [node(2)])
        events = desk.apply(attestation(node(1), epoch))
        if epoch < 18:
            assert of_type(events, AttestationRecorded), epoch
        else:  # epochs from 01:30 on
            assert rejected(events) == Reason.NODE_INACTIVE, epoch
    settled = of_type(desk.timer(DEC_1 + 2 * HOUR + EPOCH), DeliverySettled)
    assert [(s.delivery_id, s.delivered, s.required) for s in settled] == \
        [(1, 4 * 6, 4 * 12), (2, 4 * 12, 4 * 12)]


# --- replay and restore -----------------------------------------------------------------------


def settled_journal() -> Desk:
    desk = three_providers()
    desk.timer(DEC_1 + 2 * HOUR + EPOCH)
    open_epoch(desk, 25, attesting(25))
    desk.apply(DeregisterNode(node(11), DEC_1 + 3 * HOUR))
    return desk


def test_the_journal_replays_to_the_same_events_and_state_hash() -> None:
    desk = settled_journal()
    desk.apply(AttestationAccepted(node(11), 25, (1 << 64) - 1, digest(node(11), 25)))
    journal = [decode_sequenced(encode_sequenced(stamped)) for stamped in desk.journal]
    assert journal == desk.journal  # node, epoch and attestation commands as journaled
    first, second = new_exchange(), new_exchange()
    once = [msgspec.msgpack.encode(first.apply(stamped)) for stamped in journal]
    again = [msgspec.msgpack.encode(second.apply(stamped)) for stamped in desk.journal]
    assert once == again
    assert first.state_hash() == second.state_hash() == desk.ex.state_hash()


@pytest.mark.parametrize("book", [CythonBook, ReferenceBook], ids=["cython", "reference"])
def test_a_restored_exchange_continues_identically(book: BookFactory) -> None:
    journal = settled_journal().journal
    replayed = new_exchange()
    expected = [msgspec.msgpack.encode(replayed.apply(stamped)) for stamped in journal]
    live = new_exchange()
    for cut, stamped in enumerate(journal):
        if cut % 3 == 0:  # restored from every third state, and run to the end
            restored = Exchange.restore(decode_state(encode_state(live.state())), book)
            assert restored.state_hash() == live.state_hash()
            rest = [msgspec.msgpack.encode(restored.apply(later)) for later in journal[cut:]]
            assert rest == expected[cut:], cut
            assert restored.state_hash() == replayed.state_hash()
        live.apply(stamped)
