"""The collector's verdicts, one reason code at a time: forged, replayed, late, wrong-beacon
and wrong-key attestations among them."""

from __future__ import annotations

import msgspec
import pytest
from eth_hash.auto import keccak

from chain_bridge.attestation import (
    Attestation,
    address_of,
    attest,
    digest,
    sign,
    target_of,
)
from chain_bridge.collector import NS, Collector, Reason, Verdict

CHAIN_ID = 31337
REGISTRY = "0x" + "5f" * 20
PROVIDER = "0x" + "01" * 20
EPOCH_NS = 10 * NS
TARGET = target_of(4)
KEYS = [keccak(f"node key {i}".encode()) for i in range(4)]
NODES = [address_of(key) for key in KEYS]
STRANGER = keccak(b"not registered")


def beacon(epoch: int) -> bytes:
    return keccak(f"beacon {epoch}".encode())


def start(epoch: int) -> int:
    return epoch * EPOCH_NS


def make_collector(**options: int) -> Collector:
    collector = Collector(chain_id=CHAIN_ID, registry=REGISTRY, target=TARGET,
                          **{"epoch_ns": EPOCH_NS, **options})
    for node in NODES:
        collector.register(node, PROVIDER, "GPU.H100", 8)
    return collector


def open_epochs(collector: Collector, *epochs: int) -> None:
    for epoch in epochs:
        collector.open_epoch(epoch, "0x" + beacon(epoch).hex(), start(epoch), start(epoch + 1))


def att_of(key: bytes, epoch: int, beacon_bytes: bytes | None = None) -> Attestation:
    return attest(key, CHAIN_ID, REGISTRY, epoch,
                  beacon(epoch) if beacon_bytes is None else beacon_bytes, TARGET)


def missing_the_target(key: bytes, epoch: int) -> Attestation:
    """A correctly signed attestation whose digest is not below the target."""
    node = address_of(key)
    for nonce in range(1_000):
        found = digest(CHAIN_ID, REGISTRY, node, epoch, beacon(epoch), nonce)
        if int.from_bytes(found, "big") >= TARGET:
            return Attestation(node, epoch, "0x" + beacon(epoch).hex(), nonce, sign(key, found))
    raise AssertionError("every nonce hit the target")


@pytest.fixture
def collector() -> Collector:
    collector = make_collector()
    open_epochs(collector, 1)
    return collector


def reason(verdict: Verdict) -> Reason | None:
    return verdict.reason


def test_an_attestation_is_accepted_once(collector: Collector) -> None:
    att = att_of(KEYS[0], 1)
    verdict = collector.submit(att, start(1) + NS)
    assert verdict.accepted and verdict.reason is None and verdict.attestation == att
    assert verdict.digest == "0x" + digest(CHAIN_ID, REGISTRY, att.node, 1, beacon(1),
                                           att.nonce).hex()
    assert collector.attested(1) == {att.node}
    # replayed, as it is or solved again from another nonce
    assert reason(collector.submit(att, start(1) + 2 * NS)) is Reason.DUPLICATE
    again = attest(KEYS[0], CHAIN_ID, REGISTRY, 1, beacon(1), TARGET, start=att.nonce + 1)
    assert again.nonce != att.nonce
    assert reason(collector.submit(again, start(1) + 2 * NS)) is Reason.DUPLICATE
    # other nodes are not affected
    assert collector.submit(att_of(KEYS[1], 1), start(1) + 2 * NS).accepted
    assert collector.attested(1) == {NODES[0], NODES[1]}


def test_unknown_node(collector: Collector) -> None:
    verdict = collector.submit(att_of(STRANGER, 1), start(1))
    assert verdict.reason is Reason.UNKNOWN_NODE and not verdict.accepted
    assert address_of(STRANGER) in verdict.detail


def test_forged_and_wrong_key(collector: Collector) -> None:
    genuine = att_of(KEYS[0], 1)
    found = digest(CHAIN_ID, REGISTRY, genuine.node, 1, beacon(1), genuine.nonce)
    # another registered node signs node 0's work, and a stranger does
    for key in (KEYS[1], STRANGER):
        forged = msgspec.structs.replace(genuine, signature=sign(key, found))
        verdict = collector.submit(forged, start(1))
        assert verdict.reason is Reason.BAD_SIGNATURE
        assert address_of(key) in verdict.detail
    # node 1's own attestation claimed for node 0
    stolen = msgspec.structs.replace(att_of(KEYS[1], 1), node=NODES[0])
    assert collector.submit(stolen, start(1)).reason in (Reason.ABOVE_TARGET,
                                                          Reason.BAD_SIGNATURE)
    # none of that stops the node itself
    assert collector.submit(genuine, start(1)).accepted


def test_a_signature_the_contract_refuses(collector: Collector) -> None:
    att = att_of(KEYS[0], 1)
    raw = bytes.fromhex(att.signature[2:])
    for signature in (raw[:64] + bytes([raw[64] - 27]), bytes(32) + raw[32:]):
        verdict = collector.submit(msgspec.structs.replace(att, signature="0x" + signature.hex()),
                                   start(1))
        assert verdict.reason is Reason.BAD_SIGNATURE, verdict
    assert collector.submit(att, start(1)).accepted


def test_above_target(collector: Collector) -> None:
    verdict = collector.submit(missing_the_target(KEYS[0], 1), start(1))
    assert verdict.reason is Reason.ABOVE_TARGET
    assert int(verdict.digest, 16) >= TARGET


def test_wrong_beacon(collector: Collector) -> None:
    # solved (and signed) for another beacon: the next epoch's, guessed early
    att = att_of(KEYS[0], 1, beacon_bytes=beacon(2))
    assert reason(collector.submit(att, start(1))) is Reason.WRONG_BEACON


def test_unknown_epoch() -> None:
    collector = make_collector()
    att = att_of(KEYS[0], 1)
    assert reason(collector.submit(att, start(1))) is Reason.UNKNOWN_EPOCH  # none open yet
    open_epochs(collector, 1)
    assert reason(collector.submit(att_of(KEYS[0], 2), start(1))) is Reason.UNKNOWN_EPOCH
    assert collector.submit(att, start(1)).accepted


def test_late_and_the_grace_period() -> None:
    collector = make_collector()
    assert collector.grace_ns == NS  # a tenth of 10 s, at least 1 s
    assert make_collector(epoch_ns=300 * NS).grace_ns == 30 * NS
    assert make_collector(epoch_ns=2 * NS).grace_ns == NS
    assert make_collector(grace_ns=0).grace_ns == 0
    open_epochs(collector, 1, 2)
    deadline = start(2)
    # the previous epoch, within its deadline's grace and just past it
    assert collector.submit(att_of(KEYS[0], 1), deadline + NS).accepted
    assert reason(collector.submit(att_of(KEYS[1], 1), deadline + NS + 1)) is Reason.LATE
    # the current epoch past its deadline and grace (the next epoch not opened in time)
    assert reason(collector.submit(att_of(KEYS[2], 2), start(3) + NS + 1)) is Reason.LATE
    assert collector.submit(att_of(KEYS[2], 2), start(3) + NS).accepted
    # two epochs back, however soon
    open_epochs(collector, 3)
    replayed = att_of(KEYS[3], 1)
    assert reason(collector.submit(replayed, start(3))) is Reason.LATE
    # and once forgotten
    collector.forget(3)
    assert collector.epochs.keys() == {3} and collector.previous is None
    assert reason(collector.submit(att_of(KEYS[3], 2), start(3))) is Reason.LATE
    assert collector.attested(2) == frozenset()


def test_replayed_in_a_later_epoch(collector: Collector) -> None:
    att = att_of(KEYS[0], 1)
    assert collector.submit(att, start(1)).accepted
    open_epochs(collector, 2, 3)
    assert reason(collector.submit(att, start(3))) is Reason.LATE
    # the epoch field changed to the current one: the beacon then gives it away...
    moved = msgspec.structs.replace(att, epoch=3)
    assert reason(collector.submit(moved, start(3))) is Reason.WRONG_BEACON
    # ...and with the beacon changed too, the digest (and so the target or signature)
    moved = msgspec.structs.replace(moved, beacon="0x" + beacon(3).hex())
    assert reason(collector.submit(moved, start(3))) in (Reason.ABOVE_TARGET,
                                                         Reason.BAD_SIGNATURE)


def test_inactive_node(collector: Collector) -> None:
    # deregistered during epoch 1: it still attests epoch 1, not epoch 2
    collector.deregister(NODES[0], start(1) + NS)
    assert collector.nodes[NODES[0]].deregister_ns == start(1) + NS
    assert collector.submit(att_of(KEYS[0], 1), start(1) + 2 * NS).accepted
    open_epochs(collector, 2)
    assert reason(collector.submit(att_of(KEYS[0], 2), start(2))) is Reason.INACTIVE_NODE
    # effective exactly at an epoch's start: not active in it
    collector.deregister(NODES[1], start(2))
    assert reason(collector.submit(att_of(KEYS[1], 2), start(2))) is Reason.INACTIVE_NODE
    assert collector.submit(att_of(KEYS[2], 2), start(2)).accepted


def test_rate_limited_before_the_signature_is_checked() -> None:
    collector = make_collector(burst=2)
    open_epochs(collector, 1)
    genuine = att_of(KEYS[0], 1)
    forged = msgspec.structs.replace(genuine, signature=att_of(KEYS[1], 1).signature)
    t = start(1)
    for _ in range(2):
        assert reason(collector.submit(forged, t)) is Reason.BAD_SIGNATURE
    assert reason(collector.submit(forged, t)) is Reason.RATE_LIMITED
    assert reason(collector.submit(genuine, t)) is Reason.RATE_LIMITED
    # what fails a cheaper check takes no token, and other nodes have their own buckets
    assert reason(collector.submit(missing_the_target(KEYS[0], 1), t)) is Reason.ABOVE_TARGET
    assert collector.submit(att_of(KEYS[1], 1), t).accepted
    # two tokens per epoch length: one is back after half an epoch
    assert reason(collector.submit(genuine, t + EPOCH_NS // 2 - 1)) is Reason.RATE_LIMITED
    assert collector.submit(genuine, t + EPOCH_NS // 2).accepted


def test_malformed(collector: Collector) -> None:
    att = att_of(KEYS[0], 1)
    r = msgspec.structs.replace
    for bad in (r(att, node=att.node.upper().replace("0X", "0x")), r(att, node=att.node[:-2]),
                r(att, beacon=att.beacon[2:] + "00"), r(att, signature=att.signature[:-2]),
                r(att, signature=att.signature + "00"), r(att, nonce=-1),
                r(att, nonce=2**64), r(att, epoch=2**64), r(att, signature="0x" + "zz" * 65)):
        assert reason(collector.submit(bad, start(1))) is Reason.MALFORMED, bad
    assert collector.submit(att, start(1)).accepted
    # decoding applies the same rules
    wire = msgspec.json.encode(att)
    assert msgspec.json.decode(wire, type=Attestation) == att
    for field, value in (("node", att.node.upper()), ("nonce", -1), ("signature", "0x00"),
                         ("extra", 1)):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({**msgspec.to_builtins(att), field: value}, Attestation)


def test_epochs_only_move_forward_and_nodes_register_once(collector: Collector) -> None:
    with pytest.raises(ValueError, match="does not follow"):
        collector.open_epoch(1, "0x" + beacon(1).hex(), 0, 1)
    with pytest.raises(ValueError, match="already registered"):
        collector.register(NODES[0].upper().replace("0X", "0x"), PROVIDER, "GPU.H100", 8)
    with pytest.raises(KeyError):
        collector.deregister(address_of(STRANGER), 0)
    with pytest.raises(ValueError):
        Collector(chain_id=1, registry=REGISTRY, target=TARGET, epoch_ns=0)


def test_every_reason_has_a_test() -> None:
    tested = {
        Reason.MALFORMED, Reason.UNKNOWN_NODE, Reason.INACTIVE_NODE, Reason.UNKNOWN_EPOCH,
        Reason.LATE, Reason.WRONG_BEACON, Reason.DUPLICATE, Reason.ABOVE_TARGET,
        Reason.RATE_LIMITED, Reason.BAD_SIGNATURE,
    }
    assert tested == set(Reason)
    assert all(code.value == code.name.lower() for code in Reason)
