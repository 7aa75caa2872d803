"""Signing and recovery for any key and digest: a signature recovers its key's address, and
no single flipped bit of it recovers that address again."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chain_bridge.attestation import SECP256K1_N, address_of, recover, sign

keys = st.integers(min_value=1, max_value=SECP256K1_N - 1).map(lambda k: k.to_bytes(32, "big"))
digests = st.binary(min_size=32, max_size=32)


@settings(max_examples=300, deadline=None)
@given(keys, digests)
def test_a_signature_recovers_its_key(key: bytes, found: bytes) -> None:
    signature = bytes.fromhex(sign(key, found)[2:])
    assert len(signature) == 65 and signature[64] in (27, 28)
    assert recover(found, signature) == address_of(key)


@settings(max_examples=300, deadline=None)
@given(keys, digests, st.integers(min_value=0, max_value=65 * 8 - 1))
def test_a_flipped_bit_never_recovers_the_node(key: bytes, found: bytes, bit: int) -> None:
    signature = bytearray.fromhex(sign(key, found)[2:])
    signature[bit // 8] ^= 1 << (bit % 8)
    try:
        signer = recover(found, bytes(signature))
    except ValueError:  # refused outright: s too high, v not 27/28, r or s out of range
        return
    assert signer != address_of(key)


@settings(max_examples=100, deadline=None)
@given(keys, digests, st.integers(min_value=0, max_value=32 * 8 - 1))
def test_a_signature_over_another_digest_does_not_recover_the_node(
        key: bytes, found: bytes, bit: int) -> None:
    other = bytearray(found)
    other[bit // 8] ^= 1 << (bit % 8)
    signature = bytes.fromhex(sign(key, found)[2:])
    try:
        signer = recover(bytes(other), signature)
    except ValueError:
        return
    assert signer != address_of(key)
