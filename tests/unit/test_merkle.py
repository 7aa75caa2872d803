"""Merkle trees with sorted pairs: the Python side against hand-built trees, properties of
every proof, and the clearing house's on-chain check agreeing with Python."""

from __future__ import annotations

import pytest
from eth_hash.auto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract

from chain_bridge.contracts import contract_at, deploy
from chain_bridge.merkle import EMPTY_ROOT, hash_pair, merkle_proof, merkle_root, verify_proof

LEAVES = [keccak(bytes([i])) for i in range(5)]
leaf_lists = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40)


def parent(a: bytes, b: bytes) -> bytes:
    return keccak(min(a, b) + max(a, b))


@pytest.fixture(scope="module")
def house() -> Contract:
    w3 = Web3(EthereumTesterProvider())
    deployer = w3.eth.accounts[0]
    token = deploy(w3, "CollateralToken", sender=deployer)
    return contract_at(
        w3,
        "ClearingHouse",
        deploy(w3, "ClearingHouse", token, deployer, deployer, 0, sender=deployer),
    )


def test_small_trees_by_hand() -> None:
    a, b, c, d, e = LEAVES
    assert merkle_root([]) == EMPTY_ROOT == bytes(32)
    assert merkle_root([a]) == a
    assert merkle_root([a, b]) == parent(a, b) == merkle_root([b, a])
    # an odd node is carried up unchanged
    assert merkle_root([a, b, c]) == parent(parent(a, b), c)
    assert merkle_root([a, b, c, d]) == parent(parent(a, b), parent(c, d))
    assert merkle_root(LEAVES) == parent(parent(parent(a, b), parent(c, d)), e)
    assert hash_pair(a, b) == hash_pair(b, a) == parent(a, b)


def test_proofs_by_hand() -> None:
    a, b, c, d, e = LEAVES
    assert merkle_proof([a], 0) == []
    assert merkle_proof(LEAVES, 0) == [b, parent(c, d), e]
    assert merkle_proof(LEAVES, 3) == [c, parent(a, b), e]
    assert merkle_proof(LEAVES, 4) == [parent(parent(a, b), parent(c, d))]  # carried up twice
    assert merkle_proof([a, b, c], 2) == [parent(a, b)]


def test_bad_input() -> None:
    with pytest.raises(IndexError):
        merkle_proof(LEAVES, 5)
    with pytest.raises(IndexError):
        merkle_proof([], 0)
    with pytest.raises(ValueError, match="32 bytes"):
        merkle_root([b"short"])


@given(leaves=leaf_lists, data=st.data())
def test_every_proof_verifies_and_no_tampered_one_does(
    leaves: list[bytes], data: st.DataObject
) -> None:
    root = merkle_root(leaves)
    for index, leaf in enumerate(leaves):
        assert verify_proof(root, leaf, merkle_proof(leaves, index))
    index = data.draw(st.integers(0, len(leaves) - 1), label="index")
    proof = merkle_proof(leaves, index)
    bit = data.draw(st.integers(0, 255), label="bit")
    flip = (1 << bit).to_bytes(32, "big")
    tampered_leaf = bytes(x ^ y for x, y in zip(leaves[index], flip, strict=True))
    assert not verify_proof(root, tampered_leaf, proof)
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1), label="proof element")
        tampered = bytes(x ^ y for x, y in zip(proof[at], flip, strict=True))
        assert not verify_proof(root, leaves[index], [*proof[:at], tampered, *proof[at + 1 :]])
        assert not verify_proof(root, leaves[index], proof[:-1])


@settings(max_examples=15, deadline=None)
@given(leaves=leaf_lists, data=st.data())
def test_the_contract_agrees(house: Contract, leaves: list[bytes], data: st.DataObject) -> None:
    root = merkle_root(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1), label="index")
    proof = merkle_proof(leaves, index)
    verify = house.functions.verifyProof
    assert verify(root, leaves[index], proof).call() is True
    other = data.draw(st.binary(min_size=32, max_size=32), label="other leaf")
    assert verify(root, other, proof).call() is verify_proof(root, other, proof)
