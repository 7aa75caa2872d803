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

The file is JSON lines, appended to and never rewritten, one record a line:

* ``{"type": "accepted", "node", "epoch", "beacon", "nonce", "signature", "digest"}``;
* ``{"type": "confirmed", "batch_id", "attestations": [[node, epoch, nonce, digest], ...]}``
  (the batch's attestations in their committed order: enough to rebuild its root). A batch
  is recorded once; one with no attestations is not recorded.

Each record is written with one ``write`` and no fsync: a process crash loses nothing, a
power loss may tear the last line, which the next load drops. Nothing else in the file is
forgiven (`ArchiveError`). A crash between the two halves costs nothing: an attestation
sequenced is recorded first, and a batch whose confirmation was lost is confirmed again by
the restarted bridge (recorded once). The records are held in memory; one instance is used
from one thread.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import msgspec

from chain_bridge.attestation import Attestation
from chain_bridge.batches import attestation_proof, attestations_root
from engine.clearing import BatchAttestation, ClearingBatch

log = logging.getLogger("cmx.archive")


class Accepted(msgspec.Struct, frozen=True, tag="accepted"):
    """An attestation the collector accepted, with its digest (0x hex)."""

    node: str
    epoch: int
    beacon: str
    nonce: int
    signature: str
    digest: str


class Confirmed(msgspec.Struct, frozen=True, tag="confirmed"):
    """A batch the chain confirmed, with the attestations its root commits."""

    batch_id: int
    attestations: list[BatchAttestation]


Record = Accepted | Confirmed

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Record)


class ArchiveError(ValueError):
    """The archive file holds something other than records (a torn last line aside)."""


class AttestationArchive:
    """The append-only archive at ``path`` (its directory is created; the records already
    there are loaded)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._accepted: dict[tuple[str, int], list[Accepted]] = {}
        self._batches: dict[int, list[BatchAttestation]] = {}
        self._batch_of: dict[tuple[str, int], int] = {}
        self._load()
        self._file = path.open("ab", buffering=0)

    def close(self) -> None:
        """Close the file (the archive takes no more records)."""
        self._file.close()

    def __enter__(self) -> AttestationArchive:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- records ------------------------------------------------------------------------

    def accepted(self, attestation: Attestation, digest: str) -> None:
        """The collector accepted ``attestation``, whose digest is ``digest`` (0x hex)."""
        record = Accepted(attestation.node.lower(), attestation.epoch, attestation.beacon,
                          attestation.nonce, attestation.signature.lower(), digest.lower())
        if record in self._accepted.get((record.node, record.epoch), ()):
            return  # submitted again after a restart: already here
        self._append(record)

    def confirmed(self, batch: ClearingBatch) -> None:
        """The chain confirmed ``batch``: its attestations are provable (once per batch)."""
        if not batch.attestations or batch.batch_id in self._batches:
            return
        self._append(Confirmed(batch.batch_id, list(batch.attestations)))

    def _append(self, record: Record) -> None:
        self._file.write(_encoder.encode(record) + b"\n")
        self._apply(record)

    def _apply(self, record: Record) -> None:
        if isinstance(record, Accepted):
            self._accepted.setdefault((record.node, record.epoch), []).append(record)
            return
        if record.batch_id in self._batches:
            return
        self._batches[record.batch_id] = record.attestations
        for entry in record.attestations:
            self._batch_of.setdefault((entry.node, entry.epoch), record.batch_id)

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        tail = lines.pop()  # what follows the last newline: empty unless a write was torn
        offset = 0
        for number, line in enumerate(lines, 1):
            try:
                self._apply(_decoder.decode(line))
            except msgspec.DecodeError as exc:
                raise ArchiveError(f"{self.path}, line {number}: {exc}") from exc
            offset += len(line) + 1
        if tail:
            try:  # a record complete but for its newline is kept
                record: Record | None = _decoder.decode(tail)
            except msgspec.DecodeError:
                record = None
            with self.path.open("r+b") as f:
                if record is None:
                    log.warning("%s: dropping a torn last line (%d bytes)", self.path,
                                len(tail))
                    f.truncate(offset)
                else:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
            if record is not None:
                self._apply(record)

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
        key = (node.lower(), epoch)
        accepted = self._accepted.get(key, [])
        batch_id = self._batch_of.get(key)
        if batch_id is None:
            if not accepted:
                return None
            first = accepted[0]  # the engine records the first it is sent, refuses repeats
            return {"pending": True, **msgspec.structs.asdict(first)}
        batch = self._batches[batch_id]
        entry = next(a for a in batch if (a.node, a.epoch) == key)
        full = next((a for a in accepted
                     if (a.nonce, a.digest) == (entry.nonce, entry.digest)), None)
        leaf, siblings = attestation_proof(batch, *key)
        return {
            "pending": False,
            "batch_id": batch_id,
            "node": entry.node,
            "epoch": entry.epoch,
            "beacon": full.beacon if full is not None else None,
            "nonce": entry.nonce,
            "signature": full.signature if full is not None else None,
            "digest": entry.digest,
            "leaf": "0x" + leaf.hex(),
            "proof": ["0x" + sibling.hex() for sibling in siblings],
            "root": "0x" + attestations_root(batch).hex(),
        }
