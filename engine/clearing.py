"""Clearing batches: what the chain must do to hold exactly the engine's settled balances.

Money lives on chain in the ClearingHouse contract, one settled balance per account. The
engine keeps, for every account, the balance the chain holds for it after the batches
already cut (counting the deposits the engine has credited; the chain may hold newer ones
the engine has not seen yet). At each clearing cut it compares that with everything the
account owns in the ledger now (all four buckets) and emits the difference as signed
deltas, with the withdrawals requested since the last cut, the fills of the period and
the last deposit id it has credited. Conservation makes the deltas sum to zero.

A cut with more entries than fit one transaction is split into chunks, each a batch with
its own id; deltas are ordered debits first, so a chunk never credits money a later chunk
has yet to debit (the contract checks the running sum). A cut that changed nothing emits
no batch. Batches wait in the state until the chain bridge confirms them, in order, with
`BatchConfirmed`, so a restarted bridge finds every batch it has not seen settle.
"""

from __future__ import annotations

import msgspec

from engine.messages import Side

CHUNK_ENTRIES = 800
"""Weight of a batch: a delta weighs 1, a withdrawal (a token transfer) 2. A delta costs at
most about 24k gas (an account's first balance), a withdrawal about 35k, so 800 fit well
inside a 30M-gas block whatever the mix."""
WITHDRAWAL_WEIGHT = 2


class BatchDelta(msgspec.Struct, frozen=True, array_like=True):
    """Add ``amount`` (signed) to the account's settled balance on chain; ``balance`` is
    what the engine expects it to be afterwards, not counting deposits it has not credited."""

    account: str
    amount: int
    balance: int


class BatchWithdrawal(msgspec.Struct, frozen=True, array_like=True):
    """Pay ``amount`` out to the account. ``forced_request_id`` is the contract's id of the
    forced withdrawal request this serves (0 for one asked through the API)."""

    withdrawal_id: int
    forced_request_id: int
    account: str
    amount: int


class BatchFill(msgspec.Struct, frozen=True, array_like=True):
    """One trade of the period, as committed in the batch's fills root."""

    symbol: str
    trade_id: int
    price: int
    qty: int
    buyer: str
    seller: str
    ts: int


class BatchAttestation(msgspec.Struct, frozen=True, array_like=True):
    """One uptime attestation the engine recorded in the period, as committed in the batch's
    attestations root (the collector checked it; the chain's ``verifyAttestation`` can
    again, given the beacon and signature the collector kept)."""

    node: str
    epoch: int
    nonce: int
    digest: str


class ClearingBatch(msgspec.Struct, frozen=True, tag="clearing_batch"):
    """One batch (or chunk of a cut) to settle on chain, in ``batch_id`` order.

    The fills and attestations of the cut travel with its last chunk.
    """

    batch_id: int
    cut: int
    last_chunk: bool
    credited_deposit_id: int
    deltas: list[BatchDelta]
    withdrawals: list[BatchWithdrawal]
    fills: list[BatchFill]
    attestations: list[BatchAttestation] = []


class ClearingState(msgspec.Struct, frozen=True, array_like=True):
    """The clearing part of the exchange's canonical state."""

    next_batch_id: int
    chain_balances: list[tuple[str, int]]
    dirty: list[str]
    withdrawals: list[BatchWithdrawal]
    fills: list[BatchFill]
    unconfirmed: list[ClearingBatch]
    forced_seen: list[int]
    credited_deposit_id: int
    attestations: list[BatchAttestation] = []


class Clearing:
    """Settled balances as the chain will hold them, and what the next cut will carry."""

    def __init__(self) -> None:
        self.next_batch_id = 1
        self.chain_balances: dict[str, int] = {}
        self.dirty: dict[str, None] = {}  # accounts whose ledger changed since the last cut
        self.withdrawals: list[BatchWithdrawal] = []
        self.fills: list[BatchFill] = []
        self.unconfirmed: list[ClearingBatch] = []
        self.forced_seen: set[int] = set()
        self.credited_deposit_id = 0  # as of the last batch
        self.attestations: list[BatchAttestation] = []

    def credit(self, account: str, amount: int) -> None:
        """A deposit the chain already holds was credited by the engine."""
        self.chain_balances[account] = self.chain_balances.get(account, 0) + amount

    def withdraw(self, withdrawal: BatchWithdrawal) -> None:
        """A withdrawal left the ledger: the next batch pays it."""
        self.withdrawals.append(withdrawal)

    def fill(self, symbol: str, trade_id: int, price: int, qty: int, buyer_side: Side,
             maker: str, taker: str, ts: int) -> None:
        """Record a trade for the next batch's fills root."""
        buyer, seller = (maker, taker) if buyer_side == Side.BUY else (taker, maker)
        self.fills.append(BatchFill(symbol, trade_id, price, qty, buyer, seller, ts))

    def attest(self, node: str, epoch: int, nonce: int, digest: str) -> None:
        """Record an attestation for the next batch's attestations root."""
        self.attestations.append(BatchAttestation(node, epoch, nonce, digest))

    def cut(self, cut: int, totals: dict[str, int], credited_deposit_id: int,
            ) -> list[ClearingBatch]:
        """Close the period: the batches that take the chain to ``totals`` (what each dirty
        account owns now), in order. Empty when nothing changed since the last batch."""
        paid: dict[str, int] = {}
        for w in self.withdrawals:
            paid[w.account] = paid.get(w.account, 0) + w.amount
        debits: list[BatchDelta] = []
        credits: list[BatchDelta] = []
        for account in sorted(self.dirty):
            total = totals[account]
            amount = total - self.chain_balances.get(account, 0) + paid.get(account, 0)
            if total:
                self.chain_balances[account] = total
            else:
                self.chain_balances.pop(account, None)
            if amount or account in paid:  # a withdrawer is listed to be reconciled
                (debits if amount < 0 else credits).append(BatchDelta(account, amount, total))
        self.dirty.clear()
        deltas = debits + credits
        withdrawals, self.withdrawals = self.withdrawals, []
        fills, self.fills = self.fills, []
        attestations, self.attestations = self.attestations, []
        if not deltas and not withdrawals and not fills and not attestations and \
                credited_deposit_id == self.credited_deposit_id:
            return []
        self.credited_deposit_id = credited_deposit_id
        chunks: list[list[BatchDelta | BatchWithdrawal]] = [[]]
        weight = 0
        entries: list[BatchDelta | BatchWithdrawal] = [*deltas, *withdrawals]
        for entry in entries:
            size = 1 if isinstance(entry, BatchDelta) else WITHDRAWAL_WEIGHT
            if weight + size > CHUNK_ENTRIES and chunks[-1]:
                chunks.append([])
                weight = 0
            chunks[-1].append(entry)
            weight += size
        batches = []
        for i, chunk in enumerate(chunks):
            final = i == len(chunks) - 1
            batch = ClearingBatch(
                self.next_batch_id, cut, final, credited_deposit_id,
                [e for e in chunk if isinstance(e, BatchDelta)],
                [e for e in chunk if isinstance(e, BatchWithdrawal)],
                fills if final else [], attestations if final else [])
            self.next_batch_id += 1
            batches.append(batch)
        self.unconfirmed.extend(batches)
        return batches

    def confirm(self, batch_id: int) -> bool:
        """The oldest unconfirmed batch settled on chain; False if ``batch_id`` is not it."""
        if not self.unconfirmed or self.unconfirmed[0].batch_id != batch_id:
            return False
        self.unconfirmed.pop(0)
        return True

    def state(self) -> ClearingState:
        """The canonical state (sorted where order is not meaningful)."""
        return ClearingState(self.next_batch_id, sorted(self.chain_balances.items()),
                             sorted(self.dirty), list(self.withdrawals), list(self.fills),
                             list(self.unconfirmed), sorted(self.forced_seen),
                             self.credited_deposit_id, list(self.attestations))

    @classmethod
    def restore(cls, state: ClearingState) -> Clearing:
        """Clearing in exactly the state ``state`` describes."""
        clearing = cls()
        clearing.next_batch_id = state.next_batch_id
        clearing.chain_balances = dict(state.chain_balances)
        clearing.dirty = dict.fromkeys(state.dirty)
        clearing.withdrawals = list(state.withdrawals)
        clearing.fills = list(state.fills)
        clearing.unconfirmed = list(state.unconfirmed)
        clearing.forced_seen = set(state.forced_seen)
        clearing.credited_deposit_id = state.credited_deposit_id
        clearing.attestations = list(state.attestations)
        return clearing
