"""The providers report (`chain_bridge.providers`) over a real exchange: nodes by provider
with their uptime over the last 24 hours, the current epoch, and the attested deliveries in
progress with the node-epochs delivered and required so far.

GPU.H100.SPOT fills at 00:10 UTC on 1 December 2026 deliver 01:00-02:00; epochs here last 5
minutes and epoch n starts n x 5 min after midnight, so the window holds epochs 12 to 23.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain_bridge.providers import DAY_NS, SettledDeliveries, UptimeHistory, providers_report
from engine.commands import AttestationAccepted, DeregisterNode, OpenEpoch, RegisterNode
from engine.events import (
    AttestationRecorded,
    DeliverySettled,
    EpochOpened,
)
from tests.exchange_helpers import (
    ALICE,
    BOB,
    BUY,
    CAROL,
    DEC_1,
    GPU_SPOT,
    HOUR,
    NS,
    SELL,
    Desk,
    account,
    of_type,
    one,
)

EPOCH = 5 * 60 * NS
WINDOW_START = DEC_1 + HOUR  # 01:00, epoch 12
WINDOW_END = DEC_1 + 2 * HOUR  # 02:00, epoch 24 would start there


def node(n: int) -> str:
    """A node key's address; nodes sort by ``n``."""
    return account(0x90DE_0000 + n)


def beacon(epoch: int) -> str:
    return f"0x{0xBEAC0000 + epoch:064x}"


def attestation(address: str, epoch: int) -> AttestationAccepted:
    return AttestationAccepted(address, epoch, 7 * epoch,
                               f"0x{int(address, 16) * 1000 + epoch:064x}")


def start_of(epoch: int, length: int = EPOCH) -> int:
    return DEC_1 + epoch * length


class Feed:
    """A desk whose uptime an `UptimeHistory` observes after every step, as the chain
    service does once a second."""

    def __init__(self, *sellers: str) -> None:
        self.desk = Desk()  # 00:10 UTC
        self.desk.deposit(ALICE, 200_000_000)
        for seller in sellers:
            self.desk.deposit(seller, 100_000_000)
        self.history = UptimeHistory()

    def observe(self) -> None:
        self.history.observe(self.desk.ex.uptime)

    def register(self, address: str, provider: str, units: int,
                 underlying: str = "GPU.H100") -> None:
        self.desk.apply(RegisterNode(address, provider, underlying, units))
        self.observe()

    def epoch(self, epoch: int, attesting: Iterable[str] = (), length: int = EPOCH) -> None:
        """Open ``epoch`` at its start, then record the attestations of ``attesting``."""
        start = start_of(epoch, length)
        events = self.desk.apply(OpenEpoch(epoch, beacon(epoch), start, length),
                                 max(start, self.desk.ts))
        assert one(events, EpochOpened).epoch == epoch
        self.observe()
        self.attest(epoch, attesting)

    def attest(self, epoch: int, nodes: Iterable[str]) -> None:
        for address in nodes:
            assert of_type(self.desk.apply(attestation(address, epoch)), AttestationRecorded)
        self.observe()

    def report(self, now: int | None = None) -> dict[str, Any]:
        return providers_report(self.desk.ex, self.history,
                                self.desk.ts if now is None else now)


def nodes_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["node"]: n for p in report["providers"] for n in p["nodes"]}


def uptime_of(report: dict[str, Any]) -> dict[str, tuple[int, int, bool]]:
    """Per node: (epochs attested, epochs counted, attested the current epoch)."""
    return {address: (n["epochs_attested"], n["epochs"], n["attested_current"])
            for address, n in nodes_of(report).items()}


# --- nodes and uptime ----------------------------------------------------------------------


def test_an_exchange_without_nodes_or_epochs_reports_nothing() -> None:
    feed = Feed()
    report = feed.report()
    assert report == {
        "now_ns": feed.desk.ts,
        "epoch": None,
        "history": {"since_ns": None, "window_ns": DAY_NS, "epochs": 0, "full": False},
        "providers": [],
        "deliveries": [],
        "deliveries_open": 0,
        "settled": [],
    }


def test_nodes_are_grouped_by_provider_with_their_uptime_and_the_current_epoch() -> None:
    feed = Feed()
    feed.register(node(2), BOB, 4)
    feed.register(node(1), BOB, 8)
    feed.register(node(3), CAROL, 40, "RACK.KW")
    feed.epoch(2, [node(1), node(2), node(3)])
    feed.epoch(3, [node(1), node(3)])  # node 2 misses epoch 3
    feed.epoch(4, [node(1)])  # node 2 and node 3 have not attested epoch 4 yet
    now = start_of(4) + 60 * NS
    report = feed.report(now)
    assert report["now_ns"] == now
    assert report["epoch"] == {"epoch": 4, "beacon": beacon(4), "start_ns": start_of(4),
                               "length_ns": EPOCH, "end_ns": start_of(5)}
    assert report["history"] == {"since_ns": start_of(2), "window_ns": DAY_NS, "epochs": 3,
                                 "full": False}
    assert report["providers"] == [
        {"provider": BOB, "active_units": 12, "nodes": [
            {"node": node(1), "underlying": "GPU.H100", "units": 8, "status": "active",
             "deregistered_at": None, "epochs_attested": 3, "epochs": 3,
             "uptime_ppm": 1_000_000, "attested_current": True, "last_attested_epoch": 4},
            # epoch 4 is still open: it counts for node 2 only once attested
            {"node": node(2), "underlying": "GPU.H100", "units": 4, "status": "active",
             "deregistered_at": None, "epochs_attested": 1, "epochs": 2,
             "uptime_ppm": 500_000, "attested_current": False, "last_attested_epoch": 2},
        ]},
        {"provider": CAROL, "active_units": 40, "nodes": [
            {"node": node(3), "underlying": "RACK.KW", "units": 40, "status": "active",
             "deregistered_at": None, "epochs_attested": 2, "epochs": 2,
             "uptime_ppm": 1_000_000, "attested_current": False, "last_attested_epoch": 3},
        ]},
    ]
    # once epoch 4 has ended it counts for everyone; node 3 attests it late, node 2 never
    feed.attest(4, [node(3)])
    assert uptime_of(feed.report(start_of(5))) == {
        node(1): (3, 3, True), node(2): (1, 3, False), node(3): (3, 3, True)}
    assert nodes_of(feed.report(start_of(5)))[node(2)]["uptime_ppm"] == 333_333


def test_an_attestation_arriving_after_the_next_epoch_opened_still_counts() -> None:
    feed = Feed()
    feed.register(node(1), BOB, 8)
    feed.register(node(2), BOB, 8)
    feed.epoch(2, [node(1)])
    feed.epoch(3, [node(1)])  # the history saw epoch 2 without node 2, then epoch 3 opened
    feed.attest(2, [node(2)])  # node 2's attestation of epoch 2 comes within the grace
    feed.epoch(4, [node(1), node(2)])
    feed.epoch(5, [node(1), node(2)])  # the engine forgets epoch 2 here
    assert 2 not in feed.desk.ex.uptime.epochs
    assert node(2) in feed.history.records[2].attested
    assert uptime_of(feed.report(start_of(6))) == {node(1): (4, 4, True),
                                                    node(2): (3, 4, True)}


def test_observing_an_unchanged_engine_changes_nothing() -> None:
    feed = Feed()
    feed.register(node(1), BOB, 8)
    feed.epoch(2, [node(1)])
    records = {n: (r.start_ts, set(r.attested)) for n, r in feed.history.records.items()}
    for _ in range(3):
        feed.observe()
    assert {n: (r.start_ts, r.attested) for n, r in feed.history.records.items()} == records
    assert feed.history.last_epoch == 2


def test_a_node_counts_from_its_registration_and_until_its_deregistration() -> None:
    feed = Feed()
    feed.register(node(1), BOB, 8)
    feed.epoch(2, [node(1)])
    feed.epoch(3, [node(1)])
    feed.register(node(2), BOB, 4)  # during epoch 3: it counts from epoch 3 on
    feed.epoch(4, [node(1), node(2)])
    feed.desk.apply(DeregisterNode(node(1), start_of(6)))  # attests nothing from epoch 6
    feed.observe()
    feed.epoch(5, [node(1), node(2)])
    feed.epoch(6, [node(2)])
    feed.epoch(7, [node(2)])
    report = feed.report(start_of(8))
    assert uptime_of(report) == {node(1): (4, 4, False), node(2): (4, 5, True)}
    first, second = report["providers"][0]["nodes"]
    assert (first["status"], first["deregistered_at"]) == ("deregistered", start_of(6))
    assert (second["status"], second["deregistered_at"]) == ("active", None)
    assert report["providers"][0]["active_units"] == 4
    # before its deregistration takes effect the node is still active
    before = feed.report(start_of(6) - 1)
    assert nodes_of(before)[node(1)]["status"] == "active"


def test_a_deregistration_effective_in_the_past_leaves_attested_epochs_counted() -> None:
    feed = Feed()
    feed.register(node(1), BOB, 8)
    for epoch in range(2, 6):
        feed.epoch(epoch, [node(1)])
    feed.desk.apply(DeregisterNode(node(1), start_of(4)))  # the chain said so late
    feed.observe()
    feed.epoch(6)
    assert uptime_of(feed.report(start_of(7))) == {node(1): (4, 4, False)}


def test_the_history_keeps_the_epochs_of_the_last_24_hours() -> None:
    feed = Feed()
    feed.register(node(1), BOB, 8)
    feed.register(node(2), BOB, 8)
    for epoch in range(30):  # hourly epochs from midnight; node 2 misses the first six
        feed.epoch(epoch, [node(1)] + ([node(2)] if epoch >= 6 else []), length=HOUR)
    history = feed.history
    # epochs that started more than a day before the newest are gone
    assert list(history.records) == list(range(5, 30))
    assert history.first_start_ns == DEC_1
    now = DEC_1 + 29 * HOUR + 30 * 60 * NS
    report = feed.report(now)
    assert report["history"] == {"since_ns": DEC_1 + 6 * HOUR, "window_ns": DAY_NS,
                                 "epochs": 24, "full": True}
    assert uptime_of(report) == {node(1): (24, 24, True), node(2): (24, 24, True)}
    early = feed.report(DEC_1 + 29 * HOUR)  # 5:00 to 29:00: epoch 5, which node 2 missed
    assert uptime_of(early) == {node(1): (25, 25, True), node(2): (24, 25, True)}
    assert nodes_of(early)[node(2)]["uptime_ppm"] == 960_000


# --- deliveries in progress --------------------------------------------------------------


def sold_to_alice(feed: Feed) -> int:
    """Bob's two nodes (4 GPUs each) attest epoch 2; he sells 6 lots to Alice for
    01:00-02:00 (4 on node 1, 2 on node 2); node 3 never attests. Returns the delivery id."""
    feed.register(node(1), BOB, 4)
    feed.register(node(2), BOB, 4)
    feed.register(node(3), BOB, 4)
    feed.epoch(2, [node(1), node(2)])
    feed.desk.rest(BOB, GPU_SPOT, SELL, 6, 2600)
    feed.desk.place(ALICE, GPU_SPOT, BUY, 6, 2600)
    delivery_id = max(feed.desk.ex.deliveries)
    delivery = feed.desk.ex.deliveries[delivery_id]
    assert (delivery.seller, delivery.allocation) == (BOB, [(node(1), 4), (node(2), 2)])
    return delivery_id


def test_a_delivery_is_pending_then_delivering_then_settling() -> None:
    feed = Feed(BOB)
    delivery_id = sold_to_alice(feed)
    pending, = feed.report()["deliveries"]
    assert pending == {
        "delivery_id": delivery_id, "symbol": GPU_SPOT, "underlying": "GPU.H100",
        "seller": BOB, "qty": 6, "quantity": "6", "quantity_unit": "GPU-hour",
        "window_start": WINDOW_START, "window_end": WINDOW_END, "status": "pending",
        "allocation": [{"node": node(1), "units": 4}, {"node": node(2), "units": 2}],
        "unallocated": 0, "epochs_opened": 0, "epochs_expected": 12,
        "delivered": 0, "required": 0, "delivered_ppm": None,
    }
    for epoch in range(3, 12):
        feed.epoch(epoch, [node(1), node(2)])
    assert feed.report()["deliveries"][0]["status"] == "pending"
    # the window: node 2 stops after three epochs
    for epoch in range(12, 18):
        feed.epoch(epoch, [node(1)] + ([node(2)] if epoch < 15 else []))
    now = start_of(17) + 60 * NS
    delivering, = feed.report(now)["deliveries"]
    delivered = 4 * 6 + 2 * 3
    assert (delivering["status"], delivering["epochs_opened"], delivering["delivered"],
            delivering["required"], delivering["delivered_ppm"]) == \
        ("delivering", 6, delivered, 6 * 6, delivered * 1_000_000 // 36)
    for epoch in range(18, 25):
        feed.epoch(epoch, [node(1)])
    delivery = feed.desk.ex.deliveries[delivery_id]
    settling, = feed.report(WINDOW_END + 60 * NS)["deliveries"]
    assert settling["status"] == "settling"
    assert (settling["delivered"], settling["required"]) == \
        feed.desk.ex.uptime.settlement(delivery) == (4 * 12 + 2 * 3, 6 * 12)
    assert settling["epochs_opened"] == 12  # epoch 24 starts at the window's end
    settled = one(feed.desk.timer(WINDOW_END + EPOCH), DeliverySettled)
    assert (settled.delivered, settled.required) == (54, 72)
    assert feed.report()["deliveries"] == []


def test_a_started_window_without_epochs_delivers_nothing_yet() -> None:
    feed = Feed(BOB)
    sold_to_alice(feed)
    started, = feed.report(WINDOW_START + 60 * NS)["deliveries"]
    assert (started["status"], started["epochs_opened"], started["delivered"],
            started["required"]) == ("delivering", 0, 0, 0)
    # no epoch at all in the window: settlement requires lots x (window // epoch length)
    ended, = feed.report(WINDOW_END)["deliveries"]
    assert (ended["status"], ended["delivered"], ended["required"]) == ("settling", 0, 72)


def test_only_deliveries_from_nodes_are_reported() -> None:
    feed = Feed(BOB, CAROL)
    feed.desk.capacity(CAROL, "GPU.H100", 10)  # Carol sells without nodes
    feed.desk.rest(CAROL, GPU_SPOT, SELL, 3, 2600)
    feed.desk.place(ALICE, GPU_SPOT, BUY, 3, 2600)
    delivery_id = sold_to_alice(feed)
    assert len(feed.desk.ex.deliveries) == 2
    assert [d["delivery_id"] for d in feed.report()["deliveries"]] == [delivery_id]


ATTESTING = st.lists(st.frozensets(st.sampled_from([1, 2, 3])), min_size=12, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attesting=ATTESTING, late=st.lists(st.booleans(), min_size=12, max_size=12),
       qty=st.integers(1, 8))
def test_delivered_never_exceeds_required_and_ends_at_the_settlement(
        attesting: list[frozenset[int]], late: list[bool], qty: int) -> None:
    """Whatever the nodes attest, and whether an epoch's attestations come before or after
    the next epoch opened: every report has delivered <= required = lots x epochs opened,
    delivered only grows, each node's attested epochs are at most those counted and in the
    end all it attested, and once the window has ended the report says what the settlement
    then pays."""
    feed = Feed(BOB)
    for n in (1, 2, 3):
        feed.register(node(n), BOB, 4)
    feed.epoch(2, [node(1), node(2), node(3)])
    feed.desk.rest(BOB, GPU_SPOT, SELL, qty, 2600)
    feed.desk.place(ALICE, GPU_SPOT, BUY, qty, 2600)
    delivery_id = next(iter(feed.desk.ex.deliveries))
    waiting: list[str] = []  # the previous epoch's late attestations
    delivered_before = 0
    for index, epoch in enumerate(range(12, 24)):
        feed.epoch(epoch)
        feed.attest(epoch - 1, waiting)  # after the next epoch opened
        nodes = [node(n) for n in sorted(attesting[index])]
        waiting = nodes if late[index] else []
        if not late[index]:
            feed.attest(epoch, nodes)
        report = feed.report(start_of(epoch) + 1)
        (delivery,) = report["deliveries"]
        assert delivery["status"] == "delivering"
        assert delivery["required"] == qty * delivery["epochs_opened"]
        assert delivered_before <= delivery["delivered"] <= delivery["required"]
        delivered_before = delivery["delivered"]
        for counted in uptime_of(report).values():
            assert counted[0] <= counted[1]
    feed.attest(23, waiting)
    report = feed.report(WINDOW_END)
    # the history caught every attestation, late or not: epoch 2 and those of the window
    assert uptime_of(report) == {
        node(n): (1 + sum(n in nodes for nodes in attesting), 13, n in attesting[-1])
        for n in (1, 2, 3)}
    ended, = report["deliveries"]
    assert ended["status"] == "settling"
    settled = one(feed.desk.timer(WINDOW_END + EPOCH), DeliverySettled)
    assert settled.delivery_id == delivery_id
    assert (ended["delivered"], ended["required"]) == (settled.delivered, settled.required)


def test_settled_deliveries_from_nodes_are_listed_with_what_the_exchange_paid() -> None:
    plain = account(77)  # sells without nodes (SetCapacity): never listed
    feed = Feed(BOB, CAROL, plain)
    live = SettledDeliveries(feed.desk.ex)  # fed every event, as the gateway releases them
    restarted: SettledDeliveries | None = None  # made from the open deliveries mid-way

    def feed_events(events: Iterable[Any], ts: int) -> None:
        for event in events:
            live.on_event(event, ts)
            if restarted is not None:
                restarted.on_event(event, ts)

    feed.register(node(1), BOB, 4)
    feed.register(node(2), BOB, 4)
    feed.register(node(5), CAROL, 4)
    feed.epoch(2, [node(1), node(2), node(5)])
    feed.desk.rest(BOB, GPU_SPOT, SELL, 6, 2600)
    feed.desk.rest(CAROL, GPU_SPOT, SELL, 2, 2600)
    for epoch in (3, 4, 5):  # Carol's node goes dark: her ask fills on no node at all
        feed.epoch(epoch, [node(1), node(2)])
    feed_events(feed.desk.place(ALICE, GPU_SPOT, BUY, 8, 2600), feed.desk.ts)
    feed.desk.capacity(plain, "GPU.H100", 5)
    feed.desk.rest(plain, GPU_SPOT, SELL, 2, 2600)
    feed_events(feed.desk.place(ALICE, GPU_SPOT, BUY, 2, 2600), feed.desk.ts)
    sellers = {d.seller: d for d in feed.desk.ex.deliveries.values()}
    assert sellers[CAROL].allocation == [] and sellers[plain].allocation is None
    restarted = SettledDeliveries(feed.desk.ex)
    for epoch in range(12, 24):  # node 2 attests the first half of the window only
        feed.epoch(epoch, [node(1)] + ([node(2)] if epoch < 18 else []))
    events = feed.desk.timer(WINDOW_END + EPOCH)
    feed_events(events, WINDOW_END + EPOCH)
    paid = {e.delivery_id: e for e in of_type(events, DeliverySettled)}
    assert len(paid) == 3

    def listed(seller: str, delivered: int, required: int) -> dict[str, Any]:
        delivery = sellers[seller]
        outcome = paid[delivery.delivery_id]
        assert (outcome.delivered, outcome.required) == (delivered, required)
        return {
            "delivery_id": delivery.delivery_id, "symbol": GPU_SPOT, "seller": seller,
            "qty": delivery.qty, "window_start": WINDOW_START, "window_end": WINDOW_END,
            "settled_ns": WINDOW_END + EPOCH, "delivered": delivered, "required": required,
            "delivered_ppm": delivered * 1_000_000 // required,
            "seller_paid": outcome.seller_paid, "seller_fee": outcome.seller_fee,
            "buyer_refund": outcome.buyer_refund,
            "buyer_compensation": outcome.buyer_compensation,
            "bond_released": outcome.bond_released,
        }

    expected = [listed(CAROL, 0, 2 * 12), listed(BOB, 4 * 12 + 2 * 6, 6 * 12)]  # newest first
    assert expected[0]["buyer_compensation"] > 0 and expected[1]["buyer_refund"] > 0
    assert providers_report(feed.desk.ex, feed.history, feed.desk.ts, live)["settled"] == \
        expected
    assert list(restarted.recent) == expected


def test_only_the_latest_settlements_are_kept_newest_first() -> None:
    feed = Feed(BOB)
    settled = SettledDeliveries(feed.desk.ex, kept=2)
    feed.register(node(1), BOB, 4)
    feed.epoch(2, [node(1)])
    feed.desk.rest(BOB, GPU_SPOT, SELL, 3, 2600)
    for _ in range(3):
        for event in feed.desk.place(ALICE, GPU_SPOT, BUY, 1, 2600):
            settled.on_event(event, feed.desk.ts)
    for event in feed.desk.timer(WINDOW_END + EPOCH):
        settled.on_event(event, WINDOW_END + EPOCH)
    assert [d["delivery_id"] for d in settled.recent] == [3, 2]
