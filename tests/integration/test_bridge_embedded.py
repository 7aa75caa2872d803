"""The chain bridge between a `Desk`-driven exchange and its contracts on the in-process EVM.

The module deploys the contracts once on an embedded chain and funds four users (ether, test
USDC, an allowance for the ClearingHouse); every test starts from a snapshot of that chain
with a fresh engine and bridge (`Bench`, a `ChainDesk`), lets the users act with their own
keys, and runs bridge rounds as `cmx serve` does: deposits are credited once and in id order,
batches settle once and reconcile, restarts resume from the chain, tampering halts clearing,
forced withdrawals are served, and the escape hatch pays every user its last settled balance
when the operator is gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import msgspec
import pytest
from eth_account.signers.local import LocalAccount
from eth_tester.exceptions import TransactionFailed
from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.types import TxReceipt

import engine.clearing
from chain_bridge.batches import fill_leaf, fill_proof, fills_root, settle_arguments
from chain_bridge.bridge import Deposit
from chain_bridge.chain import ETHER, Chain, ChainError, RevertedError, embedded
from chain_bridge.deployment import Deployment, deploy
from engine.clearing import ClearingBatch
from engine.commands import BatchConfirmed, CreditDeposit, ExchangeCommand, ForceWithdrawal
from engine.events import (
    CommandRejected,
    ExchangeEvent,
    ForcedWithdrawal,
    InsuranceCover,
    OrderCancelled,
    Reason,
    Trade,
)
from engine.ledger import FEE_ACCOUNT, INSURANCE_FUND, is_address
from tests.chain_helpers import USDC, ChainDesk, evm, send, user
from tests.exchange_helpers import BUY, GPU_FUT, SELL, instrument, of_type

FUT_PRICE = instrument(GPU_FUT).reference_price_ticks
DELAY_S = 3600  # forced withdrawal delay
WALLET = 1_000_000 * USDC  # test USDC each user holds at the start

A, B, C, D = user(1), user(2), user(3), user(4)
USERS = (A, B, C, D)


# --- the chain ---------------------------------------------------------------------------------




@contextmanager
def reverts(reason: str) -> Iterator[None]:
    """Expects the call inside to revert with ``reason`` (eth-tester raises its own error)."""
    with pytest.raises((TransactionFailed, ContractLogicError, RevertedError)) as info:
        yield
    assert str(info.value).endswith(reason), info.value


class World(NamedTuple):
    """The module's chain, its contracts and the snapshot every test starts from."""

    chain: Chain
    deployment: Deployment
    operator: LocalAccount
    snapshot: int


@pytest.fixture(scope="module")
def base() -> World:
    chain = embedded()
    operator = user(0xFFFF)
    chain.fund(operator.address, 1000 * ETHER)
    deployment = deploy(chain, operator, forced_withdrawal_delay_s=DELAY_S)
    token = chain.contract("CollateralToken", deployment.token)
    for who in USERS:
        chain.fund(who.address, 10 * ETHER)
        send(chain, operator, token.functions.mint(who.address, WALLET))
        send(chain, who, token.functions.approve(
            Web3.to_checksum_address(deployment.clearing_house), 2**256 - 1))
    return World(chain, deployment, operator, evm(chain).take_snapshot())


@pytest.fixture
def world(base: World) -> World:
    """The module's chain, as it was before any test."""
    evm(base.chain).revert_to_snapshot(base.snapshot)
    return base


class Bench(ChainDesk):
    """A fresh engine and bridge on the world's chain; users deposit from their wallets."""

    def __init__(self, world: World, confirmations: int = 0) -> None:
        super().__init__(world.chain, deployment=world.deployment, operator=world.operator,
                         confirmations=confirmations)
        self.deposited = dict.fromkeys([who.address for who in USERS], 0)

    def deposit(self, who: LocalAccount, amount: int) -> None:
        send(self.chain, who, self.house.functions.deposit(amount))
        self.deposited[who.address] += amount

    def received(self, who: LocalAccount) -> int:
        """Tokens paid out of the vault to ``who`` (withdrawals and exits)."""
        held = int(self.token.functions.balanceOf(who.address).call())
        return held - (WALLET - self.deposited[who.address])


# --- helpers -----------------------------------------------------------------------------------


def addr(who: LocalAccount) -> str:
    """The engine's name for a user: its address in lower case."""
    return who.address.lower()


def funded(world: World, *users: LocalAccount, amount: int = 5000 * USDC) -> Bench:
    """A fresh engine where each of ``users`` deposited ``amount`` and was credited."""
    cd = Bench(world)
    for who in users:
        cd.deposit(who, amount)
    credits = cd.poll()
    assert [type(c) for c in credits] == [CreditDeposit] * len(users)
    return cd


def trade(cd: ChainDesk, maker: LocalAccount, taker: LocalAccount, side: Any = BUY,
          qty: int = 1, price: int = FUT_PRICE) -> Trade:
    """``maker`` rests ``qty`` lots of the December future on ``side``; ``taker`` takes them."""
    cd.desk.rest(addr(maker), GPU_FUT, side, qty, price)
    other = SELL if side == BUY else BUY
    trades = of_type(cd.desk.place(addr(taker), GPU_FUT, other, qty, price), Trade)
    assert sum(t.qty for t in trades) == qty
    return trades[-1]


def apply_all(cd: ChainDesk, commands: list[ExchangeCommand]) -> list[ExchangeEvent]:
    """Sequence ``commands`` into the engine; their events."""
    events: list[ExchangeEvent] = []
    for command in commands:
        events += cd.desk.apply(command)
    return events


def poll_events(cd: ChainDesk) -> tuple[list[ExchangeCommand], list[ExchangeEvent]]:
    """One bridge round applied to the engine: its commands and their events."""
    commands = cd.bridge.poll(cd.view())
    return commands, apply_all(cd, commands)


def accounts(cd: ChainDesk) -> list[str]:
    """Every account the engine's ledger knows, and the system accounts."""
    known = {a for a in cd.ex.ledger.accounts if is_address(a)}
    return sorted(known | {FEE_ACCOUNT, INSURANCE_FUND})


def assert_chain_holds_engine_totals(cd: ChainDesk) -> None:
    """Every account's settled balance on chain is its engine total; the vault holds it all."""
    ledger = cd.ex.ledger
    for account in accounts(cd):
        assert cd.settled(account) == ledger.balances(account).total(), account
    assert cd.vault_tokens() == sum(cd.settled(a) for a in accounts(cd))
    assert cd.vault_tokens() == ledger.deposited - ledger.withdrawn


def last_batch_id(cd: ChainDesk) -> int:
    return int(cd.house.functions.lastBatchId().call())


def cut_batches(cd: ChainDesk) -> list[ClearingBatch]:
    """A clearing cut; the batches it emitted."""
    return of_type(cd.cut(), ClearingBatch)


def confirmed_ids(commands: list[ExchangeCommand]) -> list[int]:
    return [c.batch_id for c in commands if isinstance(c, BatchConfirmed)]


def chain_now(chain: Chain) -> int:
    return int(chain.w3.eth.get_block("latest")["timestamp"])




# --- deposits ----------------------------------------------------------------------------------


def test_each_deposit_is_credited_once_in_id_order(world: World) -> None:
    cd = Bench(world)
    for who, amount in ((A, 100), (B, 200), (A, 300), (C, 400)):
        cd.deposit(who, amount * USDC)
    assert cd.poll() == [
        CreditDeposit(1, addr(A), 100 * USDC),
        CreditDeposit(2, addr(B), 200 * USDC),
        CreditDeposit(3, addr(A), 300 * USDC),
        CreditDeposit(4, addr(C), 400 * USDC),
    ]
    assert cd.poll() == []
    assert cd.ex.deposits_seen == {1, 2, 3, 4}
    assert cd.ex.ledger.balances(addr(A)).available == 400 * USDC

    cd.restart_bridge()
    assert cd.poll() == []  # the engine has them all: nothing again
    cd.deposit(B, 50 * USDC)
    assert cd.poll() == [CreditDeposit(5, addr(B), 50 * USDC)]
    assert cd.ex.ledger.deposited == 1050 * USDC == cd.vault_tokens()
    assert cd.bridge.deposit_gap is None


def test_credits_the_engine_has_not_applied_yet_are_not_sent_again(world: World) -> None:
    cd = Bench(world)
    cd.deposit(A, 100 * USDC)
    cd.deposit(B, 200 * USDC)
    stale = cd.view()  # the engine is slow: it has applied nothing the bridge sent
    first = cd.bridge.poll(stale)
    assert first == [CreditDeposit(1, addr(A), 100 * USDC),
                     CreditDeposit(2, addr(B), 200 * USDC)]
    assert cd.bridge.poll(stale) == []
    cd.deposit(C, 300 * USDC)
    third = cd.bridge.poll(stale)
    assert third == [CreditDeposit(3, addr(C), 300 * USDC)]
    apply_all(cd, first + third)
    assert cd.poll() == []

    # a restart while a credit is in flight sends it again; the engine takes it once
    cd.deposit(A, 40 * USDC)
    stale = cd.view()
    in_flight = cd.bridge.poll(stale)
    assert in_flight == [CreditDeposit(4, addr(A), 40 * USDC)]
    cd.restart_bridge()
    again = cd.bridge.poll(stale)
    assert again == in_flight
    assert cd.bridge.poll(stale) == []
    events = apply_all(cd, in_flight + again)
    rejected = of_type(events, CommandRejected)
    assert [(r.ref, r.reason) for r in rejected] == [(4, Reason.DUPLICATE_DEPOSIT)]
    assert cd.ex.ledger.balances(addr(A)).available == 140 * USDC
    assert cd.ex.ledger.deposited == 640 * USDC == cd.vault_tokens()
    assert cd.poll() == []


def test_two_confirmations_wait_for_two_blocks_on_top(world: World) -> None:
    cd = Bench(world, confirmations=2)
    cd.deposit(A, 100 * USDC)
    assert cd.poll() == []
    evm(cd.chain).mine_blocks(1)
    assert cd.poll() == []
    cd.deposit(B, 200 * USDC)  # the second block on top of the first deposit
    assert cd.poll() == [CreditDeposit(1, addr(A), 100 * USDC)]
    assert cd.poll() == []
    evm(cd.chain).mine_blocks(1)
    assert cd.poll() == []
    evm(cd.chain).mine_blocks(1)
    assert cd.poll() == [CreditDeposit(2, addr(B), 200 * USDC)]
    assert cd.ex.deposits_seen == {1, 2}


class _Dropping(dict[int, Deposit]):
    """A bridge's deposit table that never learns of deposit 2 (a log the node lost)."""

    def __setitem__(self, key: int, value: Deposit) -> None:
        if key != 2:
            super().__setitem__(key, value)


def test_a_gap_in_deposit_ids_is_reported_and_stops_crediting(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    cd = Bench(world)
    cd.deposit(A, 100 * USDC)
    cd.deposit(B, 200 * USDC)
    monkeypatch.setattr(cd.bridge, "deposits", _Dropping())
    assert cd.poll() == [CreditDeposit(1, addr(A), 100 * USDC)]
    assert cd.bridge.deposit_gap is None  # the newest log missing is not yet a gap

    cd.deposit(C, 300 * USDC)
    assert cd.poll() == []
    assert cd.bridge.deposit_gap == 2
    assert cd.bridge.status()["deposit_gap"] == 2
    assert cd.poll() == []
    assert cd.ex.deposits_seen == {1}

    # nor does a batch reconcile past the missing deposit
    cd.clear()
    halted = cd.bridge.halted
    assert halted == "reconciling batch 1: deposit 2 has no log"
    assert cd.bridge.status()["reconciled"] is False


def test_an_outage_while_settling_loses_no_credit_or_forced_request(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    cd = funded(world, A, B)
    trade(cd, A, B)
    cut_batches(cd)  # batch 1 waits for the bridge
    cd.deposit(C, 100 * USDC)
    cd.request_forced_withdrawal(B, 10 * USDC)

    def no_receipt(*args: Any) -> TxReceipt:
        raise ChainError("batch 1: no receipt after 120 s")

    monkeypatch.setattr(cd.chain, "transact", no_receipt)
    try:
        commands = cd.poll()  # what the interrupted round found, if it says
    except ChainError:
        commands = []  # cmx serve logs it and tries again next round
    monkeypatch.undo()
    commands += cd.poll()
    assert confirmed_ids(commands) == [1]
    assert commands.count(CreditDeposit(3, addr(C), 100 * USDC)) == 1
    assert commands.count(ForceWithdrawal(1, addr(B), 10 * USDC)) == 1
    assert cd.ex.deposits_seen == {1, 2, 3}


# --- clearing ----------------------------------------------------------------------------------


def test_trades_and_withdrawals_settle_reconcile_and_pay(world: World) -> None:
    cd = funded(world, A, B, C)
    trade(cd, A, B, BUY, qty=2)
    cd.desk.rest(addr(C), GPU_FUT, BUY, 3, FUT_PRICE - 20)  # collateral reserved, not moved
    cd.desk.withdraw(addr(A), 100 * USDC)
    assert [b.batch_id for b in cut_batches(cd)] == [1]
    commands = cd.clear()
    assert confirmed_ids(commands) == [1]
    confirmed = commands[-1]
    assert isinstance(confirmed, BatchConfirmed)
    on_chain = bytes(cd.house.functions.batchHashes(1).call())
    assert confirmed.batch_hash == "0x" + on_chain.hex()
    assert cd.ex.clearing.unconfirmed == []
    assert last_batch_id(cd) == 1
    assert_chain_holds_engine_totals(cd)
    assert cd.settled(FEE_ACCOUNT) > 0
    assert cd.received(A) == 100 * USDC
    assert set(cd.bridge.paid_withdrawals) == {1}

    # the price moves: variation margin, another withdrawal, debits before credits
    trade(cd, C, B, SELL, qty=1, price=FUT_PRICE + 40)
    cd.desk.withdraw(addr(B), 250 * USDC)
    (batch,) = cut_batches(cd)
    amounts = [d.amount for d in batch.deltas]
    assert any(a < 0 for a in amounts) and any(a > 0 for a in amounts)
    first_credit = next(i for i, a in enumerate(amounts) if a >= 0)
    assert all(a >= 0 for a in amounts[first_credit:])
    assert confirmed_ids(cd.clear()) == [2]
    assert_chain_holds_engine_totals(cd)
    assert cd.received(B) == 250 * USDC
    assert set(cd.bridge.paid_withdrawals) == {1, 2}
    status = cd.bridge.status()
    assert status["reconciled"] is True
    assert status["last_reconciled_batch"] == 2
    assert status["batches_sent"] == 2
    assert status["last_batch_id"] == 2
    assert status["accounts_checked"] >= len(batch.deltas)
    assert status["halted"] is None


def test_a_restart_between_cut_and_submission_sends_each_batch_once(world: World) -> None:
    cd = funded(world, A, B)
    trade(cd, A, B)
    assert confirmed_ids(cd.clear()) == [1]
    assert cd.bridge.batches_sent == 1

    trade(cd, B, A, BUY, price=FUT_PRICE + 10)
    cut_batches(cd)
    cd.desk.withdraw(addr(A), 10 * USDC)
    cut_batches(cd)
    assert [b.batch_id for b in cd.ex.clearing.unconfirmed] == [2, 3]
    cd.restart_bridge()
    assert confirmed_ids(cd.poll()) == [2, 3]
    assert cd.bridge.batches_sent == 2
    assert last_batch_id(cd) == 3
    assert confirmed_ids(cd.poll()) == []
    cd.restart_bridge()
    assert confirmed_ids(cd.clear()) == []  # nothing changed: no batch
    assert cd.bridge.batches_sent == 0
    assert last_batch_id(cd) == 3
    assert_chain_holds_engine_totals(cd)
    assert cd.received(A) == 10 * USDC


def test_a_batch_settled_whose_confirmation_was_lost_is_confirmed_not_resent(
        world: World) -> None:
    cd = funded(world, A, B)
    trade(cd, A, B)
    cut_batches(cd)
    lost = cd.bridge.poll(cd.view())  # settled, but the engine never gets the confirmation
    assert confirmed_ids(lost) == [1]
    assert [b.batch_id for b in cd.ex.clearing.unconfirmed] == [1]
    cd.restart_bridge()
    assert cd.poll() == lost
    assert cd.bridge.batches_sent == 0
    assert last_batch_id(cd) == 1
    assert cd.ex.clearing.unconfirmed == []
    assert cd.bridge.status()["last_reconciled_batch"] == 1
    assert cd.bridge.status()["reconciled"] is True
    assert_chain_holds_engine_totals(cd)


def test_a_batch_sent_before_a_restart_is_confirmed_not_resent(world: World) -> None:
    cd = funded(world, A, B)
    trade(cd, A, B)
    cd.desk.withdraw(addr(B), 5 * USDC)
    (batch,) = cut_batches(cd)
    # the process died after its transaction went out, before it saw the receipt
    house = cd.house.functions
    cd.chain.transact(cd.operator, house.settleBatch(*settle_arguments(batch, bytes(32))),
                      "batch 1")
    cd.restart_bridge()
    assert confirmed_ids(cd.poll()) == [1]
    assert cd.bridge.batches_sent == 0
    assert last_batch_id(cd) == 1
    assert cd.received(B) == 5 * USDC  # paid once
    assert_chain_holds_engine_totals(cd)


def chunked_trades(world: World) -> Bench:
    """Four users, three trades (three takers' fees, variation margin)."""
    cd = funded(world, A, B, C, D)
    trade(cd, A, B)
    trade(cd, C, D, SELL)
    trade(cd, B, C, BUY, price=FUT_PRICE - 5)
    return cd


def test_a_cut_over_the_chunk_size_settles_as_several_batches(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.clearing, "CHUNK_ENTRIES", 2)
    cd = chunked_trades(world)
    batches = cut_batches(cd)
    assert len(batches) >= 3
    assert [b.last_chunk for b in batches] == [False] * (len(batches) - 1) + [True]
    assert all(len(b.deltas) + len(b.withdrawals) <= 2 for b in batches)
    assert confirmed_ids(cd.clear()) == [b.batch_id for b in batches]
    assert cd.bridge.batches_sent == len(batches) == last_batch_id(cd)
    assert int(cd.house.functions.batchCarry().call()) == 0
    assert cd.bridge.status()["reconciled"] is True
    assert cd.bridge.last_reconciled_batch == batches[-1].batch_id
    assert_chain_holds_engine_totals(cd)
    # the fills travel with the last chunk
    last = batches[-1]
    assert len(last.fills) == 3
    for batch in batches:
        root = bytes(cd.house.functions.fillsRoots(batch.batch_id).call())
        assert root == fills_root(batch)
    leaf, proof = fill_proof(last, last.fills[1].trade_id, GPU_FUT)
    assert cd.house.functions.verifyFill(last.batch_id, leaf, proof).call() is True
    assert cd.house.functions.verifyFill(batches[0].batch_id, leaf, proof).call() is False


def test_a_chunked_cut_with_withdrawals_settles_and_reconciles(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # A and D trade (a delta in an early chunk) and withdraw (paid in a later chunk)
    monkeypatch.setattr(engine.clearing, "CHUNK_ENTRIES", 2)
    cd = chunked_trades(world)
    cd.desk.withdraw(addr(A), 7 * USDC)
    cd.desk.withdraw(addr(D), 9 * USDC)
    batches = cut_batches(cd)
    assert len(batches) >= 3
    assert confirmed_ids(cd.clear()) == [b.batch_id for b in batches]
    assert cd.bridge.halted is None
    assert cd.bridge.status()["reconciled"] is True
    assert_chain_holds_engine_totals(cd)
    assert (cd.received(A), cd.received(D)) == (7 * USDC, 9 * USDC)


def test_a_fill_proof_verifies_on_chain_and_a_tampered_one_does_not(world: World) -> None:
    cd = funded(world, A, B, C)
    for maker, taker in ((A, B), (B, C), (C, A), (A, C), (B, A)):
        trade(cd, maker, taker)
    (batch,) = cut_batches(cd)
    cd.clear()
    assert len(batch.fills) == 5
    verify = cd.house.functions.verifyFill
    for fill in batch.fills:
        leaf, proof = fill_proof(batch, fill.trade_id, fill.symbol)
        assert leaf == fill_leaf(fill)
        assert proof
        assert verify(batch.batch_id, leaf, proof).call() is True
        forged = fill_leaf(msgspec.structs.replace(fill, qty=fill.qty + 1))
        assert verify(batch.batch_id, forged, proof).call() is False
        bent = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
        assert verify(batch.batch_id, leaf, bent).call() is False
        assert verify(batch.batch_id, leaf, proof[:-1]).call() is False
        assert verify(batch.batch_id + 1, leaf, proof).call() is False


# --- tampering -----------------------------------------------------------------------------------


def test_an_engine_whose_journal_differs_fails_reconciliation_and_halts(world: World) -> None:
    cd = Bench(world)
    cd.deposit(A, 1000 * USDC)
    cd.deposit(B, 1000 * USDC)
    assert cd.poll() == [CreditDeposit(1, addr(A), 1000 * USDC),
                         CreditDeposit(2, addr(B), 1000 * USDC)]
    # a second engine on the same contracts, whose journal says A deposited twice as much
    tampered = Bench(world)
    apply_all(tampered, [CreditDeposit(1, addr(A), 2000 * USDC),
                         CreditDeposit(2, addr(B), 1000 * USDC)])
    trade(tampered, B, A)  # A pays the taker fee: A is in the batch
    tampered.clear()
    assert tampered.bridge.batches_sent == 1
    assert last_batch_id(tampered) == 1
    reason = tampered.bridge.halted
    assert reason is not None
    assert reason.startswith("reconciliation failed after batch 1: ")
    held = tampered.settled(addr(A))
    expected = tampered.ex.ledger.balances(addr(A)).total()
    assert expected - held == 1000 * USDC
    assert f"{addr(A)} holds {held} on chain, the engine says {expected}" in reason
    status = tampered.bridge.status()
    assert status["reconciled"] is False
    assert status["halted"] == reason
    # and clearing stays stopped
    tampered.desk.withdraw(addr(A), 10 * USDC)
    assert tampered.clear() == []
    assert tampered.bridge.batches_sent == 1
    assert last_batch_id(tampered) == 1
    assert cd.received(A) == 0


def test_a_batch_settled_outside_the_bridge_halts_clearing(world: World) -> None:
    cd = funded(world, A, B)
    trade(cd, A, B)
    assert confirmed_ids(cd.clear()) == [1]
    # the operator key moves money on chain behind the engine's back
    house = cd.house.functions
    cd.chain.transact(cd.operator, house.settleBatch(
        2, bytes(house.lastBatchHash().call()), 2,
        [(A.address, -100 * USDC), (B.address, 100 * USDC)], [], bytes(32), bytes(32), True),
        "rogue batch")
    trade(cd, B, A, BUY, price=FUT_PRICE + 5)
    cd.desk.withdraw(addr(A), 10 * USDC)
    assert [b.batch_id for b in cut_batches(cd)] == [2]
    assert confirmed_ids(cd.clear()) == []
    reason = cd.bridge.halted
    assert reason is not None and reason.startswith("batch 2 on chain has hash 0x")
    assert "the engine's is 0x" in reason
    assert cd.bridge.status()["reconciled"] is False
    assert cd.bridge.batches_sent == 1
    assert last_batch_id(cd) == 2
    assert cd.received(A) == 0
    assert [b.batch_id for b in cd.ex.clearing.unconfirmed] == [2]


def test_a_batch_the_chain_refuses_halts_clearing(world: World) -> None:
    cd = Bench(world)
    cd.deposit(A, 1000 * USDC)
    cd.poll()
    # an engine that credited more than the chain holds pays out more than it can
    tampered = Bench(world)
    apply_all(tampered, [CreditDeposit(1, addr(A), 3000 * USDC)])
    tampered.desk.withdraw(addr(A), 1500 * USDC)
    tampered.clear()
    assert tampered.bridge.halted == "batch 1 reverted: withdrawal over balance"
    assert tampered.bridge.status()["reconciled"] is False
    assert tampered.bridge.batches_sent == 0
    assert last_batch_id(tampered) == 0
    assert tampered.settled(addr(A)) == 1000 * USDC == tampered.vault_tokens()


def test_a_cover_the_insurance_fund_cannot_pay_halts_clearing_with_the_reason(
        world: World) -> None:
    # Alice buys at the top of the band with little more than the margin; a trade at the
    # bottom moves the mark and her loss is far over what she has. The fund, never funded on
    # this chain, covers her in the ledger and goes below zero: the chain holds no debts.
    cd = Bench(world)
    cd.deposit(A, 450 * USDC)
    for who in (B, C, D):
        cd.deposit(who, 10_000 * USDC)
    cd.poll()
    cd.desk.rest(addr(B), GPU_FUT, SELL, 1, 600)
    cd.desk.place(addr(A), GPU_FUT, BUY, 1, 600)
    cd.desk.rest(addr(D), GPU_FUT, BUY, 1, 400)
    cd.desk.place(addr(C), GPU_FUT, SELL, 1, 400)
    assert of_type(cd.cut(), InsuranceCover)
    cd.poll()
    halted = cd.bridge.halted
    assert halted is not None and INSURANCE_FUND in halted and "holds no debts" in halted
    assert cd.bridge.batches_sent == 0 and last_batch_id(cd) == 0
    assert cd.bridge.status()["reconciled"] is False


# --- forced withdrawals and the escape hatch -----------------------------------------------------


def test_a_forced_withdrawal_cancels_orders_pays_and_can_no_longer_freeze(
        world: World) -> None:
    cd = funded(world, A, B)
    trade(cd, A, B, qty=2)  # A holds margin on a long position
    cd.desk.rest(addr(A), GPU_FUT, BUY, 2, FUT_PRICE - 30)
    cd.desk.rest(addr(A), GPU_FUT, SELL, 1, FUT_PRICE + 30)
    assert confirmed_ids(cd.clear()) == [1]
    assert sum(o.account == addr(A) for o in cd.ex.orders.values()) == 2
    asked = cd.settled(addr(A))  # everything A holds on chain: more than is free

    cd.request_forced_withdrawal(A, asked)
    commands, events = poll_events(cd)
    assert commands == [ForceWithdrawal(1, addr(A), asked)]
    cancelled = of_type(events, OrderCancelled)
    assert len(cancelled) == 2
    assert {c.reason for c in cancelled} == {Reason.FORCED_WITHDRAWAL}
    assert not any(o.account == addr(A) for o in cd.ex.orders.values())
    (forced,) = of_type(events, ForcedWithdrawal)
    assert 0 < forced.paid < asked
    assert cd.ex.ledger.balances(addr(A)).available == 0
    assert cd.poll() == []  # requested once, sent once

    assert confirmed_ids(cd.clear()) == [2]
    account, amount, _, served = cd.house.functions.forcedRequests(1).call()
    assert (account, amount, served) == (A.address, asked, True)
    assert cd.received(A) == forced.paid
    assert 0 in cd.bridge.paid_withdrawals
    assert_chain_holds_engine_totals(cd)

    evm(cd.chain).time_travel(chain_now(cd.chain) + DELAY_S + 60)
    with reverts("forced request"):
        cd.house.functions.freeze(1).call({"from": B.address})
    assert cd.bridge.status()["frozen"] is False


def test_a_forced_request_is_answered_after_the_deposits_before_it(world: World) -> None:
    # with confirmations, a request right after a deposit must not reach the engine before
    # that deposit's credit (the engine would find nothing to pay and serve it with 0)
    cd = Bench(world, confirmations=2)
    cd.deposit(A, 500 * USDC)
    cd.request_forced_withdrawal(A, 200 * USDC)  # the next block
    _, events = poll_events(cd)
    evm(cd.chain).mine_blocks(2)
    commands, later = poll_events(cd)
    assert CreditDeposit(1, addr(A), 500 * USDC) in commands
    forced = of_type(events + later, ForcedWithdrawal)
    assert [(f.request_id, f.paid) for f in forced] == [(1, 200 * USDC)]
    cd.clear()
    assert cd.received(A) == 200 * USDC


def frozen_after_last_batch(world: World, *, with_fees: bool) -> tuple[Bench, dict[str, int]]:
    """A, B and C trade (or not) and C withdraws; batch 1 settles. Then the engine goes on
    but nothing settles any more, D deposits, B asks for a forced withdrawal, the delay
    passes and D freezes the vault. Also the settled balances at the freeze."""
    cd = funded(world, A, B, C)
    if with_fees:
        trade(cd, A, B, qty=2)
        trade(cd, C, A, SELL, price=FUT_PRICE + 15)
    cd.desk.withdraw(addr(C), 300 * USDC)
    assert confirmed_ids(cd.clear()) == [1]
    cd.desk.withdraw(addr(A), 400 * USDC)
    trade(cd, B, C)
    assert [b.batch_id for b in cut_batches(cd)] == [2]
    cd.deposit(D, 70 * USDC)  # the chain holds it though no engine credits it
    cd.request_forced_withdrawal(B, 10 * USDC)
    settled: dict[str, int] = {who.address: cd.settled(who.address) for who in USERS}
    evm(cd.chain).time_travel(chain_now(cd.chain) + DELAY_S + 1)
    send(cd.chain, D, cd.house.functions.freeze(1))  # anyone may
    assert cd.house.functions.frozen().call() is True
    return cd, settled


@pytest.mark.parametrize("with_fees", [False, True], ids=["no_fees", "fees"])
def test_when_the_operator_disappears_exit_pays_every_last_settled_balance(
        world: World, with_fees: bool) -> None:
    cd, settled = frozen_after_last_batch(world, with_fees=with_fees)
    assert settled[D.address] == 70 * USDC
    assert settled[A.address] > 4000 * USDC  # the withdrawal after batch 1 never settled
    for who in USERS:
        before = cd.received(who)
        send(cd.chain, who, cd.house.functions.exit())
        assert cd.received(who) - before == settled[who.address]
        assert cd.settled(who.address) == 0
    assert cd.received(C) == 300 * USDC + settled[C.address]
    system = cd.settled(FEE_ACCOUNT) + cd.settled(INSURANCE_FUND)
    assert (system > 0) == with_fees
    # what stays is the fee account's (and insurance fund's): no key can take it out
    assert cd.vault_tokens() == system
    if not with_fees:
        assert cd.vault_tokens() == 0


def test_a_bridge_on_a_frozen_vault_halts_clearing(world: World) -> None:
    cd, _ = frozen_after_last_batch(world, with_fees=False)
    cd.restart_bridge()
    assert confirmed_ids(cd.poll()) == []
    assert cd.bridge.halted == "batch 2 reverted: frozen"
    assert cd.bridge.status()["frozen"] is True
