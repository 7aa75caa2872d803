"""Where the exchange's contracts live on a chain, and how they get there.

A deployment is kept as JSON (``chain/deployment.json`` in the data directory, or a file
given with ``--deployment``): the chain id, the addresses of the collateral token, the
ClearingHouse and the UptimeRegistry, the operator, and the block the contracts were
deployed in (where log scans start). On a development chain a missing deployment is made on
the spot; on any other chain it must be given.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from eth_account.signers.local import LocalAccount

from chain_bridge.attestation import DEFAULT_DIFFICULTY
from chain_bridge.chain import Chain, ChainError
from chain_bridge.extension import FORCED_WITHDRAWAL_DELAY_S
from engine.ledger import FEE_ACCOUNT


class Deployment(msgspec.Struct, frozen=True):
    """The contracts of one exchange on one chain."""

    chain_id: int
    token: str
    clearing_house: str
    registry: str
    operator: str
    block: int


def load(path: Path) -> Deployment:
    """The deployment recorded in ``path``."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=Deployment)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ChainError(f"cannot read the deployment {path}: {exc}") from exc


def save(deployment: Deployment, path: Path) -> None:
    """Record ``deployment`` in ``path`` (written whole, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(msgspec.json.format(msgspec.json.encode(deployment)) + b"\n")
    temporary.replace(path)


def deploy(
    chain: Chain,
    operator: LocalAccount,
    *,
    forced_withdrawal_delay_s: int = FORCED_WITHDRAWAL_DELAY_S,
    difficulty: int = DEFAULT_DIFFICULTY,
) -> Deployment:
    """Deploy the collateral token, the ClearingHouse and the UptimeRegistry from
    ``operator`` (which mints the token and settles batches)."""
    block = chain.w3.eth.block_number
    token = chain.deploy(operator, "CollateralToken")
    house = chain.deploy(
        operator,
        "ClearingHouse",
        token,
        operator.address,
        chain.w3.to_checksum_address(FEE_ACCOUNT),
        forced_withdrawal_delay_s,
    )
    registry = chain.deploy(operator, "UptimeRegistry", difficulty)
    return Deployment(
        chain.chain_id,
        token.lower(),
        house.lower(),
        registry.lower(),
        operator.address.lower(),
        block,
    )


def check(chain: Chain, deployment: Deployment) -> None:
    """Raise `ChainError` unless ``deployment`` is on this chain, with code at its addresses."""
    if deployment.chain_id != chain.chain_id:
        raise ChainError(
            f"the deployment is for chain {deployment.chain_id}, the node is "
            f"on chain {chain.chain_id}"
        )
    for name, address in (
        ("collateral token", deployment.token),
        ("ClearingHouse", deployment.clearing_house),
        ("UptimeRegistry", deployment.registry),
    ):
        if not chain.w3.eth.get_code(chain.w3.to_checksum_address(address)):
            raise ChainError(f"no {name} contract at {address} on chain {chain.chain_id}")
