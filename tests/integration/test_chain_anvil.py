"""The chain bridge against a real Anvil node: restarts, lost receipts, outages, many batches.

One Anvil process serves the module (a free loopback port, stopped at the end); each test
deploys its own contracts on it through `ChainDesk`. The outage tests run their own node
with a state file, so that stopping it and starting it again on the same port keeps the
chain. Nothing is mocked: the bridge talks JSON-RPC to Anvil, the engine is a real
`Exchange` behind a `Desk`.

Anvil's own switches stand in for a slow or absent chain: with ``evm_setAutomine`` off a
transaction waits in the pool until ``evm_mine``, which is how a bridge is made to lose
sight of a batch between sending it and seeing its receipt (its receipt wait is cut short
to a second); the bridge that gave up is then either dropped for a new one, as a restarted
process would be, or polled again, as `cmx serve` does after an error.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.types import RPCEndpoint

import chain_bridge.chain
from chain_bridge.anvil import AnvilNode, anvil_binary
from chain_bridge.chain import Chain, ChainError, rpc
from engine.commands import (
    BatchConfirmed,
    CreditDeposit,
    ExchangeCommand,
    ForceWithdrawal,
    RequestWithdrawal,
)
from engine.events import ClearingConfirmed, CommandRejected, ExchangeEvent, Trade
from engine.exchange import Exchange
from engine.ledger import SYSTEM_ACCOUNTS
from tests.chain_helpers import USDC, ChainDesk, user
from tests.exchange_helpers import BUY, GPU_FUT, GPU_SPOT, SELL, Desk, instrument, new_exchange

USERS = 6
SHORT_RECEIPT_S = 1.0


def require_anvil() -> Path:
    """The Anvil binary; the test fails (it never skips) when it is not installed."""
    try:
        binary = anvil_binary()
    except ChainError as exc:
        pytest.fail(f"{exc}. Run `./dev env` (it runs `npm ci`) to install Anvil.")
    if not binary.is_file():
        pytest.fail(f"no Anvil binary at {binary}: run `./dev env` (it runs `npm ci`).")
    return binary


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilNode]:
    """One Anvil node for the module."""
    require_anvil()
    node = AnvilNode()
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def chain(anvil: AnvilNode) -> Iterator[Chain]:
    """A connection to the module's node; mining is automatic again afterwards."""
    connected = rpc(anvil.url, kind="anvil")
    try:
        yield connected
    finally:
        mine(connected)
        automine(connected, True)


@pytest.fixture
def stateful_anvil(tmp_path: Path) -> Iterator[AnvilNode]:
    """A node of the test's own that keeps its chain in a state file across restarts."""
    require_anvil()
    node = AnvilNode(state=tmp_path / "anvil" / "state.json", log=tmp_path / "anvil.log")
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def short_receipts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Transactions give up waiting for their receipt after a second."""
    monkeypatch.setattr(chain_bridge.chain, "RECEIPT_TIMEOUT_S", SHORT_RECEIPT_S)


# --- the node -------------------------------------------------------------------------------


def automine(chain: Chain, on: bool) -> None:
    """Mine each transaction as it arrives (Anvil's default), or leave it in the pool."""
    chain.w3.provider.make_request(RPCEndpoint("evm_setAutomine"), [on])


def mine(chain: Chain) -> None:
    """Mine one block with whatever the pool holds."""
    chain.w3.provider.make_request(RPCEndpoint("evm_mine"), [])


def pending_count(chain: Chain, sender: str) -> int:
    """Transactions of ``sender`` sent but not mined."""
    address = Web3.to_checksum_address(sender)
    eth = chain.w3.eth
    return eth.get_transaction_count(address, "pending") - eth.get_transaction_count(
        address, "latest")


def sent_count(chain: Chain, sender: str) -> int:
    """Transactions ``sender`` has had mined (its nonce)."""
    return chain.w3.eth.get_transaction_count(Web3.to_checksum_address(sender), "latest")


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def later(delay_s: float, action: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(delay_s, action)
    timer.start()
    return timer


# --- the exchange ---------------------------------------------------------------------------


def small_desk() -> Desk:
    """A desk listing GPU.H100 spot and its December future only (quick cuts)."""
    exchange: Exchange = new_exchange(instruments=(instrument(GPU_SPOT), instrument(GPU_FUT)))
    return Desk(exchange)


def who(n: int) -> str:
    """The engine's name for user ``n``."""
    return user(n).address.lower()


class Run:
    """A `ChainDesk` and everything its bridges told the engine, with what the engine said."""

    def __init__(self, chain: Chain) -> None:
        self.cd = ChainDesk(chain, desk=small_desk())
        self.commands: list[ExchangeCommand] = []
        self.events: list[ExchangeEvent] = []
        self.deposited: dict[str, int] = {}
        self._encoded: dict[tuple[str, ...], str] = {}

    @property
    def ex(self) -> Exchange:
        return self.cd.ex

    def deposit(self, n: int, amount: int) -> None:
        """User ``n`` deposits ``amount`` on chain."""
        self.cd.deposit(user(n), amount)
        self.deposited[who(n)] = self.deposited.get(who(n), 0) + amount

    def apply(self, command: ExchangeCommand) -> list[ExchangeEvent]:
        events = self.cd.desk.apply(command)
        self.events += events
        return events

    def poll(self) -> list[ExchangeCommand]:
        """One bridge round, its commands applied to the engine."""
        commands = self.cd.bridge.poll(self.cd.view())
        for command in commands:
            self.apply(command)
        self.commands += commands
        return commands

    def settle(self, rounds: int = 6) -> None:
        """Poll until the engine has no batch waiting (or ``rounds`` polls went by)."""
        for _ in range(rounds):
            self.poll()
            if not self.ex.clearing.unconfirmed or self.cd.bridge.halted:
                return

    def cut(self) -> int:
        """A clearing cut; how many batches it made."""
        before = self.ex.clearing.next_batch_id
        self.cd.cut()
        return self.ex.clearing.next_batch_id - before

    def last_batch_id(self) -> int:
        return int(self.cd.house.functions.lastBatchId().call())

    def holdings(self, accounts: list[str]) -> tuple[dict[str, int], int, int, int]:
        """In one JSON-RPC batch (web3 takes several milliseconds a call): the settled
        balances of ``accounts``, the vault's tokens, the tokens paid out to the users (a
        user's tokens are all withdrawals, as deposits mint exactly what they deposit) and
        the last batch id."""
        house, token = self.cd.house, self.cd.token
        calls = [(house.address, self._calldata(house, "balanceOf", a)) for a in accounts]
        calls.append((token.address, self._calldata(token, "balanceOf", house.address)))
        calls += [(token.address, self._calldata(token, "balanceOf", a)) for a in self.deposited]
        calls.append((house.address, self._calldata(house, "lastBatchId")))
        provider = self.cd.chain.w3.provider
        assert isinstance(provider, HTTPProvider)
        replies = provider.make_batch_request(
            [(RPCEndpoint("eth_call"), [{"to": to, "data": data}, "latest"]) for to, data in calls])
        assert isinstance(replies, list), replies
        values = [int(reply["result"], 16) for reply in replies]
        balances, vault = values[:len(accounts)], values[len(accounts)]
        paid = sum(values[len(accounts) + 1:-1])
        return dict(zip(accounts, balances, strict=True)), vault, paid, values[-1]

    def _calldata(self, contract: Contract, function: str, *args: str) -> str:
        key = (contract.address, function, *args)
        found = self._encoded.get(key)
        if found is None:
            checksummed = [Web3.to_checksum_address(a) for a in args]
            found = self._encoded[key] = contract.encode_abi(function, checksummed)
        return found

    def last_deposit_id(self) -> int:
        return int(self.cd.house.functions.lastDepositId().call())

    def spot_trade(self, buyer: int, seller: int, price: int = 2500, qty: int = 1) -> bool:
        """``seller`` rests, ``buyer`` takes; whether they traded."""
        desk = self.cd.desk
        desk.capacity(who(seller), "GPU.H100", 10_000)
        desk.place(who(seller), GPU_SPOT, SELL, qty, price)
        traded = any(isinstance(e, Trade) for e in desk.place(who(buyer), GPU_SPOT, BUY, qty,
                                                              price))
        desk.cancel_all(who(seller))
        return traded

    def futures_trade(self, buyer: int, seller: int, price: int, qty: int = 1) -> bool:
        """``seller`` rests, ``buyer`` takes (either may be refused for margin)."""
        desk = self.cd.desk
        desk.place(who(seller), GPU_FUT, SELL, qty, price)
        traded = any(isinstance(e, Trade) for e in desk.place(who(buyer), GPU_FUT, BUY, qty,
                                                              price))
        desk.cancel_all(who(seller))
        return traded

    # --- what must hold -------------------------------------------------------------------

    def accounts(self) -> set[str]:
        return {*self.deposited, *SYSTEM_ACCOUNTS, *self.ex.ledger.accounts}

    def paid_out(self) -> int:
        """Tokens the ClearingHouse paid out (its ``Withdrawn`` logs)."""
        logs = self.cd.house.events.Withdrawn().get_logs(from_block=self.cd.deployment.block)
        return sum(int(entry["args"]["amount"]) for entry in logs)

    def check_settled(self) -> None:
        """Every batch the engine cut settled once, in order, was confirmed once, and the
        chain holds exactly the engine's balances."""
        cd, clearing = self.cd, self.ex.clearing
        bridge = cd.bridge
        assert bridge.halted is None, bridge.halted
        assert bridge.reconciled
        assert not clearing.unconfirmed, [b.batch_id for b in clearing.unconfirmed]
        cut = clearing.next_batch_id - 1
        assert self.last_batch_id() == cut
        settled = [int(entry["args"]["batchId"]) for entry in
                   cd.house.events.BatchSettled().get_logs(from_block=cd.deployment.block)]
        assert settled == list(range(1, cut + 1)), "each batch settled once, none skipped"
        confirmed = [c.batch_id for c in self.commands if isinstance(c, BatchConfirmed)]
        assert confirmed == list(range(1, cut + 1)), "each batch confirmed once, in order"
        assert [e.batch_id for e in self.events if isinstance(e, ClearingConfirmed)] == \
            confirmed
        refused = [e for e in self.events if isinstance(e, CommandRejected)
                   and e.command in ("batch_confirmed", "credit_deposit")]
        assert refused == []
        credited = [c.deposit_id for c in self.commands if isinstance(c, CreditDeposit)]
        assert credited == list(range(1, self.last_deposit_id() + 1)), \
            "each deposit credited once"
        ledger = self.ex.ledger
        on_chain, vault, paid, _ = self.holdings(sorted(self.accounts()))
        for account, held in on_chain.items():
            found = ledger.accounts.get(account)
            assert held == (found.total() if found else 0), account
        assert paid == self.paid_out()
        assert sum(on_chain.values()) == vault == sum(self.deposited.values()) - paid
        assert ledger.deposited - ledger.withdrawn == sum(self.deposited.values()) - paid


def traded_run(chain: Chain, cuts: int = 2) -> Run:
    """Four funded users, and ``cuts`` cuts each with a spot trade, none settled yet."""
    run = Run(chain)
    for n in range(1, 5):
        run.deposit(n, 50_000 * USDC)
    run.poll()
    for i in range(cuts):
        assert run.spot_trade(1 + i % 2, 3 + i % 2)
        assert run.cut() == 1
    return run


# --- a. deposits across a bridge restart ----------------------------------------------------


def test_deposits_are_credited_exactly_once_across_a_bridge_restart(chain: Chain) -> None:
    run = Run(chain)
    run.deposit(1, 1_000 * USDC)
    run.deposit(2, 2_000 * USDC)
    run.deposit(1, 300 * USDC)
    assert [c.deposit_id for c in run.poll() if isinstance(c, CreditDeposit)] == [1, 2, 3]
    assert run.poll() == []
    run.cd.restart_bridge()
    run.deposit(3, 4_000 * USDC)
    run.deposit(2, 50 * USDC)
    for _ in range(4):
        run.poll()
    # a bridge whose credits never reached the engine (the process died first): its
    # successor sends them again, and only once
    run.deposit(1, 7 * USDC)
    lost = run.cd.bridge.poll(run.cd.view())
    assert [c.deposit_id for c in lost if isinstance(c, CreditDeposit)] == [6]
    run.cd.restart_bridge()
    for _ in range(3):
        run.poll()
    credited = [c.deposit_id for c in run.commands if isinstance(c, CreditDeposit)]
    assert credited == [1, 2, 3, 4, 5, 6]
    assert run.ex.deposits_seen == {1, 2, 3, 4, 5, 6}
    for account, amount in run.deposited.items():
        assert run.cd.desk.balances(account).total() == amount == run.cd.settled(account)
    assert run.ex.ledger.deposited == sum(run.deposited.values()) == run.cd.vault_tokens()
    run.cut()
    run.settle()
    run.check_settled()


# --- b. a batch sent, its receipt never seen ------------------------------------------------


@pytest.mark.usefixtures("short_receipts")
def test_a_bridge_killed_before_its_receipt_is_replaced_and_settles_once(chain: Chain) -> None:
    run = traded_run(chain)
    operator = run.cd.operator.address
    nonce = sent_count(chain, operator)
    automine(chain, False)
    with pytest.raises(ChainError, match="no receipt"):
        run.poll()  # batch 1 sent, its receipt never came: this bridge is done
    assert pending_count(chain, operator) == 1
    mine(chain)
    automine(chain, True)
    assert run.last_batch_id() == 1
    run.cd.restart_bridge()
    run.settle()
    run.check_settled()
    assert run.last_batch_id() == 2
    assert sent_count(chain, operator) == nonce + 2, "one transaction per batch"
    assert run.cd.bridge.batches_sent == 1  # batch 1 was found on chain, not sent again
    assert run.cd.bridge.accounts_checked > 0


@pytest.mark.usefixtures("short_receipts")
def test_a_new_bridge_waits_for_the_old_ones_pending_batch(chain: Chain) -> None:
    run = traded_run(chain)
    operator = run.cd.operator.address
    nonce = sent_count(chain, operator)
    automine(chain, False)
    with pytest.raises(ChainError, match="no receipt"):
        run.poll()
    assert pending_count(chain, operator) == 1

    def mine_again() -> None:
        mine(chain)
        automine(chain, True)

    timer = later(1.0, mine_again)
    started = time.monotonic()
    run.cd.restart_bridge()  # waits until the old transaction is mined
    waited = time.monotonic() - started
    timer.join()
    assert waited >= 0.8
    assert pending_count(chain, operator) == 0
    run.settle()
    run.check_settled()
    assert run.last_batch_id() == 2
    assert sent_count(chain, operator) == nonce + 2
    assert run.cd.bridge.batches_sent == 1


@pytest.mark.usefixtures("short_receipts")
def test_a_bridge_that_gave_up_on_a_receipt_waits_for_it_and_sends_nothing_twice(
        chain: Chain) -> None:
    run = traded_run(chain)
    operator = run.cd.operator.address
    nonce = sent_count(chain, operator)
    automine(chain, False)
    with pytest.raises(ChainError, match="no receipt"):
        run.poll()
    # the same bridge again, as `cmx serve` keeps it after an error: while its transaction
    # waits in the pool it sends nothing, neither batch 1 again nor batch 2 after it
    for _ in range(3):
        assert run.poll() == []
        assert pending_count(chain, operator) == 1
    mine(chain)
    automine(chain, True)
    run.settle()
    run.check_settled()
    assert run.last_batch_id() == 2
    assert sent_count(chain, operator) == nonce + 2, "one transaction per batch"
    assert run.cd.bridge.batches_sent == 1  # batch 2; batch 1 was found on chain


# --- c. many random batches -----------------------------------------------------------------


def test_a_hundred_random_batches_reconcile_after_each(chain: Chain) -> None:
    rng = random.Random(20261201)
    run = Run(chain)
    users = range(1, USERS + 1)
    for n in users:
        run.deposit(n, rng.randrange(20_000, 80_000) * USDC)
    run.poll()
    withdrawal_id = forced = rounds = trades = 0
    bridge = run.cd.bridge
    checked = bridge.accounts_checked
    while run.ex.clearing.next_batch_id <= 100:
        rounds += 1
        assert rounds < 200, "cuts stopped making batches"
        for _ in range(rng.randint(1, 3)):
            a, b = rng.sample(users, 2)
            action = rng.random()
            if action < 0.12:
                run.deposit(a, rng.randrange(1, 5_000) * USDC)
            elif action < 0.50:
                trades += run.spot_trade(a, b, price=rng.randrange(2_000, 3_000, 10),
                                         qty=rng.randint(1, 3))
            elif action < 0.80:
                trades += run.futures_trade(a, b, price=rng.randrange(400, 600),
                                            qty=rng.randint(1, 3))
            elif action < 0.96:
                withdrawal_id += 1
                free = max(0, run.ex.free_collateral(who(a)))
                run.apply(RequestWithdrawal(withdrawal_id, who(a),
                                            rng.randint(1, max(1, free // 4))))
            else:
                settled = run.cd.settled(who(a))
                run.cd.request_forced_withdrawal(user(a), rng.randint(1, settled // 10 + 1))
                forced += 1
        if rng.random() < 0.8:
            run.poll()  # credits and forced requests reach the engine before the cut
        made = run.cut()
        deltas = sum(len(b.deltas) for b in run.ex.clearing.unconfirmed)
        run.settle()
        assert bridge.reconciled and bridge.halted is None, bridge.halted
        assert not run.ex.clearing.unconfirmed
        if made:
            assert bridge.accounts_checked == checked + deltas
            checked = bridge.accounts_checked
        held, vault, paid, last = run.holdings(sorted(run.accounts()))
        assert last == bridge.last_reconciled_batch == run.ex.clearing.next_batch_id - 1
        assert sum(held.values()) == vault == sum(run.deposited.values()) - paid
    run.poll()
    run.cut()
    run.settle()
    run.check_settled()
    assert bridge.accounts_checked > 100
    assert trades > 50
    assert sum(isinstance(c, ForceWithdrawal) for c in run.commands) == forced > 0
    assert run.paid_out() > 0


# --- d. the node goes away ------------------------------------------------------------------


def restart(node: AnvilNode) -> AnvilNode:
    """Stop the node and start another on its port and state file."""
    node.stop()
    again = AnvilNode(port=node.port, state=node.state, log=node.log)
    again.start()
    return again


def test_an_rpc_outage_holds_clearing_back_and_loses_nothing(stateful_anvil: AnvilNode) -> None:
    node = stateful_anvil
    chain = rpc(node.url, kind="anvil")
    run = traded_run(chain, cuts=1)
    run.settle()
    node.stop()
    # while the node is down the engine keeps cutting; each bridge round fails at once with
    # the connection error of requests under web3's HTTPProvider (an OSError; web3 retries
    # only the builtin ConnectionError, which it is not); `cmx serve` logs it and polls again
    for i in range(3):
        assert run.spot_trade(1 + i % 2, 3)
        assert run.cut() == 1
        with pytest.raises(requests.exceptions.ConnectionError, match="Connection refused"):
            run.poll()
    assert len(run.ex.clearing.unconfirmed) == 3
    node = AnvilNode(port=node.port, state=node.state, log=node.log)
    node.start()
    try:
        assert run.last_batch_id() == 1  # the chain came back as it was
        run.deposit(4, 10 * USDC)
        run.settle()
        run.check_settled()
        assert run.last_batch_id() == 4
        assert run.cd.bridge.batches_sent == 4
    finally:
        node.stop()


# A round the node interrupts half-way (here while it waits for batch 2's receipt) still
# hands over what it had found: the credit of deposit 5 and the confirmation of batch 1; the
# same bridge then carries on once the node is back.
def test_an_outage_in_the_middle_of_a_round_loses_nothing(stateful_anvil: AnvilNode) -> None:
    node = stateful_anvil
    chain = rpc(node.url, kind="anvil")
    run = traded_run(chain, cuts=2)
    run.deposit(2, 123 * USDC)  # deposit 5: credited by the next round, before clearing
    operator = run.cd.operator.address
    applied = len(run.commands)
    automine(chain, False)
    failure: list[BaseException] = []

    def round_() -> None:
        try:
            run.poll()
        except BaseException as exc:
            failure.append(exc)

    poller = threading.Thread(target=round_)
    poller.start()
    wait_for(lambda: pending_count(chain, operator) == 1, "batch 1 in the pool")
    mine(chain)  # the round sees batch 1 settle, confirms it and sends batch 2
    wait_for(lambda: run.cd.bridge.batches_sent == 1 and pending_count(chain, operator) == 1,
             "batch 2 in the pool")
    node.stop()  # while the round waits for batch 2's receipt
    poller.join(timeout=30)
    assert not poller.is_alive()
    assert failure == []
    assert [type(c).__name__ for c in run.commands[applied:]] == \
        ["CreditDeposit", "BatchConfirmed"]
    assert run.cd.bridge.last_error is not None  # the interruption is reported
    assert [b.batch_id for b in run.ex.clearing.unconfirmed] == [2]
    node = AnvilNode(port=node.port, state=node.state, log=node.log)
    node.start()
    try:
        for _ in range(4):  # the same bridge, as `cmx serve` keeps it through outages
            run.poll()
        lost = []
        if run.ex.deposits_seen != set(range(1, run.last_deposit_id() + 1)):
            lost.append("deposit 5 never credited")
        if run.ex.clearing.unconfirmed:
            lost.append(f"batches {[b.batch_id for b in run.ex.clearing.unconfirmed]} never "
                        "confirmed")
        refused = [e.ref for e in run.events if isinstance(e, CommandRejected)]
        if refused:
            lost.append(f"confirmations of batches {refused} refused as out of order")
        assert lost == [], lost
        run.check_settled()
    finally:
        node.stop()


# A batch found settled after the node restarted is reconciled at that batch's block if the
# node still has its state, else now (Anvil keeps no historical state across a --state
# restart, and a pruned node drops it after 128 blocks) when no batch came since.
@pytest.mark.usefixtures("short_receipts")
def test_a_batch_settled_before_a_node_restart_is_confirmed_after_it(
        stateful_anvil: AnvilNode) -> None:
    node = stateful_anvil
    chain = rpc(node.url, kind="anvil")
    run = traded_run(chain, cuts=1)
    automine(chain, False)
    with pytest.raises(ChainError, match="no receipt"):
        run.poll()
    mine(chain)  # batch 1 settles; no bridge saw it
    automine(chain, True)
    run.deposit(3, 5 * USDC)  # the chain moves on
    node = restart(node)
    try:
        run.cd.restart_bridge()
        errors: list[Exception] = []
        for _ in range(4):
            try:
                run.poll()
            except Exception as exc:  # `cmx serve` logs it and polls again
                errors.append(exc)
        assert not run.ex.clearing.unconfirmed, errors
        run.check_settled()
    finally:
        node.stop()
