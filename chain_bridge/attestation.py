"""Uptime attestations as ``UptimeRegistry.verifyAttestation`` checks them, made and checked
as fast as Python allows: a node solves at a few hundred thousand hashes a second, and the
collector's checks cost little more than libsecp256k1's signature recovery.

An attestation proves that ``node`` was alive in ``epoch``: its digest

    keccak256("CMX-UPTIME" ‖ chain id (32) ‖ registry (20) ‖ node (20) ‖ epoch (8) ‖
              beacon (32) ‖ nonce (8))

lies below the target (``type(uint256).max / difficulty``), and ``signature`` is the node
key's EIP-191 personal signature over that 32-byte digest: 65 bytes r ‖ s ‖ v, v 27 or 28,
s at most half the curve order.

Speed. Keccak runs on pycryptodome's C keccak driven directly: the solver absorbs the
constant 122-byte prefix once and, per nonce, copies that state, absorbs the 8 nonce bytes
and takes the digest: three C calls, 2.5 to 4.5 times eth_hash's rate measured side by side
(eth_hash builds a hash object per call; pycryptodome's keccak object has no ``copy``).
Recovery calls libsecp256k1 through coincurve's bindings into reused buffers, without
building its key objects. This module needs no web3, so the node agent starts quickly.
"""

from __future__ import annotations

import importlib
import re
import threading
from typing import Annotated, Any

import msgspec
from coincurve import PrivateKey
from coincurve.context import GLOBAL_CONTEXT

DOMAIN = b"CMX-UPTIME"
MAX_UINT64 = 2**64 - 1
MAX_UINT256 = 2**256 - 1
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = SECP256K1_N // 2  # the contract's HALF_CURVE_ORDER: a larger s is refused
EIP191_PREFIX = b"\x19Ethereum Signed Message:\n32"
DEFAULT_DIFFICULTY = 350_000
"""About one second of one core for `solve` on the machines here (370k hashes/s median,
280k to 450k on the shared 2-core machine): a solve takes ``difficulty`` hashes on average, its
time spread exponentially (p50 ≈ 0.7, p90 ≈ 2.3, p99 ≈ 4.6 times the mean). ``cmx bench
attest`` measures it."""

ADDRESS_PATTERN = "^0x[0-9a-f]{40}$"
HASH_PATTERN = "^0x[0-9a-f]{64}$"
SIGNATURE_PATTERN = "^0x[0-9a-f]{130}$"
Address = Annotated[str, msgspec.Meta(pattern=ADDRESS_PATTERN)]
Hash32 = Annotated[str, msgspec.Meta(pattern=HASH_PATTERN)]
SignatureHex = Annotated[str, msgspec.Meta(pattern=SIGNATURE_PATTERN)]
# msgspec bounds ints within int64 only: `Attestation.well_formed` checks the upper bound
Uint64 = Annotated[int, msgspec.Meta(ge=0)]
STOP_CHECK = 8192
"""Nonces between two looks at a solve's stop flag (about 20 ms)."""

_ADDRESS = re.compile(ADDRESS_PATTERN)
_HASH = re.compile(HASH_PATTERN)
_SIGNATURE = re.compile(SIGNATURE_PATTERN)


class Attestation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One node's proof of uptime for one epoch, as the agent submits it: the node's address,
    the beacon and the signature as lower-case 0x hex."""

    node: Address
    epoch: Uint64
    beacon: Hash32
    nonce: Uint64
    signature: SignatureHex

    def well_formed(self) -> bool:
        """Whether every field has its wire form (a decoded `Attestation` always has; one
        built in Python is not checked when it is built)."""
        return (
            _ADDRESS.match(self.node) is not None
            and _HASH.match(self.beacon) is not None
            and _SIGNATURE.match(self.signature) is not None
            and type(self.epoch) is int
            and type(self.nonce) is int
            and 0 <= self.epoch <= MAX_UINT64
            and 0 <= self.nonce <= MAX_UINT64
        )


def target_of(difficulty: int) -> int:
    """The registry's target for ``difficulty``: ``type(uint256).max / difficulty``."""
    if difficulty <= 0:
        raise ValueError(f"difficulty must be positive, got {difficulty}")
    return MAX_UINT256 // difficulty


def digest_head(chain_id: int, registry: str) -> bytes:
    """The start of every digest input of one registry: domain, chain id, registry."""
    return DOMAIN + chain_id.to_bytes(32, "big") + address_bytes(registry)


def digest_prefix(head: bytes, node: bytes, epoch: int, beacon: bytes) -> bytes:
    """The digest input up to the nonce, all a solve keeps constant: ``head`` (`digest_head`)
    ‖ the node's 20 address bytes ‖ epoch ‖ beacon."""
    if len(beacon) != 32:
        raise ValueError(f"a beacon is 32 bytes, got {len(beacon)}")
    return head + node + epoch.to_bytes(8, "big") + beacon


def digest_at(prefix: bytes, nonce: int) -> bytes:
    """The digest of `digest_prefix` ``prefix`` with ``nonce``."""
    return keccak256(prefix + nonce.to_bytes(8, "big"))


def digest(chain_id: int, registry: str, node: str, epoch: int, beacon: bytes,
           nonce: int) -> bytes:
    """``UptimeRegistry.attestationDigest``: keccak256 of "CMX-UPTIME" ‖ chain id (32 bytes)
    ‖ registry address ‖ node address ‖ epoch (8 bytes) ‖ beacon (32 bytes) ‖ nonce (8)."""
    head = digest_head(chain_id, registry)
    return digest_at(digest_prefix(head, address_bytes(node), epoch, beacon), nonce)


def solve(chain_id: int, registry: str, node: str, epoch: int, beacon: bytes, target: int,
          start: int = 0, *, stop: threading.Event | None = None) -> tuple[int, bytes] | None:
    """The first nonce from ``start`` whose digest is below ``target``, with that digest;
    None if ``stop`` was set first (it is looked at every `STOP_CHECK` nonces)."""
    if not 0 <= start <= MAX_UINT64:
        raise ValueError(f"a nonce is a uint64, got start {start}")
    if not 0 < target <= MAX_UINT256:
        raise ValueError(f"a target is a positive uint256, got {target}")
    # a 32-byte big-endian digest compares as bytes exactly as its number does
    below = target.to_bytes(32, "big")
    head = digest_head(chain_id, registry)
    prefix = _State(digest_prefix(head, address_bytes(node), epoch, beacon))
    work = _State()
    src, dst, out = prefix.pointer.get(), work.pointer.get(), work.out
    copy, absorb, finish = _lib.keccak_copy, _lib.keccak_absorb, _lib.keccak_digest
    raw = _raw.get_raw_buffer
    for first in range(start, MAX_UINT64 + 1, STOP_CHECK):
        if stop is not None and stop.is_set():
            return None
        for nonce in range(first, min(first + STOP_CHECK, MAX_UINT64 + 1)):
            copy(src, dst)
            absorb(dst, nonce.to_bytes(8, "big"), _EIGHT)
            finish(dst, out, _THIRTY_TWO, _KECCAK_PADDING)
            if raw(out) < below:
                return nonce, raw(out)
    raise ValueError(f"no nonce from {start} reaches the target")


def signed_message(digest: bytes) -> bytes:
    """The hash an EIP-191 personal signature over the 32-byte ``digest`` signs."""
    return keccak256(EIP191_PREFIX + digest)


def sign(key: bytes, digest: bytes) -> str:
    """``key``'s EIP-191 signature over ``digest``: 0x hex of r ‖ s ‖ v (v 27 or 28, low s,
    as libsecp256k1 always signs)."""
    if len(digest) != 32:
        raise ValueError(f"a digest is 32 bytes, got {len(digest)}")
    compact = PrivateKey(key).sign_recoverable(signed_message(digest), hasher=None)
    return "0x" + compact[:64].hex() + f"{compact[64] + 27:02x}"


def recover(digest: bytes, signature: bytes) -> str:
    """The address (lower-case 0x hex) whose key made ``signature`` over ``digest``, as the
    contract's ``ecrecover`` finds it. `ValueError` for what the contract refuses: not 65
    bytes, v other than 27 or 28, s above half the curve order, r or s out of range."""
    return address_of_public(recover_public(digest, signature))


def recover_public(digest: bytes, signature: bytes) -> bytes:
    """The 64-byte public key (x ‖ y) that `recover` turns into an address."""
    if len(signature) != 65 or len(digest) != 32:
        raise ValueError("a signature is 65 bytes and a digest 32")
    v = signature[64]
    if v not in {27, 28}:
        raise ValueError(f"v must be 27 or 28, got {v}")
    if int.from_bytes(signature[32:64], "big") > HALF_N:
        raise ValueError("s is in the upper half of the curve order")
    ctx, scratch = GLOBAL_CONTEXT.ctx, _scratch()
    if not _secp.secp256k1_ecdsa_recoverable_signature_parse_compact(
            ctx, scratch.signature, signature[:64], v - 27):
        raise ValueError("r or s is not below the curve order")
    if not _secp.secp256k1_ecdsa_recover(ctx, scratch.public, scratch.signature,
                                         signed_message(digest)):
        raise ValueError("the signature recovers no key")
    scratch.size[0] = 65
    _secp.secp256k1_ec_pubkey_serialize(ctx, scratch.serialized, scratch.size, scratch.public,
                                        _UNCOMPRESSED)
    public: bytes = _ffi.buffer(scratch.serialized, 65)[1:]
    return public


def address_of_public(public: bytes) -> str:
    """The address (lower-case 0x hex) of a 64-byte public key."""
    return "0x" + keccak256(public)[12:].hex()


def address_of(key: bytes) -> str:
    """The address (lower-case 0x hex) of the secp256k1 private ``key``."""
    return address_of_public(PrivateKey(key).public_key.format(compressed=False)[1:])


def attest(key: bytes, chain_id: int, registry: str, epoch: int, beacon: bytes, target: int,
           start: int = 0) -> Attestation:
    """Solves and signs ``key``'s node's attestation for ``epoch``."""
    node = address_of(key)
    solution = solve(chain_id, registry, node, epoch, beacon, target, start)
    assert solution is not None  # no stop flag
    nonce, found = solution
    return Attestation(node=node, epoch=epoch, beacon="0x" + beacon.hex(), nonce=nonce,
                       signature=sign(key, found))


def keccak256(data: bytes) -> bytes:
    """keccak-256 of ``data`` (on this thread's reusable state)."""
    state = _scratch().keccak
    pointer = state.pointer.get()
    _lib.keccak_reset(pointer)
    _lib.keccak_absorb(pointer, data, _raw.c_size_t(len(data)))
    _lib.keccak_digest(pointer, state.out, _THIRTY_TWO, _KECCAK_PADDING)
    hashed: bytes = _raw.get_raw_buffer(state.out)
    return hashed


def address_bytes(address: str) -> bytes:
    """The 20 bytes of a 0x hex ``address``."""
    raw = bytes.fromhex(address.removeprefix("0x"))
    if len(raw) != 20:
        raise ValueError(f"an address is 20 bytes, got {address!r}")
    return raw


# --- the C libraries ----------------------------------------------------------------------

# pycryptodome's C keccak, through its loader (ctypes or cffi, whichever it uses; its stubs
# leave out part of the loader module, so it is reached through importlib)
_raw: Any = importlib.import_module("Crypto.Util._raw_api")
_lib: Any = _raw.load_pycryptodome_raw_lib(
    "Crypto.Hash._keccak",
    """
    int keccak_init(void **state, size_t capacity_bytes, uint8_t rounds);
    int keccak_destroy(void *state);
    int keccak_absorb(void *state, const uint8_t *in, size_t len);
    int keccak_digest(void *state, uint8_t *digest, size_t len, uint8_t padding);
    int keccak_copy(const void *src, void *dst);
    int keccak_reset(void *state);
    """,
)
_KECCAK_CAPACITY = _raw.c_size_t(64)  # keccak-256: capacity twice the digest
_KECCAK_ROUNDS = _raw.c_ubyte(24)
_KECCAK_PADDING = _raw.c_ubyte(0x01)  # original Keccak, as Ethereum uses (SHA-3 pads with 0x06)
_EIGHT = _raw.c_size_t(8)
_THIRTY_TWO = _raw.c_size_t(32)


class _State:
    """A keccak-256 state in C (freed with the object) and a 32-byte output buffer."""

    __slots__ = ("out", "pointer")

    def __init__(self, absorbed: bytes = b"") -> None:
        handle = _raw.VoidPointer()
        if _lib.keccak_init(handle.address_of(), _KECCAK_CAPACITY, _KECCAK_ROUNDS):
            raise MemoryError("keccak_init failed")
        self.pointer = _raw.SmartPointer(handle.get(), _lib.keccak_destroy)
        self.out = _raw.create_string_buffer(32, None)
        if absorbed:
            _lib.keccak_absorb(self.pointer.get(), absorbed, _raw.c_size_t(len(absorbed)))


# coincurve's compiled bindings (a module without stubs: reached through importlib)
_bindings = importlib.import_module("coincurve._libsecp256k1")
_ffi: Any = _bindings.ffi
_secp: Any = _bindings.lib
_UNCOMPRESSED = _secp.SECP256K1_EC_UNCOMPRESSED


class _Scratch:
    """One thread's reusable C buffers: a keccak state, and libsecp256k1's recovery
    arguments (allocating them per call costs more than the C calls around them)."""

    __slots__ = ("keccak", "public", "serialized", "signature", "size")

    def __init__(self) -> None:
        self.keccak = _State()
        self.signature = _ffi.new("secp256k1_ecdsa_recoverable_signature *")
        self.public = _ffi.new("secp256k1_pubkey *")
        self.serialized = _ffi.new("unsigned char[65]")
        self.size = _ffi.new("size_t *")


_per_thread = threading.local()


def _scratch() -> _Scratch:
    scratch: _Scratch | None = getattr(_per_thread, "scratch", None)
    if scratch is None:
        scratch = _per_thread.scratch = _Scratch()
    return scratch
