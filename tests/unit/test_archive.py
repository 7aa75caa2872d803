"""`AttestationArchive` on disk: proofs from what it recorded, after a reopen, after a crash
that left a transaction unfinished; a batch recorded once; unknown and pending node-epochs
told apart; uint64 nonces."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from eth_hash.auto import keccak

from chain_bridge.archive import AttestationArchive
from chain_bridge.attestation import Attestation
from chain_bridge.batches import attestation_leaf, attestation_proof, attestations_root
from chain_bridge.merkle import verify_proof
from engine.clearing import BatchAttestation, ClearingBatch


def node(n: int) -> str:
    return "0x" + keccak(f"node {n}".encode())[:20].hex()


def attestation(n: int, epoch: int) -> Attestation:
    return Attestation(node(n), epoch, "0x" + keccak(f"beacon {epoch}".encode()).hex(),
                       1000 * n + epoch, "0x" + keccak(f"sig {n} {epoch}".encode()).hex() * 2
                       + "1b")


def digest_of(att: Attestation) -> str:
    return "0x" + keccak(f"digest {att.node} {att.epoch} {att.nonce}".encode()).hex()


def batch(batch_id: int, atts: list[Attestation]) -> ClearingBatch:
    return ClearingBatch(batch_id, batch_id, True, 0, [], [], [],
                         [BatchAttestation(a.node, a.epoch, a.nonce, digest_of(a))
                          for a in atts])


def record(archive: AttestationArchive, batch_id: int, atts: list[Attestation],
           ) -> ClearingBatch:
    """Accept ``atts``, then confirm them as batch ``batch_id``."""
    for att in atts:
        archive.accepted(att, digest_of(att))
    cut = batch(batch_id, atts)
    archive.confirmed(cut)
    return cut


def assert_proves(archive: AttestationArchive, cut: ClearingBatch, att: Attestation) -> None:
    found = archive.proof(att.node.upper().replace("0X", "0x"), att.epoch)
    assert found is not None and found["pending"] is False
    entry = BatchAttestation(att.node, att.epoch, att.nonce, digest_of(att))
    leaf, proof = attestation_proof(cut, att.node, att.epoch)
    root = attestations_root(cut)
    assert found == {
        "pending": False, "batch_id": cut.batch_id, "node": att.node, "epoch": att.epoch,
        "beacon": att.beacon, "nonce": att.nonce, "signature": att.signature,
        "digest": digest_of(att), "leaf": "0x" + attestation_leaf(entry).hex(),
        "proof": ["0x" + p.hex() for p in proof], "root": "0x" + root.hex()}
    assert leaf == attestation_leaf(entry)
    assert verify_proof(bytes.fromhex(found["root"][2:]), bytes.fromhex(found["leaf"][2:]),
                        [bytes.fromhex(p[2:]) for p in found["proof"]])


def test_each_confirmed_attestation_has_a_proof_of_its_batch(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "chain" / "attestations.sqlite"
    with AttestationArchive(path) as archive:
        first = record(archive, 3, [attestation(n, 7) for n in range(5)])
        second = record(archive, 4, [attestation(n, 8) for n in range(3)])
        for cut, atts in ((first, range(5)), (second, range(3))):
            for n in atts:
                assert_proves(archive, cut, attestation(n, cut.attestations[0].epoch))
        lone = record(archive, 5, [attestation(9, 9)])
        found = archive.proof(node(9), 9)
        assert found is not None and found["proof"] == [] and found["leaf"] == found["root"]
        assert_proves(archive, lone, attestation(9, 9))
    assert path.exists()


def test_a_reload_proves_the_same(tmp_path: Path) -> None:
    path = tmp_path / "attestations.sqlite"
    with AttestationArchive(path) as archive:
        cut = record(archive, 1, [attestation(n, 2) for n in range(4)])
        archive.accepted(attestation(0, 3), digest_of(attestation(0, 3)))
        before = {(n, e): archive.proof(node(n), e) for n in range(4) for e in (2, 3)}
    with AttestationArchive(path) as again:
        assert {(n, e): again.proof(node(n), e) for n in range(4) for e in (2, 3)} == before
        for n in range(4):
            assert_proves(again, cut, attestation(n, 2))
        assert (again.proof(node(0), 3) or {}).get("pending") is True


def test_a_crash_mid_batch_leaves_none_of_it_and_the_archive_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "attestations.sqlite"
    with AttestationArchive(path) as archive:
        cut = record(archive, 1, [attestation(n, 2) for n in range(3)])
        later = [attestation(5, 3), attestation(6, 3)]
        for att in later:
            archive.accepted(att, digest_of(att))
    # another connection dies holding half of batch 2's rows in an open transaction
    crashed = sqlite3.connect(path, isolation_level=None)
    crashed.execute("BEGIN")
    crashed.execute("INSERT INTO committed VALUES (2, 0, ?, 3, '5003', ?)",
                    (later[0].node, digest_of(later[0])))
    crashed.close()  # never committed
    with AttestationArchive(path) as archive:
        for n in range(3):
            assert_proves(archive, cut, attestation(n, 2))
        assert (archive.proof(node(5), 3) or {}).get("pending") is True
        again = record(archive, 2, later)  # the restarted bridge confirms it again
    with AttestationArchive(path) as archive:
        for att in later:
            assert_proves(archive, again, att)


def test_a_nonce_past_int64_is_kept_exactly(tmp_path: Path) -> None:
    with AttestationArchive(tmp_path / "attestations.sqlite") as archive:
        att = Attestation(node(1), 2, attestation(1, 2).beacon, 2**64 - 1,
                          attestation(1, 2).signature)
        cut = record(archive, 1, [att])
        assert_proves(archive, cut, att)
        assert archive.proof(node(1), 2**64 - 1) is None  # past the engine's epochs


def test_a_batch_is_recorded_once_and_one_without_attestations_not_at_all(
        tmp_path: Path) -> None:
    path = tmp_path / "attestations.sqlite"
    with AttestationArchive(path) as archive:
        cut = record(archive, 1, [attestation(n, 2) for n in range(3)])
        archive.confirmed(cut)
        archive.confirmed(cut)
        archive.confirmed(batch(2, []))
        for att in (attestation(n, 2) for n in range(3)):  # submitted again after a restart
            archive.accepted(att, digest_of(att))
    with AttestationArchive(path) as archive:
        archive.confirmed(cut)  # confirmed again by a restarted bridge
        assert_proves(archive, cut, attestation(1, 2))
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM accepted").fetchone() == (3,)
        assert db.execute("SELECT DISTINCT batch_id FROM committed").fetchall() == [(1,)]
        assert db.execute("SELECT count(*) FROM committed").fetchone() == (3,)


def test_unknown_and_pending_node_epochs(tmp_path: Path) -> None:
    with AttestationArchive(tmp_path / "attestations.sqlite") as archive:
        assert archive.proof(node(1), 2) is None
        att = attestation(1, 2)
        archive.accepted(att, digest_of(att))
        assert archive.proof(node(1), 2) == {
            "pending": True, "node": att.node, "epoch": 2, "beacon": att.beacon,
            "nonce": att.nonce, "signature": att.signature, "digest": digest_of(att)}
        assert archive.proof(node(1), 3) is None
        assert archive.proof(node(2), 2) is None
        archive.confirmed(batch(1, [attestation(3, 2)]))  # another node's batch
        assert (archive.proof(node(1), 2) or {}).get("pending") is True
        cut = record(archive, 2, [att])
        assert_proves(archive, cut, att)


def test_a_batch_confirmed_without_its_acceptance_still_proves_its_leaf(
        tmp_path: Path) -> None:
    with AttestationArchive(tmp_path / "attestations.sqlite") as archive:
        cut = batch(1, [attestation(1, 2), attestation(2, 2)])
        archive.confirmed(cut)
        found = archive.proof(node(2), 2)
        assert found is not None
        assert found["beacon"] is None and found["signature"] is None
        leaf, proof = attestation_proof(cut, node(2), 2)
        assert found["leaf"] == "0x" + leaf.hex()
        assert found["proof"] == ["0x" + p.hex() for p in proof]
        assert found["root"] == "0x" + attestations_root(cut).hex()


def test_the_proof_names_the_attestation_the_batch_committed(tmp_path: Path) -> None:
    """Two acceptances of one node-epoch (different nonces): the batch's one is proved."""
    with AttestationArchive(tmp_path / "attestations.sqlite") as archive:
        first, second = attestation(1, 2), Attestation(node(1), 2, attestation(1, 2).beacon,
                                                       77, attestation(2, 2).signature)
        archive.accepted(first, digest_of(first))
        archive.accepted(second, digest_of(second))
        cut = batch(1, [second])
        archive.confirmed(cut)
        found = archive.proof(node(1), 2)
        assert found is not None
        assert (found["nonce"], found["signature"]) == (77, second.signature)
