"""Deposits from the command line, through a running `cmx serve`, whichever chain it uses.

The server answers JSON messages on the websocket path ``/chain`` (`WalletDesk`, on the
chain thread): ``{"op": "info"}`` (chain id, contract addresses, fees),
``{"op": "account", "address": A}`` (nonce, ether, test USDC, allowance, settled balance) and
``{"op": "send", "raw": "0x..."}`` (a transaction signed by the user: simulated first, so a
revert comes back with the contract's reason and is never sent; else sent, and answered with
its receipt) and ``{"op": "verify_attestation", ...}`` (the chain's own checks of an archived
attestation and its Merkle proof, `WalletDesk.verify_attestation`). Keys never leave the
user's machine: `deposit` signs locally.
"""

from __future__ import annotations

import json
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_tester.exceptions import TransactionFailed
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.types import TxParams
from websockets.sync.client import connect

from chain_bridge.chain import Chain, ChainError, RevertedError, revert_reason
from chain_bridge.contracts import load_artifact
from chain_bridge.deployment import Deployment

APPROVE_GAS = 80_000
DEPOSIT_GAS = 120_000
REGISTER_GAS = 200_000
MAX_UINT64 = 2**64 - 1
MAX_PROOF = 64
"""Siblings a ``verify_attestation`` proof may have (a tree of 2**64 leaves has 64 levels)."""
MAX_ROOTS = 1000
"""Batches one ``attestation_roots`` request may ask for."""
MAX_SIGNATURE = 1024
"""Bytes a ``verify_attestation`` signature may have (a valid one has 65; others are checked,
and found invalid, by the contract)."""


class WalletDesk:
    """The server side of ``/chain``: blocking, on the chain's thread."""

    def __init__(self, chain: Chain, deployment: Deployment) -> None:
        self.chain = chain
        self.deployment = deployment
        self.token = chain.contract("CollateralToken", deployment.token)
        self.house = chain.contract("ClearingHouse", deployment.clearing_house)
        self.registry = chain.contract("UptimeRegistry", deployment.registry)

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply to one request (``{"error": ...}`` for a bad one)."""
        op = request.get("op")
        try:
            if op == "info":
                return self.info()
            if op == "account" and isinstance(request.get("address"), str):
                return self.account(request["address"])
            if op == "send" and isinstance(request.get("raw"), str):
                return self.send(request["raw"])
            if op == "verify_attestation":
                return self.verify_attestation(request)
            if op == "attestation_roots":
                return self.attestation_roots(request)
        except (ValueError, ChainError) as exc:
            return {"error": str(exc)}
        return {"error": "expected {op: info | account (address) | send (raw) | "
                "verify_attestation (node, epoch, beacon, nonce, signature, batch_id, leaf, "
                "proof) | attestation_roots (first, last)}"}

    def attestation_roots(self, request: dict[str, Any]) -> dict[str, Any]:
        """``ClearingHouse.attestationsRoots`` of the settled batches ``first`` to ``last``
        (at most `MAX_ROOTS`, and none past the last settled batch): ``{"roots": {id: 0x}}``."""
        first, last = _uint64(request, "first"), _uint64(request, "last")
        if not 1 <= first <= last or last - first >= MAX_ROOTS:
            raise ValueError(f"first..last: 1 <= first <= last, at most {MAX_ROOTS} batches")
        house = self.house.functions
        last = min(last, int(house.lastBatchId().call()))
        return {"roots": {str(batch_id): "0x" + bytes(
            house.attestationsRoots(batch_id).call()).hex()
            for batch_id in range(first, last + 1)}}

    def info(self) -> dict[str, Any]:
        """The chain and the contracts."""
        latest = self.chain.w3.eth.get_block("latest")
        d = self.deployment
        return {"chain": self.chain.kind, "chain_id": self.chain.chain_id, "token": d.token,
                "clearing_house": d.clearing_house, "registry": d.registry,
                "base_fee": int(latest.get("baseFeePerGas", 0) or 0),
                "block_timestamp": int(latest["timestamp"])}

    def account(self, address: str) -> dict[str, Any]:
        """What ``address`` has on chain."""
        if not Web3.is_address(address):
            raise ValueError(f"not an address: {address}")
        who = Web3.to_checksum_address(address)
        eth = self.chain.w3.eth
        return {
            "address": address.lower(),
            "nonce": eth.get_transaction_count(who, "pending"),
            "ether": int(eth.get_balance(who)),
            "token_balance": int(self.token.functions.balanceOf(who).call()),
            "allowance": int(self.token.functions.allowance(who, self.house.address).call()),
            "settled_balance": int(self.house.functions.balanceOf(who).call()),
        }

    def verify_attestation(self, request: dict[str, Any]) -> dict[str, Any]:
        """The chain's checks of one attestation and of its place in a batch:
        ``attestation_valid`` (``UptimeRegistry.verifyAttestation`` of node, epoch, beacon,
        nonce, signature), ``root`` (``attestationsRoots(batch_id)``, 0x hex: zero for a
        batch not settled) and ``proof_valid`` (``ClearingHouse.verifyProof`` of that root,
        ``leaf`` and ``proof``). Hex fields are 0x hex; `ValueError` for a malformed one."""
        node = request.get("node")
        if not isinstance(node, str) or not Web3.is_address(node):
            raise ValueError(f"node: not an address: {node!r}")
        epoch = _uint64(request, "epoch")
        nonce = _uint64(request, "nonce")
        batch_id = _uint64(request, "batch_id")
        beacon = _hex(request.get("beacon"), "beacon", 32)
        signature = _hex(request.get("signature"), "signature", None)
        if len(signature) > MAX_SIGNATURE:
            raise ValueError(f"signature: more than {MAX_SIGNATURE} bytes")
        leaf = _hex(request.get("leaf"), "leaf", 32)
        proof = request.get("proof")
        if not isinstance(proof, list) or len(proof) > MAX_PROOF:
            raise ValueError(f"proof: a list of at most {MAX_PROOF} 32-byte hashes")
        siblings = [_hex(sibling, "proof", 32) for sibling in proof]
        valid = self.registry.functions.verifyAttestation(
            Web3.to_checksum_address(node), epoch, beacon, nonce, signature).call()
        root = bytes(self.house.functions.attestationsRoots(batch_id).call())
        proved = self.house.functions.verifyProof(root, leaf, siblings).call()
        return {"attestation_valid": bool(valid), "root": "0x" + root.hex(),
                "proof_valid": bool(proved)}

    def send(self, raw_hex: str) -> dict[str, Any]:
        """Simulate, then send, a signed transaction; its receipt."""
        raw = bytes.fromhex(raw_hex.removeprefix("0x"))
        sender = Account.recover_transaction(raw)
        fields = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        call: TxParams = {"from": sender, "to": fields["to"], "data": fields["data"],
                          "value": fields.get("value", 0)}
        try:
            self.chain.w3.eth.call(call)
        except (ContractLogicError, TransactionFailed) as exc:  # from a node / from py-evm
            return {"error": f"reverted: {revert_reason(exc)}"}
        tx_hash = self.chain.send_raw(raw)
        receipt = self.chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120,
                                                                 poll_latency=0.05)
        return {"tx": tx_hash.to_0x_hex(), "status": int(receipt["status"]),
                "block": int(receipt["blockNumber"])}


def _uint64(request: dict[str, Any], name: str) -> int:
    value = request.get(name)
    if type(value) is not int or not 0 <= value <= MAX_UINT64:
        raise ValueError(f"{name}: not a uint64: {value!r}")
    return value


def _hex(value: Any, name: str, size: int | None) -> bytes:
    """The bytes of 0x hex ``value`` (of ``size`` bytes, unless None)."""
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"{name}: not 0x hex: {value!r}")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise ValueError(f"{name}: not 0x hex: {value!r}") from None
    if size is not None and len(raw) != size:
        raise ValueError(f"{name}: expected {size} bytes, got {len(raw)}")
    return raw


class WalletClient:
    """The client side of ``/chain`` on ``ws://host:port/chain``."""

    def __init__(self, url: str) -> None:
        self.url = url

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request, return its reply; a refusal raises `ChainError`."""
        try:
            with connect(self.url, open_timeout=10) as ws:
                ws.send(json.dumps(message))
                reply: dict[str, Any] = json.loads(ws.recv(timeout=180))
        except OSError as exc:
            raise ChainError(f"cannot reach {self.url}: {exc}") from exc
        if "error" in reply:
            raise ChainError(str(reply["error"]))
        return reply


def deposit(url: str, key: str, amount: int, beneficiary: str | None = None,
            ) -> list[dict[str, Any]]:
    """Approve (if needed) and deposit ``amount`` micro-USDC from ``key``'s account, to its
    own settled balance or to ``beneficiary``'s (``depositFor``); the receipts. Signed here;
    the server only relays."""
    if beneficiary is not None and not Web3.is_address(beneficiary):
        raise ValueError(f"not an address: {beneficiary}")
    if amount <= 0:
        raise ValueError("the amount must be positive")
    client = WalletClient(url)
    info = client.request({"op": "info"})
    signer = Account.from_key(key)
    state = client.request({"op": "account", "address": signer.address})
    if state["token_balance"] < amount:
        raise ChainError(f"{signer.address} holds {state['token_balance']} micro-USDC of the "
                         f"collateral token, less than {amount}")
    offline = Web3()
    token = offline.eth.contract(abi=load_artifact("CollateralToken").abi)
    house = offline.eth.contract(abi=load_artifact("ClearingHouse").abi)
    house_address = Web3.to_checksum_address(info["clearing_house"])
    calls: list[tuple[str, str, int]] = []
    if state["allowance"] < amount:
        calls.append((info["token"], token.encode_abi("approve", [house_address, amount]),
                      APPROVE_GAS))
    call = house.encode_abi("deposit", [amount]) if beneficiary is None else \
        house.encode_abi("depositFor", [Web3.to_checksum_address(beneficiary), amount])
    calls.append((info["clearing_house"], call, DEPOSIT_GAS))
    return _send(client, signer, info, state["nonce"], calls, "deposit")


def _send(client: WalletClient, signer: LocalAccount, info: dict[str, Any], nonce: int,
          calls: list[tuple[str, str, int]], what: str) -> list[dict[str, Any]]:
    """Sign ``calls`` (to, data, gas) from ``nonce`` on and relay them; their receipts."""
    receipts = []
    tip = 1_000_000_000
    for to, data, gas in calls:
        tx = {"to": Web3.to_checksum_address(to), "data": data, "value": 0, "gas": gas,
              "nonce": nonce, "chainId": info["chain_id"], "type": 2,
              "maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * info["base_fee"] + tip}
        signed = signer.sign_transaction(tx)
        receipt = client.request({"op": "send", "raw": signed.raw_transaction.hex()})
        if receipt["status"] != 1:
            raise RevertedError(what, f"transaction {receipt['tx']} failed")
        receipts.append(receipt)
        nonce += 1
    return receipts


def register_node(url: str, key: str, node: str, node_class: str, units: int,
                  ) -> dict[str, Any]:
    """Register ``node`` (class e.g. ``GPU.H100`` or ``RACK.KW``, ``units`` GPUs or kW) in the
    UptimeRegistry as a node of ``key``'s provider account; the receipt."""
    if not Web3.is_address(node):
        raise ValueError(f"not an address: {node}")
    if units <= 0:
        raise ValueError("units must be positive")
    label = node_class.encode("ascii")
    if not 0 < len(label) <= 32:
        raise ValueError(f"a node class is 1 to 32 ASCII characters: {node_class!r}")
    return _registry_call(url, key, "registerNode",
                          [Web3.to_checksum_address(node), label.ljust(32, b"\0"), units],
                          "node registration")


def deregister_node(url: str, key: str, node: str, effective_at: int) -> dict[str, Any]:
    """End ``node``'s activity at ``effective_at`` (Unix seconds, not in the past; an earlier
    deregistration can only be brought forward) for ``key``'s provider account; the
    receipt. Windows sold on the node that run past it count as undelivered from then."""
    if not Web3.is_address(node):
        raise ValueError(f"not an address: {node}")
    if not 0 <= effective_at < 1 << 64:
        raise ValueError(f"not a time: {effective_at}")
    return _registry_call(url, key, "deregisterNode",
                          [Web3.to_checksum_address(node), effective_at], "node deregistration")


def chain_time(url: str) -> int:
    """The timestamp of the chain's latest block (Unix seconds): what "not in the past"
    means to the registry. A development chain mining more than a block a second runs
    ahead of the wall clock."""
    return int(WalletClient(url).request({"op": "info"})["block_timestamp"])


def _registry_call(url: str, key: str, function: str, arguments: list[Any],
                   what: str) -> dict[str, Any]:
    """Sign one UptimeRegistry call from ``key`` and relay it; its receipt."""
    client = WalletClient(url)
    info = client.request({"op": "info"})
    signer = Account.from_key(key)
    state = client.request({"op": "account", "address": signer.address})
    registry = Web3().eth.contract(abi=load_artifact("UptimeRegistry").abi)
    data = registry.encode_abi(function, arguments)
    (receipt,) = _send(client, signer, info, state["nonce"],
                       [(info["registry"], data, REGISTER_GAS)], what)
    return receipt
