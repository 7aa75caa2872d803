"""Attestation proofs on the in-process EVM, end to end: nodes registered in the
UptimeRegistry attest (solved and signed at a tiny difficulty), the collector accepts, the
archive records each before the engine sequences it, clearing batches commit them and
settle, and the archive's proof of every node-epoch holds on chain (``verifyAttestation``,
``verifyProof`` against ``attestationsRoots``), directly and through the ``/chain`` desk's
``verify_attestation`` op; a tampered leaf, proof or signature does not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_hash.auto import keccak
from web3 import Web3
from web3.contract import Contract

from chain_bridge.archive import AttestationArchive
from chain_bridge.attestation import Attestation, address_of, attest
from chain_bridge.batches import attestation_leaf, attestations_root
from chain_bridge.chain import ETHER, embedded
from chain_bridge.collector import NS, Collector
from chain_bridge.deployment import deploy
from chain_bridge.merkle import verify_proof
from chain_bridge.wallet import WalletDesk
from engine.clearing import BatchAttestation, ClearingBatch
from engine.commands import AttestationAccepted, BatchConfirmed, OpenEpoch, RegisterNode
from engine.events import AttestationRecorded
from tests.chain_helpers import ChainDesk, send, user
from tests.exchange_helpers import DEC_1, of_type

DIFFICULTY = 16
NODES = 5
EPOCH_NS = 60 * NS
EPOCHS = (3, 4)  # each cut into a batch of its own
GPU_H100 = b"GPU.H100".ljust(32, b"\0")


def hexed(data: bytes) -> str:
    return "0x" + data.hex()


def raw(text: str) -> bytes:
    return bytes.fromhex(text[2:])


class Proved:
    """A chain with the contracts and registered nodes, an engine, a collector and an
    archive, wired as `cmx serve` wires them."""

    def __init__(self, tmp_path: Path) -> None:
        chain = embedded()
        operator = user(0xFFFF)
        chain.fund(operator.address, 1000 * ETHER)
        self.deployment = deploy(chain, operator, difficulty=DIFFICULTY)
        self.cd = ChainDesk(chain, deployment=self.deployment, operator=operator)
        self.registry: Contract = chain.contract("UptimeRegistry", self.deployment.registry)
        self.keys = [keccak(f"node {i}".encode()) for i in range(NODES)]
        self.nodes = [address_of(key) for key in self.keys]
        provider = user(7)
        chain.fund(provider.address, 10 * ETHER)
        for address in self.nodes:
            send(chain, provider, self.registry.functions.registerNode(
                Web3.to_checksum_address(address), GPU_H100, 8))
        registered = [c for c in self.cd.poll() if isinstance(c, RegisterNode)]
        assert sorted(c.node for c in registered) == sorted(self.nodes)
        self.target = int(self.registry.functions.target().call())
        self.collector = Collector(chain_id=chain.chain_id, registry=self.deployment.registry,
                                   target=self.target, epoch_ns=EPOCH_NS)
        for address in self.nodes:
            self.collector.register(address, provider.address, "GPU.H100", 8)
        self.archive = AttestationArchive(tmp_path / "chain" / "attestations.sqlite")
        self.desk = WalletDesk(chain, self.deployment)

    def beacon(self, epoch: int) -> bytes:
        return keccak(f"beacon {epoch}".encode())

    def run_epoch(self, epoch: int) -> list[Attestation]:
        """Open ``epoch``, have every node attest it, the collector accept and the engine
        record each; the attestations."""
        start = DEC_1 + epoch * EPOCH_NS
        beacon = hexed(self.beacon(epoch))
        self.cd.desk.apply(OpenEpoch(epoch, beacon, start, EPOCH_NS), max(start, self.cd.desk.ts))
        self.collector.open_epoch(epoch, beacon, start, start + EPOCH_NS)
        made = []
        for key in self.keys:
            att = attest(key, self.cd.chain.chain_id, self.deployment.registry, epoch,
                         self.beacon(epoch), self.target)
            verdict = self.collector.submit(att, start + NS)
            assert verdict.accepted, verdict
            self.archive.accepted(att, verdict.digest)  # before it is sequenced
            events = self.cd.desk.apply(AttestationAccepted(att.node, att.epoch, att.nonce,
                                                            verdict.digest))
            assert of_type(events, AttestationRecorded)
            made.append(att)
        return made

    def clear(self) -> ClearingBatch:
        """Cut and settle; the archive records each batch the chain confirms, as the
        service does before the engine drops it; the cut's batch."""
        (batch,) = of_type(self.cd.cut(), ClearingBatch)
        for _ in range(5):
            view = self.cd.view()
            for command in self.cd.bridge.poll(view):
                if isinstance(command, BatchConfirmed):
                    self.archive.confirmed(next(b for b in view.unconfirmed
                                                if b.batch_id == command.batch_id))
                self.cd.desk.apply(command)
            if not self.cd.ex.clearing.unconfirmed:
                break
        assert not self.cd.ex.clearing.unconfirmed and self.cd.bridge.halted is None
        return batch

    def verify_attestation(self, found: dict[str, Any]) -> bool:
        return bool(self.registry.functions.verifyAttestation(
            Web3.to_checksum_address(found["node"]), found["epoch"], raw(found["beacon"]),
            found["nonce"], raw(found["signature"])).call())

    def verify_proof(self, root: bytes, leaf: bytes, proof: list[bytes]) -> bool:
        return bool(self.cd.house.functions.verifyProof(root, leaf, proof).call())

    def root_on_chain(self, batch_id: int) -> bytes:
        return bytes(self.cd.house.functions.attestationsRoots(batch_id).call())


@pytest.fixture(scope="module")
def proved(tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[tuple[Proved, dict[int, Any]]]:
    """Two epochs attested by every node, each settled in its own batch."""
    world = Proved(tmp_path_factory.mktemp("proofs"))
    settled = {}
    for epoch in EPOCHS:
        atts = world.run_epoch(epoch)
        pending = world.archive.proof(atts[0].node, epoch)
        assert pending is not None and pending["pending"] is True
        settled[epoch] = (world.clear(), atts)
    yield world, settled
    world.archive.close()


def test_every_archived_proof_holds_on_chain(proved: tuple[Proved, dict[int, Any]]) -> None:
    world, settled = proved
    for epoch, (batch, atts) in settled.items():
        assert len(batch.attestations) == NODES
        root = world.root_on_chain(batch.batch_id)
        assert root == attestations_root(batch) != bytes(32)
        for att in atts:
            found = world.archive.proof(att.node, epoch)
            assert found is not None and found["pending"] is False
            assert found["batch_id"] == batch.batch_id
            assert (found["beacon"], found["nonce"], found["signature"]) == \
                (att.beacon, att.nonce, att.signature)
            assert raw(found["root"]) == root
            leaf = attestation_leaf(BatchAttestation(att.node, epoch, att.nonce,
                                                     found["digest"]))
            proof = [raw(p) for p in found["proof"]]
            assert raw(found["leaf"]) == leaf and proof  # five leaves: three levels
            assert verify_proof(root, leaf, proof)
            assert world.verify_proof(root, leaf, proof)
            assert world.verify_attestation(found)


def test_a_tampered_leaf_proof_or_attestation_fails_on_chain(
        proved: tuple[Proved, dict[int, Any]]) -> None:
    world, settled = proved
    batch, atts = settled[EPOCHS[0]]
    other_batch, _ = settled[EPOCHS[1]]
    root = world.root_on_chain(batch.batch_id)
    for att in atts:
        found = world.archive.proof(att.node, att.epoch)
        assert found is not None
        leaf, proof = raw(found["leaf"]), [raw(p) for p in found["proof"]]
        forged = attestation_leaf(BatchAttestation(att.node, att.epoch, att.nonce + 1,
                                                   found["digest"]))
        assert not world.verify_proof(root, forged, proof)
        bent = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
        assert not world.verify_proof(root, leaf, bent)
        assert not world.verify_proof(root, leaf, proof[:-1])
        assert not world.verify_proof(world.root_on_chain(other_batch.batch_id), leaf, proof)
        signature = raw(found["signature"])
        assert not world.verify_attestation(
            {**found, "signature": hexed(signature[:10] + bytes([signature[10] ^ 1])
                                         + signature[11:])})
        assert not world.verify_attestation({**found, "nonce": found["nonce"] + 1})
        assert not world.verify_attestation({**found, "epoch": found["epoch"] + 1})


def test_the_desk_answers_verify_attestation_with_the_chains_checks(
        proved: tuple[Proved, dict[int, Any]]) -> None:
    world, settled = proved
    batch, atts = settled[EPOCHS[1]]
    root = hexed(world.root_on_chain(batch.batch_id))
    for att in atts:
        found = world.archive.proof(att.node, att.epoch)
        assert found is not None
        request = {"op": "verify_attestation",
                   **{k: found[k] for k in ("node", "epoch", "beacon", "nonce", "signature",
                                            "batch_id", "leaf", "proof")}}
        assert world.desk.answer(request) == {"attestation_valid": True, "root": root,
                                              "proof_valid": True}
        bent = found["leaf"][:-1] + ("0" if found["leaf"][-1] != "0" else "1")
        assert world.desk.answer({**request, "leaf": bent}) == {
            "attestation_valid": True, "root": root, "proof_valid": False}
        assert world.desk.answer({**request, "nonce": att.nonce + 1})["attestation_valid"] \
            is False
        unsettled = world.desk.answer({**request, "batch_id": batch.batch_id + 10})
        assert unsettled == {"attestation_valid": True, "root": hexed(bytes(32)),
                             "proof_valid": False}
    found = world.archive.proof(atts[0].node, atts[0].epoch)
    assert found is not None
    request = {"op": "verify_attestation",
               **{k: found[k] for k in ("node", "epoch", "beacon", "nonce", "signature",
                                        "batch_id", "leaf", "proof")}}
    for bad in ({"node": "0x1234"}, {"epoch": -1}, {"epoch": 2**64}, {"nonce": "7"},
                {"batch_id": True}, {"beacon": found["beacon"][:-2]}, {"leaf": "abc"},
                {"proof": "0x00"}, {"proof": [found["leaf"]] * 65}, {"proof": ["0xzz"]},
                {"signature": "0x" + "00" * 2000}, {"signature": None}):
        reply = world.desk.answer({**request, **bad})
        assert set(reply) == {"error"}, (bad, reply)
