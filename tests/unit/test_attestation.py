"""Attestations made and checked in Python against ``UptimeRegistry.verifyAttestation`` on
web3's in-process chain: the collector and the contract accept the same 100 attestations,
and both refuse each of them once any field is tampered with."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_hash.auto import keccak
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract

from chain_bridge import attestation
from chain_bridge.attestation import (
    HALF_N,
    SECP256K1_N,
    Attestation,
    address_of,
    attest,
    digest,
    recover,
    sign,
    solve,
    target_of,
)
from chain_bridge.collector import NS, Collector, Reason
from chain_bridge.contracts import contract_at, deploy

DIFFICULTY = 16
NODES = 10
EPOCHS = 10  # x NODES = 100 attestations
EPOCH_NS = 60 * NS
GPU_H100 = b"GPU.H100".ljust(32, b"\0")
TX_GAS = 500_000


@dataclass
class Registry:
    w3: Web3
    contract: Contract
    keys: list[bytes]
    chain_id: int
    address: str  # lower-case
    target: int

    def verify(self, att: Attestation) -> bool:
        return bool(self.contract.functions.verifyAttestation(
            Web3.to_checksum_address(att.node), att.epoch, bytes.fromhex(att.beacon[2:]),
            att.nonce, bytes.fromhex(att.signature[2:])).call())

    def collector(self) -> Collector:
        collector = Collector(chain_id=self.chain_id, registry=self.address, target=self.target,
                              epoch_ns=EPOCH_NS, burst=1_000)
        for key in self.keys:
            collector.register(address_of(key), "0x" + "01" * 20, "GPU.H100", 8)
        return collector


@pytest.fixture(scope="module")
def registry() -> Registry:
    w3 = Web3(EthereumTesterProvider())
    deployer, provider, *_ = list(w3.eth.accounts)
    contract = contract_at(w3, "UptimeRegistry",
                           deploy(w3, "UptimeRegistry", DIFFICULTY, sender=deployer))
    keys = [keccak(f"node {i}".encode()) for i in range(NODES)]
    for key in keys:
        tx = contract.functions.registerNode(Web3.to_checksum_address(address_of(key)),
                                             GPU_H100, 8).transact({"from": provider,
                                                                    "gas": TX_GAS})
        assert w3.eth.wait_for_transaction_receipt(tx)["status"] == 1
    target = int(contract.functions.target().call())
    assert target == target_of(DIFFICULTY)
    return Registry(w3, contract, keys, int(w3.eth.chain_id), contract.address.lower(), target)


def beacon_of(epoch: int) -> bytes:
    return keccak(f"beacon {epoch}".encode())


@pytest.fixture(scope="module")
def attestations(registry: Registry) -> list[Attestation]:
    """NODES x EPOCHS attestations, epoch by epoch."""
    return [attest(key, registry.chain_id, registry.address, epoch, beacon_of(epoch),
                   registry.target)
            for epoch in range(1, EPOCHS + 1) for key in registry.keys]


def epochs_of(collector: Collector, atts: list[Attestation]) -> Iterator[list[Attestation]]:
    """Opens each epoch of ``atts`` in turn and yields its attestations."""
    for epoch in range(1, EPOCHS + 1):
        collector.open_epoch(epoch, "0x" + beacon_of(epoch).hex(), epoch * EPOCH_NS,
                             (epoch + 1) * EPOCH_NS)
        yield [att for att in atts if att.epoch == epoch]


def test_digest_is_the_contracts(registry: Registry) -> None:
    node = address_of(registry.keys[0])
    for epoch, nonce in [(0, 0), (12, 345), (2**64 - 1, 2**64 - 1)]:
        on_chain = registry.contract.functions.attestationDigest(
            Web3.to_checksum_address(node), epoch, beacon_of(epoch), nonce).call()
        ours = digest(registry.chain_id, registry.address, node, epoch, beacon_of(epoch), nonce)
        assert ours == on_chain


def test_solve_finds_the_first_nonce_below_the_target(registry: Registry) -> None:
    node = address_of(registry.keys[0])
    args = (registry.chain_id, registry.address, node, 7, beacon_of(7))
    for start in (0, 1_000, 2**64 - 100):
        solution = solve(*args, target_of(DIFFICULTY), start)
        assert solution is not None
        nonce, found = solution
        assert found == digest(*args, nonce)
        assert int.from_bytes(found, "big") < target_of(DIFFICULTY)
        assert all(int.from_bytes(digest(*args, n), "big") >= target_of(DIFFICULTY)
                   for n in range(start, nonce))
    with pytest.raises(ValueError, match="no nonce"):
        solve(*args, 1, 2**64 - 3)  # three nonces left: none below 1
    stop = threading.Event()
    stop.set()
    assert solve(*args, 1, stop=stop) is None


def test_signatures_are_eth_accounts() -> None:
    key = keccak(b"a key")
    found = keccak(b"a digest")
    expected = Account.sign_message(encode_defunct(primitive=found), key).signature
    assert sign(key, found) == "0x" + bytes(expected).hex()
    assert recover(found, bytes(expected)) == address_of(key) == Account.from_key(key) \
        .address.lower()


def test_the_collector_and_the_contract_accept_the_same_100(
        registry: Registry, attestations: list[Attestation]) -> None:
    assert len(attestations) == 100
    collector = registry.collector()
    for epoch_atts in epochs_of(collector, attestations):
        for att in epoch_atts:
            now = att.epoch * EPOCH_NS + NS
            verdict = collector.submit(att, now)
            assert verdict.accepted, verdict
            assert verdict.digest == "0x" + digest(
                registry.chain_id, registry.address, att.node, att.epoch,
                bytes.fromhex(att.beacon[2:]), att.nonce).hex()
            assert registry.verify(att)
            assert collector.submit(att, now).reason is Reason.DUPLICATE
        assert collector.attested(epoch_atts[0].epoch) == {address_of(k) for k in registry.keys}


def _flip(hex_text: str, bit: int) -> str:
    raw = bytearray(bytes.fromhex(hex_text[2:]))
    raw[bit // 8] ^= 1 << (bit % 8)
    return "0x" + raw.hex()


def tamperings(att: Attestation, other_node: str) -> dict[str, Attestation]:
    r = msgspec.structs.replace
    s = int(att.signature[66:130], 16)
    v = int(att.signature[130:], 16)
    twin = att.signature[:66] + f"{SECP256K1_N - s:064x}{55 - v:02x}"  # same key, other v
    return {
        "nonce": r(att, nonce=att.nonce + 1),
        "beacon": r(att, beacon=_flip(att.beacon, att.nonce % 256)),
        "epoch": r(att, epoch=att.epoch + 1),
        "node": r(att, node=other_node),
        "signature r": r(att, signature=_flip(att.signature, att.nonce % 256)),
        "signature s": r(att, signature=_flip(att.signature, 256 + att.nonce % 256)),
        "signature v": r(att, signature=att.signature[:130]
                         + ("1b" if att.signature.endswith("1c") else "1c")),
        "malleable twin": r(att, signature=twin),
    }


def test_tampering_with_any_field_makes_both_refuse(
        registry: Registry, attestations: list[Attestation]) -> None:
    """Every attestation tampered with, each way; the contract sees a quarter of them (an
    eth_call on py-evm takes tens of milliseconds)."""
    collector = registry.collector()
    nodes = [address_of(key) for key in registry.keys]
    refusals: dict[str, set[Reason]] = {}
    for epoch_atts in epochs_of(collector, attestations):
        for i, att in enumerate(epoch_atts):
            now = att.epoch * EPOCH_NS + NS
            other = nodes[(i + 1) % len(nodes)]
            # tampered before the genuine one, which would make them all duplicates
            for what, tampered in tamperings(att, other).items():
                verdict = collector.submit(tampered, now)
                assert not verdict.accepted, (what, tampered)
                assert verdict.reason is not None
                refusals.setdefault(what, set()).add(verdict.reason)
                if (att.epoch + i) % 4 == 0:
                    assert not registry.verify(tampered), (what, tampered)
            assert collector.submit(att, now).accepted
    assert refusals["beacon"] == {Reason.WRONG_BEACON}
    assert refusals["epoch"] == {Reason.UNKNOWN_EPOCH}
    assert refusals["signature v"] == refusals["malleable twin"] == {Reason.BAD_SIGNATURE}
    # a changed digest misses the target 15 times in 16, and fails the signature otherwise
    assert refusals["nonce"] == {Reason.ABOVE_TARGET, Reason.BAD_SIGNATURE}
    # (the last node's neighbour, the first, has attested the epoch already)
    assert refusals["node"] == {Reason.ABOVE_TARGET, Reason.BAD_SIGNATURE, Reason.DUPLICATE}


def test_signatures_the_contract_refuses_are_refused(registry: Registry,
                                                     attestations: list[Attestation]) -> None:
    att = attestations[0]
    found = digest(registry.chain_id, registry.address, att.node, att.epoch,
                   bytes.fromhex(att.beacon[2:]), att.nonce)
    signature = bytes.fromhex(att.signature[2:])
    bad = {
        "short": signature[:64],
        "long": signature + b"\0",
        "v 0": signature[:64] + bytes([signature[64] - 27]),
        "v 29": signature[:64] + bytes([29]),
        "s above half": signature[:32] + (HALF_N + 1).to_bytes(32, "big") + signature[64:],
        "r zero": bytes(32) + signature[32:],
        "s zero": signature[:32] + bytes(32) + signature[64:],
        "r = n": SECP256K1_N.to_bytes(32, "big") + signature[32:],
    }
    collector = registry.collector()
    collector.open_epoch(att.epoch, att.beacon, 0, EPOCH_NS)
    for what, sig in bad.items():
        with pytest.raises(ValueError):
            recover(found, sig)
        assert not registry.verify(msgspec.structs.replace(att, signature="0x" + sig.hex()))
        verdict = collector.submit(msgspec.structs.replace(att, signature="0x" + sig.hex()), 0)
        expected = Reason.BAD_SIGNATURE if len(sig) == 65 else Reason.MALFORMED
        assert verdict.reason is expected, what
    assert collector.submit(att, 0).accepted


def test_keccak_is_eth_hashs_on_every_thread() -> None:
    data = [bytes(range(n % 256)) * (n // 256 + 1) for n in range(0, 600, 7)]
    expected = [keccak(d) for d in data]
    results: list[list[bytes]] = [[] for _ in range(4)]

    def run(i: int) -> None:
        for _ in range(20):
            results[i] = [attestation.keccak256(d) for d in data]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result == expected for result in results)
