"""Merkle trees over 32-byte leaves, as the clearing house checks them on chain.

The convention is OpenZeppelin's ``MerkleProof``: a parent is
``keccak256(min(a, b) ‖ max(a, b))``, so a proof is just the list of siblings, with no
left/right flags. Levels are built pairwise from the left; an odd node at the end of a level
is carried up unchanged (and so has no sibling at that level). The empty tree's root is 32
zero bytes and a one-leaf tree's root is the leaf itself.

Leaves are taken as given: callers hash their records into leaves, and should not let a leaf
be the 64-byte preimage of an inner node.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_hash.auto import keccak

EMPTY_ROOT = bytes(32)


def hash_pair(a: bytes, b: bytes) -> bytes:
    """The parent of two nodes: keccak256 of the smaller followed by the larger."""
    return keccak(a + b) if a <= b else keccak(b + a)


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first, root last (at least one level)."""
    for leaf in leaves:
        if len(leaf) != 32:
            raise ValueError(f"a Merkle leaf is 32 bytes, got {len(leaf)}")
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        level = levels[-1]
        parents = [hash_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            parents.append(level[-1])
        levels.append(parents)
    return levels


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The root of the tree over ``leaves`` (32-byte values, in order)."""
    if not leaves:
        return EMPTY_ROOT
    return _levels(leaves)[-1][0]


def merkle_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The siblings from ``leaves[index]`` up to the root, for ``verify_proof``."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} out of range for {len(leaves)} leaves")
    proof = []
    for level in _levels(leaves)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        index //= 2
    return proof


def verify_proof(root: bytes, leaf: bytes, proof: Sequence[bytes]) -> bool:
    """Whether ``proof`` leads from ``leaf`` to ``root`` (same check as the contract)."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node == root
