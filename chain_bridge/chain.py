"""The chain connection: web3 on the in-process EVM or on any JSON-RPC node.

Every transaction the exchange sends is signed here with a local key and sent raw, so the
same code runs against the embedded EVM, Anvil, or a production node. The embedded EVM
(eth-tester + py-evm) lives in memory; to survive a restart, `Chain` records each raw
transaction it sends in a log in the data directory and replays them when it starts again,
which rebuilds the same contracts at the same addresses with the same balances.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester.exceptions import TransactionFailed
from eth_typing import ChecksumAddress
from hexbytes import HexBytes
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.contract import Contract
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractLogicError, TimeExhausted
from web3.types import RPCEndpoint, TxParams, TxReceipt, Wei

from chain_bridge.contracts import contract_at, load_artifact

log = logging.getLogger("cmx.chain")

ETHER = 10**18
RECEIPT_TIMEOUT_S = 120.0

LOCAL_KINDS = frozenset({"embedded", "anvil"})


class ChainError(RuntimeError):
    """The chain refused or could not be reached; the message says which and why."""


class RevertedError(ChainError):
    """A transaction (or its gas estimate) reverted; ``reason`` is the contract's message."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} reverted: {reason}")
        self.reason = reason


class Chain:
    """One connection, its chain id, and signed transactions with their receipts."""

    def __init__(
        self, w3: Web3, kind: str, *, tx_log: Path | None = None, faucet: LocalAccount | None = None
    ) -> None:
        self.w3 = w3
        self.kind = kind
        """``embedded``, ``anvil`` or ``rpc``."""
        self.tx_log = tx_log
        self.faucet = faucet
        self.chain_id = int(w3.eth.chain_id)

    @property
    def local(self) -> bool:
        """Whether this is a development chain on which test tokens and ether are free."""
        return self.kind in LOCAL_KINDS

    def contract(self, name: str, address: str) -> Contract:
        """A handle on the deployed contract ``name`` at ``address``."""
        return contract_at(self.w3, name, address)

    # --- transactions -------------------------------------------------------------------

    def transact(
        self, sender: LocalAccount, call: ContractFunction | ContractConstructor, what: str
    ) -> TxReceipt:
        """Send ``call`` signed by ``sender`` and wait for its receipt. A call that would
        revert raises `RevertedError` with the contract's reason before anything is sent."""
        params: TxParams = {"from": sender.address, "chainId": self.chain_id}
        try:
            gas = call.estimate_gas(params)
            limit = int(self.w3.eth.get_block("latest")["gasLimit"])
            tx = call.build_transaction({**params, "gas": min(gas + gas // 5 + 30_000, limit)})
        except (ContractLogicError, TransactionFailed) as exc:  # from a node / from py-evm
            raise RevertedError(what, revert_reason(exc)) from exc
        return self._send(sender, tx, what)

    def deploy(self, sender: LocalAccount, name: str, *args: Any) -> ChecksumAddress:
        """Deploy contract ``name`` with constructor ``args``; its address."""
        artifact = load_artifact(name)
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = self.transact(sender, factory.constructor(*args), f"deploying {name}")
        address = receipt["contractAddress"]
        if address is None:
            raise ChainError(f"deploying {name}: no contract address in the receipt")
        return address

    def send_ether(self, sender: LocalAccount, to: str, wei: int) -> TxReceipt:
        """Plain ether transfer."""
        tx: TxParams = {
            "from": sender.address,
            "to": Web3.to_checksum_address(to),
            "value": Wei(wei),
            "gas": 21_000,
            "chainId": self.chain_id,
        }
        return self._send(sender, tx, "ether transfer")

    def _send(self, sender: LocalAccount, tx: TxParams, what: str) -> TxReceipt:
        eth = self.w3.eth
        tx = dict(tx)  # type: ignore[assignment]
        tx["nonce"] = eth.get_transaction_count(sender.address, "pending")
        if "maxFeePerGas" not in tx and "gasPrice" not in tx:
            base = eth.get_block("latest").get("baseFeePerGas", 0) or 0
            tip = 1_000_000_000
            tx["maxPriorityFeePerGas"] = Wei(tip)
            tx["maxFeePerGas"] = Wei(2 * base + tip)
        signed = sender.sign_transaction(tx)  # type: ignore[arg-type]
        tx_hash = self.send_raw(bytes(signed.raw_transaction))
        try:
            receipt = eth.wait_for_transaction_receipt(
                tx_hash, timeout=RECEIPT_TIMEOUT_S, poll_latency=0.05
            )
        except TimeExhausted as exc:
            raise ChainError(
                f"{what}: no receipt for {tx_hash.hex()} after {RECEIPT_TIMEOUT_S:.0f} s"
            ) from exc
        if receipt["status"] != 1:
            raise RevertedError(what, f"transaction {tx_hash.hex()} failed")
        return receipt

    def send_raw(self, raw: bytes) -> HexBytes:
        """Send a signed transaction (recorded first when the chain is the embedded one)."""
        if self.tx_log is not None:
            with self.tx_log.open("a") as f:
                f.write(f"{len(raw)} {raw.hex()}\n")
                f.flush()
                os.fsync(f.fileno())
        return HexBytes(self.w3.eth.send_raw_transaction(raw))

    def pending(self, sender: str) -> bool:
        """Whether a transaction of ``sender`` waits to be mined."""
        eth = self.w3.eth
        address = Web3.to_checksum_address(sender)
        return eth.get_transaction_count(address, "pending") > \
            eth.get_transaction_count(address, "latest")

    def wait_idle(self, sender: str, timeout_s: float = RECEIPT_TIMEOUT_S) -> None:
        """Wait until no transaction of ``sender`` is pending (one sent before a restart)."""
        eth = self.w3.eth
        address = Web3.to_checksum_address(sender)
        deadline = time.monotonic() + timeout_s
        while eth.get_transaction_count(address, "pending") > eth.get_transaction_count(
            address, "latest"
        ):
            if time.monotonic() > deadline:
                raise ChainError(f"transactions of {address} still pending after {timeout_s:.0f} s")
            time.sleep(0.1)

    # --- development chains -----------------------------------------------------------------

    def fund(self, address: str, wei: int) -> None:
        """Give ``address`` ether for gas (development chains only)."""
        target = Web3.to_checksum_address(address)
        if self.w3.eth.get_balance(target) >= wei:
            return
        if self.kind == "anvil":
            self.w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [target, hex(wei)])
        elif self.faucet is not None:
            self.send_ether(self.faucet, target, wei)
        else:
            raise ChainError(f"cannot fund {address} on a {self.kind} chain")


def revert_reason(exc: ContractLogicError | TransactionFailed) -> str:
    message = str(exc.message or exc) if isinstance(exc, ContractLogicError) else str(exc)
    return message.removeprefix("execution reverted: ").removeprefix("execution reverted")


def embedded(tx_log: Path | None = None) -> Chain:
    """The in-process EVM; with ``tx_log``, the transactions of earlier runs replayed."""
    provider = EthereumTesterProvider()
    w3 = Web3(provider)
    tester = provider.ethereum_tester
    assert tester is not None
    faucet = Account.from_key(tester.backend.account_keys[0])
    replayed = 0
    if tx_log is not None:
        tx_log.parent.mkdir(parents=True, exist_ok=True)
        for raw in _raw_transactions(tx_log):
            try:
                w3.eth.send_raw_transaction(raw)
            except Exception as exc:  # refused the first time too: nothing was lost
                log.debug("replayed transaction refused: %s", exc)
            replayed += 1
    if replayed:
        log.info("embedded chain rebuilt from %d transactions in %s", replayed, tx_log)
    return Chain(w3, "embedded", tx_log=tx_log, faucet=faucet)


def _raw_transactions(path: Path) -> Iterator[bytes]:
    if not path.exists():
        return
    with path.open() as f:
        for line in f:
            size, _, text = line.strip().partition(" ")
            try:
                raw = bytes.fromhex(text)
            except ValueError:
                return
            if not size.isdigit() or len(raw) != int(size):
                return  # a torn last line: killed while writing it, so never sent
            yield raw


def rpc(url: str, kind: str = "rpc") -> Chain:
    """A JSON-RPC node at ``url``."""
    # caching lets web3 ask for the chain id once, not before every call
    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": 30}, cache_allowed_requests=True))
    try:
        return Chain(w3, kind)
    except Exception as exc:
        raise ChainError(f"cannot reach the chain at {url}: {exc}") from exc
