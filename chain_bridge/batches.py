"""Engine clearing batches as ``ClearingHouse.settleBatch`` arguments, and their Merkle leaves.

A fill's leaf is ``keccak256(abi.encode(symbol, tradeId, price, qty, buyer, seller, ts))``
(``string, uint64, int64, int64, address, address, uint64``); the batch's fills root is the
sorted-pair Merkle root of its fills in trade order (`chain_bridge.merkle`), so anyone holding
a fill and its proof can check it against ``fillsRoots(batchId)`` on chain with
``verifyFill``. An accepted attestation's leaf is
``keccak256(abi.encode(node, epoch, nonce, digest))`` (``address, uint64, uint64, bytes32``),
rooted the same way in the batch's ``attestationsRoots(batchId)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_abi.abi import encode
from eth_hash.auto import keccak
from web3 import Web3

from chain_bridge.contracts import batch_hash
from chain_bridge.merkle import merkle_proof, merkle_root
from engine.clearing import BatchAttestation, BatchFill, ClearingBatch

FILL_TYPES = ["string", "uint64", "int64", "int64", "address", "address", "uint64"]
ATTESTATION_TYPES = ["address", "uint64", "uint64", "bytes32"]


def fill_leaf(fill: BatchFill) -> bytes:
    """The Merkle leaf of one fill."""
    return keccak(
        encode(
            FILL_TYPES,
            [fill.symbol, fill.trade_id, fill.price, fill.qty, fill.buyer, fill.seller, fill.ts],
        )
    )


def fills_root(batch: ClearingBatch) -> bytes:
    """The Merkle root of the batch's fills (32 zero bytes when it has none)."""
    return merkle_root([fill_leaf(f) for f in batch.fills])


def fill_proof(batch: ClearingBatch, trade_id: int, symbol: str) -> tuple[bytes, list[bytes]]:
    """The leaf of one of the batch's fills and its Merkle proof."""
    leaves = [fill_leaf(f) for f in batch.fills]
    for index, fill in enumerate(batch.fills):
        if fill.trade_id == trade_id and fill.symbol == symbol:
            return leaves[index], merkle_proof(leaves, index)
    raise KeyError(f"no fill {symbol} #{trade_id} in batch {batch.batch_id}")


def attestation_leaf(attestation: BatchAttestation) -> bytes:
    """The Merkle leaf of one accepted attestation:
    ``keccak256(abi.encode(node, epoch, nonce, digest))``."""
    return keccak(encode(ATTESTATION_TYPES, [attestation.node, attestation.epoch,
                                             attestation.nonce,
                                             bytes.fromhex(attestation.digest[2:])]))


def attestation_leaves(attestations: Sequence[BatchAttestation]) -> list[bytes]:
    """The Merkle leaves of ``attestations``, in order."""
    return [attestation_leaf(a) for a in attestations]


def attestations_root(batch: ClearingBatch | Sequence[BatchAttestation]) -> bytes:
    """The Merkle root of the attestations a batch commits (zero when none): those of
    ``batch``, or the list given (a batch's ``attestations``, as `AttestationArchive` keeps
    them)."""
    return merkle_root(attestation_leaves(_attestations(batch)))


def attestation_proof(batch: ClearingBatch | Sequence[BatchAttestation], node: str,
                      epoch: int) -> tuple[bytes, list[bytes]]:
    """The leaf of one of a batch's attestations and its Merkle proof, from the batch or from
    its ``attestations`` list."""
    attestations = _attestations(batch)
    leaves = attestation_leaves(attestations)
    for index, attestation in enumerate(attestations):
        if attestation.node == node.lower() and attestation.epoch == epoch:
            return leaves[index], merkle_proof(leaves, index)
    where = f"batch {batch.batch_id}" if isinstance(batch, ClearingBatch) else "the batch"
    raise KeyError(f"no attestation of {node} for epoch {epoch} in {where}")


def _attestations(batch: ClearingBatch | Sequence[BatchAttestation],
                  ) -> Sequence[BatchAttestation]:
    return batch.attestations if isinstance(batch, ClearingBatch) else batch


def settle_arguments(batch: ClearingBatch, prev_hash: bytes) -> list[Any]:
    """The ``settleBatch`` arguments for ``batch`` after the batch hashed ``prev_hash``."""
    return [
        batch.batch_id,
        prev_hash,
        batch.credited_deposit_id,
        [(Web3.to_checksum_address(d.account), d.amount) for d in batch.deltas],
        [
            (w.withdrawal_id, w.forced_request_id, Web3.to_checksum_address(w.account), w.amount)
            for w in batch.withdrawals
        ],
        fills_root(batch),
        attestations_root(batch),
        batch.last_chunk,
    ]


def hash_of(batch: ClearingBatch, prev_hash: bytes) -> bytes:
    """The hash the contract records for ``batch`` settled after ``prev_hash``."""
    return batch_hash(*settle_arguments(batch, prev_hash))
