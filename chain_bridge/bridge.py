"""`ChainBridge`: between the engine and the ClearingHouse.

Each `ChainBridge.poll` (blocking; one thread owns the bridge) looks at the chain and at what
the engine has done (an `EngineView`) and returns the commands the engine needs next:

* **deposits**: ``Deposited`` logs at least ``confirmations`` blocks deep become
  `CreditDeposit` commands in deposit-id order, each once (the engine refuses a repeat
  anyway). Ids must run 1, 2, 3...; a gap stops crediting past it and is reported.
* **forced withdrawals**: each ``ForcedWithdrawalRequested`` log becomes a `ForceWithdrawal`.
* **clearing**: the engine's unconfirmed batches are settled in order. A batch the chain
  already holds (settled before a restart, or by a transaction whose receipt was never
  seen) is checked against the chain's hash and confirmed, never sent again; the next one
  is sent and confirmed from its receipt. The contract itself refuses a batch id out of
  turn, so nothing can settle twice or be skipped.
* **reconciliation**: after each batch, every account in it must hold on chain, at the
  batch's block, exactly what the engine expects (its settled balance plus deposits the
  engine had not yet credited). A mismatch halts clearing with the reason in `status`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import msgspec
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.types import BlockIdentifier

from chain_bridge.batches import hash_of, settle_arguments
from chain_bridge.chain import Chain, ChainError, RevertedError
from chain_bridge.deployment import Deployment
from engine.clearing import BatchDelta, ClearingBatch
from engine.commands import (
    BatchConfirmed,
    CreditDeposit,
    DeregisterNode,
    ExchangeCommand,
    ForceWithdrawal,
    RegisterNode,
)

log = logging.getLogger("cmx.bridge")

LOG_RANGE = 5_000
"""Blocks per ``eth_getLogs`` request (nodes cap the range)."""


class EngineView(msgspec.Struct, frozen=True):
    """What the bridge needs to know of the engine's state."""

    credited_deposit_id: int
    forced_seen: frozenset[int]
    unconfirmed: tuple[ClearingBatch, ...]
    nodes: frozenset[str] = frozenset()
    """Nodes the engine has registered, and those whose deregistration it knows."""
    deregistered: frozenset[str] = frozenset()


class Deposit(msgspec.Struct, frozen=True):
    """One ``Deposited`` log, and where it is in the chain."""

    deposit_id: int
    account: str
    amount: int
    block: int
    index: int


class ForcedRequest(msgspec.Struct, frozen=True):
    """One ``ForcedWithdrawalRequested`` log, and where it is in the chain."""

    request_id: int
    account: str
    amount: int
    block: int
    index: int


class ChainBridge:
    """Deposit watcher, forced-withdrawal watcher, batch submitter and reconciler."""

    def __init__(self, chain: Chain, deployment: Deployment, operator: LocalAccount, *,
                 confirmations: int = 0) -> None:
        if operator.address.lower() != deployment.operator:
            raise ChainError(f"the operator key is {operator.address}, the ClearingHouse's "
                             f"operator is {deployment.operator}")
        self.chain = chain
        self.deployment = deployment
        self.operator = operator
        self.confirmations = confirmations
        self.house: Contract = chain.contract("ClearingHouse", deployment.clearing_house)
        self.registry: Contract = chain.contract("UptimeRegistry", deployment.registry)
        self.node_events: list[RegisterNode | DeregisterNode] = []  # in chain order
        self._node_sent: set[tuple[str, str]] = set()
        self.deposits: dict[int, Deposit] = {}
        self.forced: dict[int, ForcedRequest] = {}
        self.paid_withdrawals: dict[int, int] = {}
        """Block in which each withdrawal id was paid."""
        self._scanned = deployment.block - 1  # logs read up to this block
        self._credit_sent = 0  # highest deposit id sent to the engine by this process
        self._forced_sent: set[int] = set()
        self._confirm_sent = 0  # highest batch id confirmed to the engine by this process
        self.halted: str | None = None
        """Why clearing stopped (a reconciliation mismatch, a refused batch), or None."""
        self.deposit_gap: int | None = None
        """The first missing deposit id, if the logs skip one."""
        self.reconciled = True
        self.accounts_checked = 0
        self.last_reconciled_batch = 0
        self.batches_sent = 0
        self.last_error: str | None = None
        self._cut = 0  # the cut whose chunks are being confirmed, and their deltas so far
        self._cut_deltas: list[BatchDelta] = []
        self._roots: dict[int, str] = {}
        chain.wait_idle(operator.address)

    # --- one round ------------------------------------------------------------------------

    def poll(self, view: EngineView) -> list[ExchangeCommand]:
        """Look at the chain once; the commands to sequence, in order. A round the chain
        interrupts still returns what it had found (their counters have moved on); with
        nothing found, the error is raised."""
        commands: list[ExchangeCommand] = []
        try:
            head = self.chain.w3.eth.block_number
            self._scan(head)
            safe = head - self.confirmations
            self._credits(view, safe, commands)
            self._forced_withdrawals(view, safe, commands)
            self._nodes(view, commands)
            self._clear(view, commands)
        except Exception as exc:
            if not commands:
                raise
            self.last_error = str(exc)
            log.warning("chain round interrupted after %d commands: %s", len(commands), exc)
        return commands

    def _scan(self, head: int) -> None:
        events = self.house.events
        while self._scanned < head:
            start, end = self._scanned + 1, min(head, self._scanned + LOG_RANGE)
            for entry in events.Deposited().get_logs(from_block=start, to_block=end):
                args = entry["args"]
                deposit_id = int(args["depositId"])
                self.deposits[deposit_id] = Deposit(deposit_id, str(args["account"]).lower(),
                                                    int(args["amount"]),
                                                    int(entry["blockNumber"]),
                                                    int(entry["logIndex"]))
            for entry in events.ForcedWithdrawalRequested().get_logs(from_block=start,
                                                                     to_block=end):
                args = entry["args"]
                request_id = int(args["requestId"])
                self.forced[request_id] = ForcedRequest(
                    request_id, str(args["account"]).lower(), int(args["amount"]),
                    int(entry["blockNumber"]), int(entry["logIndex"]))
            self._scan_registry(start, end)
            for entry in events.Withdrawn().get_logs(from_block=start, to_block=end):
                self.paid_withdrawals[int(entry["args"]["withdrawalId"])] = \
                    int(entry["blockNumber"])
            self._scanned = end

    def _scan_registry(self, start: int, end: int) -> None:
        registry = self.registry.events
        found: list[tuple[int, int, RegisterNode | DeregisterNode]] = []
        for entry in registry.NodeRegistered().get_logs(from_block=start, to_block=end):
            args = entry["args"]
            underlying = bytes(args["nodeClass"]).rstrip(b"\0").decode("ascii", "replace")
            found.append((int(entry["blockNumber"]), int(entry["logIndex"]), RegisterNode(
                str(args["node"]).lower(), str(args["provider"]).lower(), underlying,
                int(args["units"]))))
        for entry in registry.NodeDeregistered().get_logs(from_block=start, to_block=end):
            args = entry["args"]
            found.append((int(entry["blockNumber"]), int(entry["logIndex"]), DeregisterNode(
                str(args["node"]).lower(), int(args["effectiveAt"]) * 1_000_000_000)))
        self.node_events += [event for _, _, event in sorted(found, key=lambda f: f[:2])]

    def _nodes(self, view: EngineView, commands: list[ExchangeCommand]) -> None:
        """Registrations and deregistrations on chain become engine commands, in order."""
        for event in self.node_events:
            kind = "register" if isinstance(event, RegisterNode) else "deregister"
            known = view.nodes if kind == "register" else view.deregistered
            if event.node in known or (kind, event.node) in self._node_sent:
                continue
            commands.append(event)
            self._node_sent.add((kind, event.node))

    def _credits(self, view: EngineView, safe_block: int,
                 commands: list[ExchangeCommand]) -> None:
        next_id = max(view.credited_deposit_id, self._credit_sent) + 1
        while True:
            deposit = self.deposits.get(next_id)
            if deposit is None:
                if any(i > next_id for i in self.deposits):
                    if self.deposit_gap != next_id:
                        log.error("deposit id %d is missing from the chain's logs (later "
                                  "ids seen): crediting stops there", next_id)
                    self.deposit_gap = next_id
                return
            if deposit.block > safe_block:
                return
            commands.append(CreditDeposit(deposit.deposit_id, deposit.account, deposit.amount))
            self._credit_sent = next_id
            next_id += 1

    def _forced_withdrawals(self, view: EngineView, safe_block: int,
                            commands: list[ExchangeCommand]) -> None:
        """Requests as deep as deposits must be, each after every deposit before it on the
        chain has been credited (else it would find that money missing and pay less)."""
        credited = max(view.credited_deposit_id, self._credit_sent)
        uncredited = [(d.block, d.index) for i, d in self.deposits.items() if i > credited]
        first_uncredited = min(uncredited, default=None)
        for request_id in sorted(self.forced):
            request = self.forced[request_id]
            if request_id in view.forced_seen or request_id in self._forced_sent:
                continue
            if request.block > safe_block or (
                    first_uncredited is not None and
                    first_uncredited < (request.block, request.index)):
                return  # in chain order: later requests wait too
            commands.append(ForceWithdrawal(request_id, request.account, request.amount))
            self._forced_sent.add(request_id)

    # --- clearing ---------------------------------------------------------------------------

    def _clear(self, view: EngineView, commands: list[ExchangeCommand]) -> None:
        house = self.house.functions
        for batch in view.unconfirmed:
            if self.halted is not None:
                return
            if batch.batch_id <= self._confirm_sent:
                continue
            on_chain = int(house.lastBatchId().call())
            prev_hash = bytes(house.batchHashes(batch.batch_id - 1).call())
            if batch.batch_id > on_chain + 1:
                self._halt(f"batch {batch.batch_id} is next in the engine but the chain's "
                           f"last batch is {on_chain}: a batch is missing")
                return
            if batch.batch_id > on_chain:
                if self.chain.pending(self.operator.address):
                    return  # an earlier transaction (its receipt lost) may yet settle it
                if not self._send(batch, prev_hash):
                    return
            block = self._settled_block(batch.batch_id)
            expected = hash_of(batch, prev_hash)
            actual = bytes(house.batchHashes(batch.batch_id).call())
            if actual != expected:
                self._halt(f"batch {batch.batch_id} on chain has hash 0x{actual.hex()}, the "
                           f"engine's is 0x{expected.hex()}")
                return
            commands.append(BatchConfirmed(batch.batch_id, "0x" + actual.hex()))
            self._confirm_sent = batch.batch_id
            if self._cut != batch.cut:
                self._cut, self._cut_deltas = batch.cut, []
            self._cut_deltas += batch.deltas
            if batch.last_chunk:  # a withdrawal may sit in a later chunk than its delta
                self._reconcile(batch, block, self._cut_deltas)

    def _send(self, batch: ClearingBatch, prev_hash: bytes) -> bool:
        """Settle ``batch``; whether it is on chain now (sent by us or by an earlier
        transaction that got there first)."""
        house = self.house.functions
        short = [d for d in batch.deltas if d.balance < 0]
        if short:  # the contract would refuse it ("negative balance"): say who and why
            self._halt(f"batch {batch.batch_id} would take "
                       + ", ".join(f"{d.account} to {d.balance}" for d in short)
                       + " on chain; the chain holds no debts: top the account up (the "
                       "insurance fund, after a cover it could not pay)")
            return False
        try:
            self.chain.transact(self.operator,
                                house.settleBatch(*settle_arguments(batch, prev_hash)),
                                f"batch {batch.batch_id}")
        except RevertedError as exc:
            if int(house.lastBatchId().call()) >= batch.batch_id:
                return True
            self._halt(str(exc))
            return False
        self.batches_sent += 1
        return True

    def _settled_block(self, batch_id: int) -> int:
        logs = self.house.events.BatchSettled().get_logs(
            from_block=self.deployment.block, argument_filters={"batchId": batch_id})
        if not logs:
            raise ChainError(f"no BatchSettled log for batch {batch_id}")
        return int(logs[-1]["blockNumber"])

    def _reconcile(self, batch: ClearingBatch, block: int, deltas: list[BatchDelta]) -> None:
        """Every account of the cut ending with ``batch`` holds on chain what the engine
        expects, read at the batch's block (or now, if the node has forgotten that block's
        state and no batch came since)."""
        house = self.house.functions
        at: BlockIdentifier = block
        try:
            last_deposit = int(house.lastDepositId().call(block_identifier=at))
        except Exception as exc:
            head = int(self.chain.w3.eth.block_number)
            if int(house.lastBatchId().call(block_identifier=head)) != batch.batch_id:
                log.warning("batch %d not reconciled: the node no longer has the state of "
                            "block %d (%s)", batch.batch_id, block, exc)
                return
            at = head
            last_deposit = int(house.lastDepositId().call(block_identifier=at))
        self._scan(max(int(at), self._scanned))
        pending: dict[str, int] = {}
        for deposit_id in range(batch.credited_deposit_id + 1, last_deposit + 1):
            deposit = self.deposits.get(deposit_id)
            if deposit is None:
                self._halt(f"reconciling batch {batch.batch_id}: deposit {deposit_id} "
                           "has no log")
                return
            pending[deposit.account] = pending.get(deposit.account, 0) + deposit.amount
        for delta in deltas:
            held = int(house.balanceOf(Web3.to_checksum_address(delta.account))
                       .call(block_identifier=at))
            expected = delta.balance + pending.get(delta.account, 0)
            if held != expected:
                self.reconciled = False
                self._halt(f"reconciliation failed after batch {batch.batch_id}: "
                           f"{delta.account} holds {held} on chain, the engine says "
                           f"{expected} ({delta.balance} settled + "
                           f"{pending.get(delta.account, 0)} deposited since)")
                return
        self.accounts_checked += len(deltas)
        self.last_reconciled_batch = batch.batch_id

    def _halt(self, reason: str) -> None:
        self.halted = reason
        log.error("CLEARING HALTED: %s", reason)

    # --- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``cmx chain status`` shows."""
        house = self.house.functions
        return {
            "chain": self.chain.kind,
            "chain_id": self.chain.chain_id,
            "block": int(self.chain.w3.eth.block_number),
            "clearing_house": self.deployment.clearing_house,
            "token": self.deployment.token,
            "registry": self.deployment.registry,
            "operator": self.deployment.operator,
            "last_batch_id": int(house.lastBatchId().call()),
            "last_batch_hash": "0x" + bytes(house.lastBatchHash().call()).hex(),
            "attestation_roots": self._attestation_roots(int(house.lastBatchId().call())),
            "last_deposit_id": int(house.lastDepositId().call()),
            "last_credited_deposit_id": int(house.lastCreditedDepositId().call()),
            "frozen": bool(house.frozen().call()),
            "reconciled": self.reconciled and self.halted is None,
            "accounts_checked": self.accounts_checked,
            "last_reconciled_batch": self.last_reconciled_batch,
            "batches_sent": self.batches_sent,
            "halted": self.halted,
            "deposit_gap": self.deposit_gap,
            "error": self.last_error,
        }

    def _attestation_roots(self, last_batch: int, count: int = 10) -> dict[str, str]:
        """The attestations roots of the last ``count`` batches (settled roots never change,
        so each is read once)."""
        for batch_id in range(max(1, last_batch - count + 1), last_batch + 1):
            if batch_id not in self._roots:
                root = bytes(self.house.functions.attestationsRoots(batch_id).call())
                self._roots[batch_id] = "0x" + root.hex()
        return {str(i): self._roots[i] for i in sorted(self._roots)[-count:]}

    def settled_balances(self, accounts: Iterable[str]) -> dict[str, int]:
        """The chain's settled balances of ``accounts`` now."""
        house = self.house.functions
        return {a: int(house.balanceOf(Web3.to_checksum_address(a)).call()) for a in accounts}
