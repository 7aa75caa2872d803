"""The Python side of the CMX contracts: compiled artifacts, deployment, and the hashes the
contracts compute, recomputed off chain.

The artifacts in ``chain_bridge/artifacts`` are generated from ``chain_bridge/contracts/*.sol``
by ``npm run compile`` and committed, so using the contracts needs no Node.js.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from eth_abi.abi import encode
from eth_hash.auto import keccak
from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract import Contract

ARTIFACTS_DIR = Path(__file__).parent / "artifacts"

DELTAS_TYPE = "(address,int256)[]"
WITHDRAWALS_TYPE = "(uint64,uint64,address,uint256)[]"
BATCH_HEADER_TYPES = (
    "uint64",  # batchId
    "bytes32",  # prevBatchHash
    "uint64",  # creditedDepositId
    "bytes32",  # keccak256(abi.encode(deltas))
    "bytes32",  # keccak256(abi.encode(withdrawals))
    "bytes32",  # fillsRoot
    "bytes32",  # attestationsRoot
    "bool",  # lastChunk
)


class Artifact(msgspec.Struct, frozen=True, rename="camel"):
    """One compiled contract: its ABI and creation and runtime bytecode (0x hex)."""

    contract_name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    solc_version: str


@functools.cache
def load_artifact(name: str) -> Artifact:
    """The committed artifact of contract ``name`` (e.g. ``"ClearingHouse"``)."""
    path = ARTIFACTS_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no artifact for contract {name!r} in {ARTIFACTS_DIR}")
    return msgspec.json.decode(path.read_bytes(), type=Artifact)


def deploy(w3: Web3, name: str, *args: Any, sender: ChecksumAddress) -> ChecksumAddress:
    """Deploys contract ``name`` with constructor ``args`` from ``sender``; waits for the
    receipt and returns the new contract's address."""
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx_hash = factory.constructor(*args).transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    if receipt["status"] != 1 or receipt["contractAddress"] is None:
        raise RuntimeError(f"deploying {name} failed (transaction {tx_hash.hex()})")
    return receipt["contractAddress"]


def contract_at(w3: Web3, name: str, address: str) -> Contract:
    """A web3 handle on the deployed contract ``name`` at ``address``."""
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_artifact(name).abi)


def batch_hash(
    batch_id: int,
    prev_hash: bytes,
    credited_deposit_id: int,
    deltas: Sequence[tuple[str, int]],
    withdrawals: Sequence[tuple[int, int, str, int]],
    fills_root: bytes,
    attestations_root: bytes,
    last_chunk: bool,
) -> bytes:
    """The hash ``ClearingHouse.settleBatch`` records for one batch chunk, given the same
    arguments: ``deltas`` as ``(account, amount)``, ``withdrawals`` as
    ``(withdrawal_id, forced_request_id, account, amount)``."""
    deltas_hash = keccak(encode([DELTAS_TYPE], [list(deltas)]))
    withdrawals_hash = keccak(encode([WITHDRAWALS_TYPE], [list(withdrawals)]))
    header = (
        batch_id,
        prev_hash,
        credited_deposit_id,
        deltas_hash,
        withdrawals_hash,
        fills_root,
        attestations_root,
        last_chunk,
    )
    return keccak(encode(list(BATCH_HEADER_TYPES), list(header)))
