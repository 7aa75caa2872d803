"""The CMX contracts on web3's in-process chain (eth-tester + py-evm).

One chain per module with the contracts deployed and the users funded; every test starts
from a snapshot of it and the chain is put back afterwards, so tests stay independent and the
file runs in seconds. Every refusal is checked by its exact revert reason.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_tester.exceptions import TransactionFailed
from eth_typing import ChecksumAddress
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD
from web3.types import TxReceipt

from chain_bridge.attestation import digest as attestation_digest
from chain_bridge.contracts import batch_hash, contract_at, deploy
from chain_bridge.merkle import merkle_proof, merkle_root

ZERO_HASH = bytes(32)
DELAY = 3_600  # forced withdrawal delay, seconds
FUNDS = 1_000_000_000  # 1,000 tUSDC per user
DIFFICULTY = 16
TX_GAS = 5_000_000
GPU_H100 = b"GPU.H100".ljust(32, b"\0")
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

Delta = tuple[str, int]
Withdrawal = tuple[int, int, str, int]


@dataclass
class Chain:
    """The deployed contracts and the accounts that use them."""

    w3: Web3
    tester: Any  # eth_tester.EthereumTester, untyped
    token: Contract
    house: Contract
    registry: Contract
    deployer: ChecksumAddress
    operator: ChecksumAddress
    fee: ChecksumAddress
    users: list[ChecksumAddress]

    def transact(self, call: Any, sender: str) -> TxReceipt:
        """Sends a contract call from ``sender`` and returns its (successful) receipt.

        It is first run as a call on the pending block, which raises with the revert reason;
        the transaction then goes with a fixed gas limit, since py-evm's gas estimate (a
        binary search of runs) would triple the time this file takes.
        """
        call.call({"from": sender}, block_identifier="pending")
        tx_hash = call.transact({"from": sender, "gas": TX_GAS})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        assert receipt["status"] == 1
        return receipt

    def deposit(self, account: str, amount: int) -> TxReceipt:
        return self.transact(self.house.functions.deposit(amount), account)

    def settle(
        self,
        deltas: Sequence[Delta] = (),
        withdrawals: Sequence[Withdrawal] = (),
        *,
        batch_id: int | None = None,
        prev_hash: bytes | None = None,
        credited: int | None = None,
        fills_root: bytes = ZERO_HASH,
        attestations_root: bytes = ZERO_HASH,
        last_chunk: bool = True,
        sender: str | None = None,
    ) -> TxReceipt:
        """Settles a batch chunk; what is not given continues the chain as the operator would."""
        house = self.house.functions
        call = house.settleBatch(
            house.lastBatchId().call() + 1 if batch_id is None else batch_id,
            house.lastBatchHash().call() if prev_hash is None else prev_hash,
            house.lastDepositId().call() if credited is None else credited,
            list(deltas),
            list(withdrawals),
            fills_root,
            attestations_root,
            last_chunk,
        )
        return self.transact(call, self.operator if sender is None else sender)

    def balance(self, account: str) -> int:
        return int(self.house.functions.balanceOf(account).call())

    def token_balance(self, account: str) -> int:
        return int(self.token.functions.balanceOf(account).call())

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def travel(self, seconds: int) -> None:
        """Makes the next block's time ``seconds`` past the latest block's."""
        self.tester.time_travel(self.now() + seconds)


@contextmanager
def reverts(reason: str) -> Iterator[None]:
    """Expects the transaction or call inside to revert with exactly ``reason``."""
    # eth-tester raises its own TransactionFailed, a JSON-RPC node web3's ContractLogicError;
    # both carry "execution reverted: <reason>"
    with pytest.raises((TransactionFailed, ContractLogicError)) as info:
        yield
    assert info.value.args[0] == f"execution reverted: {reason}"


@pytest.fixture(scope="module")
def module_chain() -> Chain:
    provider = EthereumTesterProvider()
    w3 = Web3(provider)
    deployer, operator, fee, *users = list(w3.eth.accounts)
    token_address = deploy(w3, "CollateralToken", sender=deployer)
    house_address = deploy(
        w3, "ClearingHouse", token_address, operator, fee, DELAY, sender=deployer
    )
    chain = Chain(
        w3=w3,
        tester=provider.ethereum_tester,
        token=contract_at(w3, "CollateralToken", token_address),
        house=contract_at(w3, "ClearingHouse", house_address),
        registry=contract_at(
            w3, "UptimeRegistry", deploy(w3, "UptimeRegistry", DIFFICULTY, sender=deployer)
        ),
        deployer=deployer,
        operator=operator,
        fee=fee,
        users=list(users),
    )
    for user in users:
        chain.transact(chain.token.functions.mint(user, FUNDS), deployer)
        chain.transact(chain.token.functions.approve(house_address, 2**256 - 1), user)
    return chain


@pytest.fixture
def chain(module_chain: Chain) -> Iterator[Chain]:
    snapshot = module_chain.tester.take_snapshot()
    yield module_chain
    module_chain.tester.revert_to_snapshot(snapshot)


def events(contract: Contract, name: str, receipt: TxReceipt) -> list[dict[str, Any]]:
    """The decoded ``name`` events of ``receipt``, as plain dicts of their arguments."""
    # a receipt also holds the other contract's logs: those are skipped, not warned about
    logs = contract.events[name]().process_receipt(receipt, errors=DISCARD)
    return [dict(log["args"]) for log in logs if log["address"] == contract.address]


# --- collateral token ---------------------------------------------------------------------


def test_token_metadata_and_minting(chain: Chain) -> None:
    token = chain.token.functions
    assert (token.name().call(), token.symbol().call(), token.decimals().call()) == (
        "CMX Test USDC",
        "tUSDC",
        6,
    )
    assert token.totalSupply().call() == FUNDS * len(chain.users)
    with reverts("only minter"):
        chain.transact(token.mint(chain.users[0], 1), chain.users[0])
    receipt = chain.transact(token.transfer(chain.users[1], 5), chain.users[0])
    assert events(chain.token, "Transfer", receipt) == [
        {"from": chain.users[0], "to": chain.users[1], "value": 5}
    ]
    assert chain.token_balance(chain.users[1]) == FUNDS + 5
    with reverts("insufficient balance"):
        chain.transact(token.transfer(chain.users[1], FUNDS), chain.users[0])
    with reverts("insufficient allowance"):
        chain.transact(token.transferFrom(chain.users[1], chain.users[2], 1), chain.users[0])


# --- deposits -----------------------------------------------------------------------------


def test_deposit_ids_strictly_increase_with_events(chain: Chain) -> None:
    a, b = chain.users[:2]
    seen = []
    for account, amount in [(a, 100), (b, 250), (a, 7)]:
        receipt = chain.deposit(account, amount)
        (event,) = events(chain.house, "Deposited", receipt)
        assert event["account"] == account and event["amount"] == amount
        seen.append(event["depositId"])
    assert seen == [1, 2, 3]
    assert chain.house.functions.lastDepositId().call() == 3
    assert chain.balance(a) == 107 and chain.balance(b) == 250
    assert chain.token_balance(chain.house.address) == 357
    with reverts("zero amount"):
        chain.deposit(a, 0)


ZERO_ADDRESS = "0x" + "00" * 20


def test_deposit_for_credits_another_account(chain: Chain) -> None:
    # how the operator funds the insurance fund, an address no one holds a key to
    payer, fund = chain.users[0], Web3.to_checksum_address("0x" + "00" * 19 + "f1")
    before = chain.token_balance(payer)
    receipt = chain.transact(chain.house.functions.depositFor(fund, 500), payer)
    assert events(chain.house, "Deposited", receipt) == [
        {"account": fund, "amount": 500, "depositId": 1}]
    assert chain.balance(fund) == 500 and chain.balance(payer) == 0
    assert chain.token_balance(payer) == before - 500
    with reverts("zero address"):
        chain.transact(chain.house.functions.depositFor(ZERO_ADDRESS, 1), payer)
    with reverts("zero amount"):
        chain.transact(chain.house.functions.depositFor(fund, 0), payer)


# --- settlement checks --------------------------------------------------------------------


def test_only_the_operator_settles(chain: Chain) -> None:
    with reverts("only operator"):
        chain.settle(sender=chain.users[0])


def test_wrong_batch_id(chain: Chain) -> None:
    for batch_id in (0, 2):
        with reverts("batch id"):
            chain.settle(batch_id=batch_id)


def test_wrong_previous_hash(chain: Chain) -> None:
    chain.settle()
    with reverts("previous hash"):
        chain.settle(prev_hash=ZERO_HASH)


def test_replayed_batch_is_refused(chain: Chain) -> None:
    a, b = chain.users[:2]
    chain.deposit(a, 100)
    args: dict[str, Any] = {"batch_id": 1, "prev_hash": ZERO_HASH, "credited": 1}
    chain.settle([(a, -40), (b, 40)], **args)
    with reverts("batch id"):
        chain.settle([(a, -40), (b, 40)], **args)
    assert chain.balance(a) == 60 and chain.balance(b) == 40


def test_credited_deposit_id_in_range(chain: Chain) -> None:
    a = chain.users[0]
    for _ in range(3):
        chain.deposit(a, 10)
    with reverts("deposit id"):
        chain.settle(credited=4)  # beyond the last deposit
    chain.settle(credited=2)
    with reverts("deposit id"):
        chain.settle(credited=1)  # going backwards
    chain.settle(credited=2)
    chain.settle(credited=3)
    assert chain.house.functions.lastCreditedDepositId().call() == 3


def test_deltas_must_sum_to_zero(chain: Chain) -> None:
    a, b = chain.users[:2]
    chain.deposit(a, 100)
    with reverts("not zero-sum"):
        chain.settle([(a, -40), (b, 39)])
    with reverts("not zero-sum"):
        chain.settle([(a, -40), (b, 41)])


def test_non_final_chunk_cannot_credit_before_debit(chain: Chain) -> None:
    a, b = chain.users[:2]
    chain.deposit(a, 100)
    with reverts("credit before debit"):
        chain.settle([(b, 40)], last_chunk=False)
    with reverts("credit before debit"):
        chain.settle([(b, 40), (a, -39)], last_chunk=False)


def test_negative_balance(chain: Chain) -> None:
    a, b = chain.users[:2]
    chain.deposit(a, 100)
    with reverts("negative balance"):
        chain.settle([(a, -101), (b, 101)])
    with reverts("negative balance"):  # the most negative int256 cannot wrap into a credit
        chain.settle([(a, -(2**255)), (b, 2**255 - 1), (b, 1)])
    chain.settle([(a, -100), (b, 100)])
    assert chain.balance(a) == 0


def test_chunked_batch_settles_and_chains_hashes(chain: Chain) -> None:
    a, b, c = chain.users[:3]
    for account in (a, b):
        chain.deposit(account, 1_000)
    leaves = [bytes([i]) * 32 for i in range(1, 6)]
    chunks: list[tuple[list[Delta], list[Withdrawal], bool]] = [
        ([(a, -300), (b, -200)], [], False),
        ([(a, -100), (c, 350)], [(1, 0, b, 50)], False),
        ([(c, 150), (chain.fee, 100)], [(2, 0, c, 500)], True),
    ]
    prev, carry = ZERO_HASH, 0
    for batch_id, (deltas, withdrawals, last) in enumerate(chunks, start=1):
        fills_root = merkle_root(leaves[: batch_id + 2])
        attestations_root = bytes([batch_id]) * 32
        receipt = chain.settle(
            deltas,
            withdrawals,
            fills_root=fills_root,
            attestations_root=attestations_root,
            last_chunk=last,
        )
        carry += sum(amount for _, amount in deltas)
        house = chain.house.functions
        assert house.batchCarry().call() == (0 if last else carry)
        expected = batch_hash(
            batch_id, prev, 2, deltas, withdrawals, fills_root, attestations_root, last
        )
        assert events(chain.house, "BatchSettled", receipt) == [
            {
                "batchId": batch_id,
                "batchHash": expected,
                "fillsRoot": fills_root,
                "attestationsRoot": attestations_root,
                "creditedDepositId": 2,
                "lastChunk": last,
            }
        ]
        assert house.lastBatchHash().call() == expected == house.batchHashes(batch_id).call()
        assert house.fillsRoots(batch_id).call() == fills_root
        assert house.attestationsRoots(batch_id).call() == attestations_root
        assert house.lastBatchId().call() == batch_id
        prev = expected
    assert [chain.balance(x) for x in (a, b, c, chain.fee)] == [600, 750, 0, 100]
    assert chain.token_balance(chain.house.address) == 1_450
    # the fills committed by batch 3 can be proven on chain, one by one
    for index, leaf in enumerate(leaves):
        proof = merkle_proof(leaves, index)
        assert chain.house.functions.verifyFill(3, leaf, proof).call()
    assert not chain.house.functions.verifyFill(2, leaves[4], merkle_proof(leaves, 4)).call()


def test_batch_hash_matches_python_with_withdrawals(chain: Chain) -> None:
    a, b = chain.users[:2]
    chain.deposit(a, 500)
    chain.deposit(b, 500)
    deltas = [(a, -7), (b, 7)]
    withdrawals = [(11, 0, a, 93), (12, 0, b, 1)]
    roots = (b"\x11" * 32, b"\x22" * 32)
    chain.settle(deltas, withdrawals, credited=1, fills_root=roots[0], attestations_root=roots[1])
    assert chain.house.functions.lastBatchHash().call() == batch_hash(
        1, ZERO_HASH, 1, deltas, withdrawals, *roots, True
    )


# --- withdrawals --------------------------------------------------------------------------


def test_token_transfers_match_withdrawals(chain: Chain) -> None:
    a, b = chain.users[:2]
    chain.deposit(a, 1_000)
    receipt = chain.settle([(a, -300), (b, 300)], [(1, 0, a, 200), (2, 0, b, 300), (3, 0, a, 1)])
    assert events(chain.house, "Withdrawn", receipt) == [
        {"withdrawalId": 1, "account": a, "amount": 200},
        {"withdrawalId": 2, "account": b, "amount": 300},
        {"withdrawalId": 3, "account": a, "amount": 1},
    ]
    assert events(chain.token, "Transfer", receipt) == [
        {"from": chain.house.address, "to": a, "value": 200},
        {"from": chain.house.address, "to": b, "value": 300},
        {"from": chain.house.address, "to": a, "value": 1},
    ]
    assert chain.token_balance(a) == FUNDS - 1_000 + 201
    assert chain.token_balance(b) == FUNDS + 300
    assert chain.balance(a) == 499 and chain.balance(b) == 0
    assert chain.token_balance(chain.house.address) == 499


def test_withdrawal_over_balance(chain: Chain) -> None:
    a, b = chain.users[:2]
    chain.deposit(a, 100)
    with reverts("withdrawal over balance"):
        chain.settle([], [(1, 0, a, 101)])
    with reverts("withdrawal over balance"):  # the deltas apply first
        chain.settle([(a, -50), (b, 50)], [(1, 0, a, 51)])
    with reverts("withdrawal over balance"):  # two withdrawals together
        chain.settle([], [(1, 0, a, 60), (2, 0, a, 41)])
    with reverts("withdrawal over balance"):
        chain.transact(chain.house.functions.requestForcedWithdrawal(101), a)
    with reverts("withdrawal over balance"):
        chain.transact(chain.house.functions.requestForcedWithdrawal(0), a)


# --- forced withdrawals, freeze and exit --------------------------------------------------


def request_forced(chain: Chain, account: str, amount: int) -> int:
    receipt = chain.transact(chain.house.functions.requestForcedWithdrawal(amount), account)
    (event,) = events(chain.house, "ForcedWithdrawalRequested", receipt)
    assert event["account"] == account and event["amount"] == amount
    return int(event["requestId"])


def test_freeze_only_after_the_delay(chain: Chain) -> None:
    a = chain.users[0]
    chain.deposit(a, 100)
    request_id = request_forced(chain, a, 60)
    account, amount, requested_at, served = chain.house.functions.forcedRequests(request_id).call()
    assert (account, amount, served) == (a, 60, False)
    assert requested_at == chain.now()
    with reverts("forced request"):  # no such request
        chain.transact(chain.house.functions.freeze(request_id + 1), chain.users[5])
    freeze = chain.house.functions.freeze(request_id)
    with reverts("too early"):
        chain.transact(freeze, chain.users[5])
    # time_travel(t) mines a block at t - 1, so the next block is at t
    chain.tester.time_travel(requested_at + DELAY - 1)
    with reverts("too early"):
        chain.transact(freeze, chain.users[5])
    chain.tester.time_travel(requested_at + DELAY)
    receipt = chain.transact(freeze, chain.users[5])
    assert chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"] == requested_at + DELAY
    assert events(chain.house, "Frozen", receipt) == [{"requestId": request_id}]
    assert chain.house.functions.frozen().call()


def test_served_request_cannot_freeze(chain: Chain) -> None:
    a, b = chain.users[:2]
    chain.deposit(a, 100)
    chain.deposit(b, 100)
    request_id = request_forced(chain, a, 60)
    for bad in ([(1, request_id, b, 10)], [(1, request_id, a, 61)], [(1, request_id + 1, a, 10)]):
        with reverts("forced request"):  # another account's, over its amount, no such request
            chain.settle([], bad)
    receipt = chain.settle([], [(1, request_id, a, 50)])  # may pay less than asked
    assert events(chain.house, "ForcedWithdrawalServed", receipt) == [
        {"requestId": request_id, "account": a, "amount": 50}
    ]
    assert chain.house.functions.forcedRequests(request_id).call()[3] is True
    with reverts("forced request"):  # served once only
        chain.settle([], [(2, request_id, a, 10)])
    chain.travel(DELAY + 1)
    with reverts("forced request"):
        chain.transact(chain.house.functions.freeze(request_id), chain.users[5])
    assert not chain.house.functions.frozen().call()


def freeze(chain: Chain, account: str) -> None:
    """Freezes the clearing house through a forced request of ``account`` left unserved."""
    request_id = request_forced(chain, account, 1)
    chain.travel(DELAY + 1)
    chain.transact(chain.house.functions.freeze(request_id), chain.users[-1])


def test_exit_pays_the_last_settled_balance_once(chain: Chain) -> None:
    a, b, c = chain.users[:3]
    chain.deposit(a, 1_000)
    chain.deposit(b, 500)
    chain.settle([(a, -200), (b, 150), (chain.fee, 50)], [(1, 0, b, 100)])
    chain.deposit(c, 70)  # never batched: still the account's settled balance
    freeze(chain, a)
    expected = {a: 800, b: 550, c: 70, chain.fee: 50}
    for account, amount in expected.items():
        before = chain.token_balance(account)
        receipt = chain.transact(chain.house.functions.exit(), account)
        assert events(chain.house, "Exited", receipt) == [{"account": account, "amount": amount}]
        assert chain.token_balance(account) == before + amount
        assert chain.balance(account) == 0
        with reverts("nothing to exit"):
            chain.transact(chain.house.functions.exit(), account)
    assert chain.token_balance(chain.house.address) == 0


def test_nothing_moves_after_freeze(chain: Chain) -> None:
    a, b = chain.users[:2]
    with reverts("not frozen"):
        chain.transact(chain.house.functions.exit(), a)
    chain.deposit(a, 100)
    chain.deposit(b, 100)
    freeze(chain, a)
    with reverts("frozen"):
        chain.deposit(a, 10)
    with reverts("frozen"):
        chain.settle([(a, -10), (b, 10)])
    with reverts("frozen"):
        chain.transact(chain.house.functions.requestForcedWithdrawal(10), b)
    with reverts("frozen"):
        chain.transact(chain.house.functions.freeze(1), b)
    chain.transact(chain.house.functions.exit(), a)
    with reverts("nothing to exit"):
        chain.transact(chain.house.functions.exit(), a)
    assert chain.balance(b) == 100 and chain.token_balance(chain.house.address) == 100


def test_vault_holds_the_sum_of_balances_after_random_batches(chain: Chain) -> None:
    rng = random.Random(7)
    accounts = [*chain.users, chain.fee]
    withdrawal_id = 0
    for _ in range(6):
        for account in rng.sample(chain.users, 3):
            chain.deposit(account, rng.randint(1, 10_000))
        balances = {account: chain.balance(account) for account in accounts}
        # random transfers between accounts: each a debit and a credit, never below zero
        deltas: list[Delta] = []
        for _ in range(rng.randint(1, 8)):
            payer, payee = rng.sample(accounts, 2)
            amount = rng.randint(0, balances[payer])
            balances[payer] -= amount
            balances[payee] += amount
            deltas += [(payer, -amount), (payee, amount)]
        withdrawals: list[Withdrawal] = []
        for account in rng.sample(accounts, 2):
            amount = rng.randint(0, balances[account])
            balances[account] -= amount
            withdrawal_id += 1
            withdrawals.append((withdrawal_id, 0, account, amount))
        chain.settle(deltas, withdrawals)
        assert {account: chain.balance(account) for account in accounts} == balances
        assert sum(balances.values()) == chain.token_balance(chain.house.address)


def test_gas_per_delta_stays_well_under_10k(chain: Chain) -> None:
    payer = chain.users[0]
    accounts = [Web3.to_checksum_address(f"0x{i:040x}") for i in range(1, 101)]
    chain.deposit(payer, 100 * 1_000)
    # first settlement: every account goes from zero to a balance (a fresh storage slot each)
    first = chain.settle([(payer, -100_000), *[(account, 1_000) for account in accounts]])
    empty = chain.settle()
    # then 100 deltas over balances that exist already, the usual case
    deltas = [(account, -1 if i % 2 == 0 else 1) for i, account in enumerate(accounts)]
    warm = chain.settle(deltas)
    per_delta = (warm["gasUsed"] - empty["gasUsed"]) / len(deltas)
    fresh_per_delta = (first["gasUsed"] - empty["gasUsed"]) / 101
    print(f"settleBatch gas per delta: {per_delta:.0f} (new balances: {fresh_per_delta:.0f})")
    assert per_delta < 8_000


# --- uptime registry ----------------------------------------------------------------------

NODE_KEYS = [Account.from_key(bytes([i]) * 32) for i in range(1, 4)]


def digest_of(chain: Chain, node: str, epoch: int, beacon: bytes, nonce: int) -> bytes:
    return attestation_digest(
        chain.w3.eth.chain_id, chain.registry.address, node, epoch, beacon, nonce
    )


def solve(chain: Chain, node: str, epoch: int, beacon: bytes, *, below: bool = True) -> int:
    """Finds a nonce whose attestation digest is below the registry's target (or, with
    ``below=False``, one whose digest misses it)."""
    target = chain.registry.functions.target().call()
    for nonce in range(100_000):
        if (int.from_bytes(digest_of(chain, node, epoch, beacon, nonce), "big") < target) == below:
            return nonce
    raise AssertionError("no nonce found")


def sign(key: LocalAccount, digest: bytes) -> bytes:
    return bytes(Account.sign_message(encode_defunct(primitive=digest), key.key).signature)


def register(chain: Chain, provider: str, node: str, units: int = 8) -> TxReceipt:
    return chain.transact(chain.registry.functions.registerNode(node, GPU_H100, units), provider)


def test_registry_difficulty(chain: Chain) -> None:
    registry = chain.registry.functions
    assert registry.target().call() == (2**256 - 1) // DIFFICULTY
    with reverts("only owner"):
        chain.transact(registry.setDifficulty(2), chain.users[0])
    with reverts("zero difficulty"):
        chain.transact(registry.setDifficulty(0), chain.deployer)
    chain.transact(registry.setDifficulty(1_000), chain.deployer)
    assert registry.target().call() == (2**256 - 1) // 1_000


def test_node_registration(chain: Chain) -> None:
    provider, other = chain.users[:2]
    node = NODE_KEYS[0].address
    receipt = register(chain, provider, node, 8)
    assert events(chain.registry, "NodeRegistered", receipt) == [
        {"provider": provider, "node": node, "nodeClass": GPU_H100, "units": 8}
    ]
    registered_at = chain.now()
    assert chain.registry.functions.nodes(node).call() == [
        provider,
        GPU_H100,
        8,
        registered_at,
        True,
        0,
    ]
    assert chain.registry.functions.isActive(node, registered_at + 10**6).call()
    assert not chain.registry.functions.isActive(NODE_KEYS[1].address, registered_at).call()
    with reverts("registered"):
        register(chain, other, node)
    with reverts("zero units"):
        register(chain, provider, NODE_KEYS[1].address, 0)
    with reverts("zero node"):
        register(chain, provider, "0x" + "00" * 20)


def test_node_deregistration(chain: Chain) -> None:
    provider, other = chain.users[:2]
    node = NODE_KEYS[0].address
    register(chain, provider, node)
    registry = chain.registry.functions
    now = chain.now()
    with reverts("not provider"):
        chain.transact(registry.deregisterNode(node, now + 100), other)
    with reverts("not provider"):  # not registered at all
        chain.transact(registry.deregisterNode(NODE_KEYS[1].address, now + 100), provider)
    with reverts("past"):
        chain.transact(registry.deregisterNode(node, now), provider)
    effective = now + 1_000
    receipt = chain.transact(registry.deregisterNode(node, effective), provider)
    assert events(chain.registry, "NodeDeregistered", receipt) == [
        {"provider": provider, "node": node, "effectiveAt": effective}
    ]
    assert registry.isActive(node, effective - 1).call()
    assert not registry.isActive(node, effective).call()
    assert registry.nodes(node).call()[4:] == [False, effective]
    with reverts("deregistered"):  # cannot be pushed later
        chain.transact(registry.deregisterNode(node, effective + 1), provider)
    chain.transact(registry.deregisterNode(node, effective - 500), provider)
    assert not registry.isActive(node, effective - 500).call()


def test_attestation_digest_matches_python(chain: Chain) -> None:
    node, beacon = NODE_KEYS[0].address, b"\xab" * 32
    on_chain = chain.registry.functions.attestationDigest(node, 12, beacon, 345).call()
    assert on_chain == digest_of(chain, node, 12, beacon, 345)


def test_verify_attestation(chain: Chain) -> None:
    provider = chain.users[0]
    key, other_key = NODE_KEYS[0], NODE_KEYS[1]
    register(chain, provider, key.address)
    register(chain, provider, other_key.address)
    epoch, beacon = 42, bytes(chain.w3.eth.get_block("latest")["hash"])
    nonce = solve(chain, key.address, epoch, beacon)
    digest = digest_of(chain, key.address, epoch, beacon, nonce)
    signature = sign(key, digest)

    def verify(node: str, epoch: int, beacon: bytes, nonce: int, signature: bytes) -> bool:
        return bool(
            chain.registry.functions.verifyAttestation(node, epoch, beacon, nonce, signature).call()
        )

    assert verify(key.address, epoch, beacon, nonce, signature)
    assert not verify(key.address, epoch, beacon, nonce + 1, signature)
    assert not verify(key.address, epoch, b"\xcd" * 32, nonce, signature)
    assert not verify(key.address, epoch + 1, beacon, nonce, signature)
    assert not verify(other_key.address, epoch, beacon, nonce, signature)
    assert not verify(NODE_KEYS[2].address, epoch, beacon, nonce, signature)  # unregistered
    assert not verify(key.address, epoch, beacon, nonce, sign(other_key, digest))
    tampered = bytearray(signature)
    tampered[10] ^= 1
    assert not verify(key.address, epoch, beacon, nonce, bytes(tampered))
    assert not verify(key.address, epoch, beacon, nonce, signature[:64])
    assert not verify(key.address, epoch, beacon, nonce, signature[:64] + bytes([1]))
    # the malleable twin (n - s, other v) recovers the same key but is refused
    s = int.from_bytes(signature[32:64], "big")
    twin = signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - signature[64]])
    assert not verify(key.address, epoch, beacon, nonce, twin)
    # a correctly signed digest that misses the target
    missed = solve(chain, key.address, epoch, beacon, below=False)
    missed_signature = sign(key, digest_of(chain, key.address, epoch, beacon, missed))
    assert not verify(key.address, epoch, beacon, missed, missed_signature)
