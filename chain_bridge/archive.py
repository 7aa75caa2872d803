"""`AttestationArchive`: the accepted attestations and the batches that committed them, kept
by the chain bridge so that any attested node-epoch can be proved later.

Each clearing batch commits, in ``ClearingHouse.attestationsRoots(batchId)``, the Merkle root
of the attestations the engine recorded in its period (`chain_bridge.batches`). The engine
drops a batch once the chain has confirmed it, and it never held an attestation's beacon or
signature; the archive keeps both halves: the full attestation when the collector accepts it
(before it is sequenced), and the batch's list of attestations when the chain confirms it.
From these `AttestationArchive.proof` gives everything a third party needs to check one
node-epoch on chain: ``UptimeRegistry.verifyAttestation`` with the node, epoch, beacon, nonce
and signature, and ``ClearingHouse.verifyProof`` with the batch's root, the leaf and its
proof.

The archive is an SQLite database (Python's ``sqlite3``, WAL journal): the records live on
disk, not in memory, so it grows with the exchange's history without growing the process,
and a proof is two indexed lookups. Two tables:

* ``accepted (node, epoch, beacon, nonce, signature, digest)``: each attestation accepted
  (an identical repeat, submitted again after a restart, is kept once);
* ``committed (batch_id, position, node, epoch, nonce, digest)``: each confirmed batch's
  attestations in their committed order (enough to rebuild its root). A batch is recorded
  once; one with no attestations is not recorded.

Nonces are uint64 and SQLite integers int64, so nonces are stored as decimal text. Each record
is committed on its own (``synchronous=NORMAL``): a process crash loses nothing, a power loss
at most the last records. A crash between the two halves costs nothing: an attestation
sequenced is recorded first, and a batch whose confirmation was lost is confirmed again by
the restarted bridge (recorded once). One instance is used by one thread at a time. A
database error (a full disk, say) is an `ArchiveError`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from chain_bridge.attestation import Attestation
from chain_bridge.batches import attestation_proof, attestations_root
from engine.clearing import BatchAttestation, ClearingBatch

MAX_INT64 = (1 << 63) - 1
"""The largest epoch SQLite stores as an integer (the engine's epochs are int64 too)."""
SCHEMA = """
CREATE TABLE IF NOT EXISTS accepted (
    node TEXT NOT NULL, epoch INTEGER NOT NULL, beacon TEXT NOT NULL, nonce TEXT NOT NULL,
    signature TEXT NOT NULL, digest TEXT NOT NULL,
    UNIQUE (node, epoch, nonce, digest, beacon, signature));
CREATE TABLE IF NOT EXISTS committed (
    batch_id INTEGER NOT NULL, position INTEGER NOT NULL, node TEXT NOT NULL,
    epoch INTEGER NOT NULL, nonce TEXT NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (batch_id, position));
CREATE INDEX IF NOT EXISTS committed_node_epoch ON committed (node, epoch, batch_id);
"""


ArchiveError = sqlite3.Error
"""What the archive raises when the database fails (the proofs it would keep are lost)."""


class AttestationArchive:
    """The archive at ``path`` (its directory is created; an existing archive is opened)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit unless BEGIN; opened on the chain service's thread, then used on the
        # event loop's: one thread at a time, never two at once
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the database (the archive takes no more records)."""
        self._db.close()

    def __enter__(self) -> AttestationArchive:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- records ------------------------------------------------------------------------

    def accepted(self, attestation: Attestation, digest: str) -> None:
        """The collector accepted ``attestation``, whose digest is ``digest`` (0x hex)."""
        self._db.execute(
            "INSERT OR IGNORE INTO accepted VALUES (?, ?, ?, ?, ?, ?)",
            (attestation.node.lower(), attestation.epoch, attestation.beacon.lower(),
             str(attestation.nonce), attestation.signature.lower(), digest.lower()))

    def confirmed(self, batch: ClearingBatch) -> None:
        """The chain confirmed ``batch``: its attestations are provable (once per batch)."""
        if not batch.attestations:
            return
        with self._db:  # one transaction: the whole batch or none of it
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO committed VALUES (?, ?, ?, ?, ?, ?)",
                [(batch.batch_id, position, a.node, a.epoch, str(a.nonce), a.digest)
                 for position, a in enumerate(batch.attestations)])

    def _batch(self, batch_id: int) -> list[BatchAttestation]:
        rows = self._db.execute(
            "SELECT node, epoch, nonce, digest FROM committed WHERE batch_id = ? "
            "ORDER BY position", (batch_id,))
        return [BatchAttestation(node, epoch, int(nonce), digest)
                for node, epoch, nonce, digest in rows]

    # --- proofs -------------------------------------------------------------------------

    def proof(self, node: str, epoch: int) -> dict[str, Any] | None:
        """What proves ``node``'s attestation for ``epoch``, as JSON-able values (0x hex):

        * in a confirmed batch: ``pending`` False, ``batch_id``, ``node``, ``epoch``,
          ``beacon``, ``nonce``, ``signature``, ``digest``, ``leaf``, ``proof`` (the sibling
          hashes) and ``root`` (rebuilt from the batch's leaves). ``beacon`` and
          ``signature`` are None if the archive never saw it accepted (a batch confirmed from
          an engine whose acceptance predates the archive);
        * accepted but in no confirmed batch yet: ``pending`` True and the attestation's
          fields (``node``, ``epoch``, ``beacon``, ``nonce``, ``signature``, ``digest``);
        * never accepted: None.
        """
        if not 0 <= epoch <= MAX_INT64:
            return None  # no epoch that large was ever accepted
        key = (node.lower(), epoch)
        accepted = self._db.execute(
            "SELECT beacon, nonce, signature, digest FROM accepted WHERE node = ? AND "
            "epoch = ? ORDER BY rowid", key).fetchall()
        found = self._db.execute(
            "SELECT batch_id FROM committed WHERE node = ? AND epoch = ? ORDER BY batch_id "
            "LIMIT 1", key).fetchone()
        if found is None:
            if not accepted:
                return None
            beacon, nonce, signature, digest = accepted[0]  # the engine records the first
            return {"pending": True, "node": key[0], "epoch": epoch, "beacon": beacon,
                    "nonce": int(nonce), "signature": signature, "digest": digest}
        (batch_id,) = found
        batch = self._batch(batch_id)
        entry = next(a for a in batch if (a.node, a.epoch) == key)
        full = next((a for a in accepted if (int(a[1]), a[3]) == (entry.nonce, entry.digest)),
                    None)
        leaf, siblings = attestation_proof(batch, *key)
        return {
            "pending": False,
            "batch_id": batch_id,
            "node": entry.node,
            "epoch": entry.epoch,
            "beacon": full[0] if full is not None else None,
            "nonce": entry.nonce,
            "signature": full[2] if full is not None else None,
            "digest": entry.digest,
            "leaf": "0x" + leaf.hex(),
            "proof": ["0x" + sibling.hex() for sibling in siblings],
            "root": "0x" + attestations_root(batch).hex(),
        }
