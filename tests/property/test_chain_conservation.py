"""Money is conserved between the engine and the chain, whatever the engine does.

Streams of engine activity (`tests.property.exchange_strategies`: orders of every kind,
cancels, amends, withdrawals, fixes, cuts, timers and jumps in time) run on an engine whose
four traders are users with keys on the in-process EVM. Their deposits are made on chain and
credited through the `ChainBridge`; forced withdrawals are requested on chain at drawn
points; the bridge is sometimes restarted; and at every clearing cut the bridge settles the
cut's batches. After each cut, once the bridge has settled it:

* the settled balances of every account that ever appeared sum to what was deposited on
  chain minus the tokens paid out, which is also what the vault holds;
* each account's engine total is its settled balance minus its deposits the engine has not
  credited yet;
* nothing is left unconfirmed and the bridge has not halted.

One chain serves the whole test: the contracts are deployed and the users funded once, and
every example starts from a snapshot of that chain with a fresh exchange and bridge.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
from eth_account.signers.local import LocalAccount
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from web3 import Web3

from chain_bridge.chain import ETHER, Chain, embedded
from chain_bridge.deployment import Deployment, deploy
from engine.commands import (
    AmendOrder,
    CancelOrder,
    ClearingCut,
    CreditDeposit,
    ExchangeCommand,
    PlaceOrder,
    Sequenced,
)
from engine.exchange import Exchange
from engine.ledger import FEE_ACCOUNT, INSURANCE_FUND, is_address
from tests.chain_helpers import USDC, ChainDesk, evm, send, user
from tests.exchange_helpers import (
    ALICE,
    BOB,
    BUY,
    CAROL,
    DAVE,
    GPU_FUT,
    NS,
    SELL,
    Desk,
    new_exchange,
)
from tests.property.exchange_strategies import (
    ACCOUNTS,
    EARLY_DECEMBER,
    INSTRUMENTS,
    OrderRef,
    Squeeze,
    Step,
    Stream,
    stamp,
    streams,
)

WALLET = 10**9 * USDC  # test USDC each user holds at the start
TRADERS = tuple(user(n) for n in range(1, len(ACCOUNTS) + 1))
ADDRESS = {name: who.address.lower() for name, who in zip(ACCOUNTS, TRADERS, strict=True)}
"""The strategies' trading accounts, as the users with keys that stand in for them."""
KEYS = {who.address.lower(): who for who in TRADERS}


# --- the chain -------------------------------------------------------------------------------




INSURANCE = 1_000_000 * USDC


class World(NamedTuple):
    """The test's chain with the contracts deployed and the users funded."""

    chain: Chain
    deployment: Deployment
    operator: LocalAccount


def world() -> World:
    chain = embedded()
    operator = user(0xFFFF)
    chain.fund(operator.address, 1000 * ETHER)
    deployment = deploy(chain, operator)
    token = chain.contract("CollateralToken", deployment.token)
    house = Web3.to_checksum_address(deployment.clearing_house)
    for who in TRADERS:
        chain.fund(who.address, 100 * ETHER)
        send(chain, operator, token.functions.mint(who.address, WALLET))
        send(chain, who, token.functions.approve(house, 2**256 - 1))
    # the operator funds the insurance fund (deposit id 1), as `cmx serve` does
    send(chain, operator, token.functions.mint(operator.address, INSURANCE))
    send(chain, operator, token.functions.approve(house, INSURANCE))
    send(chain, operator, chain.contract("ClearingHouse", deployment.clearing_house)
         .functions.depositFor(Web3.to_checksum_address(INSURANCE_FUND), INSURANCE))
    return World(chain, deployment, operator)


# --- what an example does ----------------------------------------------------------------------


class Scenario(NamedTuple):
    """A stream, and what happens on the chain besides: ``forced`` requests as (before
    step, trader, percent of its settled balance), steps at which the bridge restarts, and
    the bridge's confirmation depth."""

    stream: Stream
    forced: list[tuple[int, int, int]]
    restarts: list[int]
    confirmations: int


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    stream = draw(streams(min_chunks=3, max_chunks=8))
    where = st.integers(0, len(stream.steps))
    forced = draw(st.lists(st.tuples(where, st.integers(0, len(TRADERS) - 1),
                                     st.sampled_from([100, 50, 10, 1])), max_size=3))
    restarts = draw(st.lists(where, max_size=2))
    return Scenario(stream, forced, restarts, draw(st.sampled_from([0, 1])))


def _mapped(action: Any) -> Any:
    """``action`` with the strategies' accounts replaced by the users'."""
    if isinstance(action, Squeeze):
        return Squeeze(_mapped(action.order))
    account = getattr(action, "account", None)
    if isinstance(account, str) and account in ADDRESS:
        return msgspec.structs.replace(action, account=ADDRESS[account])
    return action


def _order_command(ref: OrderRef, exchange: Exchange) -> ExchangeCommand:
    """Cancel or amend the live order of rank ``ref.rank``, as its owner or the next user."""
    live = sorted(exchange.orders)
    if not live:
        return CancelOrder(ADDRESS[ACCOUNTS[0]], INSTRUMENTS[0].symbol, ref.rank + 1)
    order = exchange.orders[live[ref.rank % len(live)]]
    traders = list(ADDRESS.values())
    account = order.account
    if not ref.as_owner and account in traders:
        account = traders[(traders.index(account) + 1) % len(traders)]
    if ref.amend:
        return AmendOrder(account, order.symbol, order.order_id, order.limit + ref.price_move,
                          order.remaining + ref.qty_move)
    return CancelOrder(account, order.symbol, order.order_id)


class Run:
    """One example: a fresh exchange and bridge on the world's chain."""

    def __init__(self, w: World, scenario: Scenario) -> None:
        self.scenario = scenario
        self.desk = Desk(new_exchange(instruments=INSTRUMENTS), ts=scenario.stream.start)
        self.cd = ChainDesk(w.chain, desk=self.desk, deployment=w.deployment,
                            operator=w.operator, confirmations=scenario.confirmations)
        # (account, amount) by deposit id - 1; the world's first is the insurance fund's
        self.deposits: list[tuple[str, int]] = [(INSURANCE_FUND, INSURANCE)]
        self.seen: set[str] = {FEE_ACCOUNT, INSURANCE_FUND, *KEYS}
        self.unpolled = True  # deposits made since the bridge last looked

    @property
    def ex(self) -> Exchange:
        return self.desk.ex

    def play(self) -> None:
        forced = sorted(self.scenario.forced)
        ts = self.scenario.stream.start
        for index, step in enumerate(self.scenario.stream.steps):
            while forced and forced[0][0] == index:
                _, trader, percent = forced.pop(0)
                self.force(TRADERS[trader], percent)
            ts += step.dt
            self.act(step, ts, restart=index in self.scenario.restarts)
        for _, trader, percent in forced:
            self.force(TRADERS[trader], percent)
        self.desk.apply(ClearingCut(), ts)
        self.settle()
        self.check()
        self.check_wallets()

    def act(self, step: Step, ts: int, *, restart: bool) -> None:
        """Play one step; with ``restart``, the bridge restarts before it (between the cut
        and its settlement, for a cut)."""
        action = _mapped(step.action)
        if restart and not isinstance(action, ClearingCut):
            self.cd.restart_bridge()
        if isinstance(action, CreditDeposit):
            who = KEYS.get(action.account)
            if who is not None and action.amount > 0:
                send(self.cd.chain, who, self.cd.house.functions.deposit(action.amount))
                self.deposits.append((action.account, action.amount))
                self.unpolled = True
            return
        if self.unpolled:  # the bridge sees the deposits before the engine acts again
            self.cd.poll()
            self.unpolled = False
        if isinstance(action, ClearingCut):
            self.desk.apply(action, ts)
            if restart:
                self.cd.restart_bridge()
            self.settle()
            return
        if isinstance(action, OrderRef):
            command: ExchangeCommand = _order_command(action, self.ex)
        else:
            stamped: Sequenced = next(stamp(Stream(self.desk.ts, [Step(ts - self.desk.ts,
                                                                         action)]), self.ex))
            command = stamped.command
        self.desk.apply(command, ts)

    def force(self, who: LocalAccount, percent: int) -> None:
        """``who`` asks on chain for ``percent`` of its settled balance; the bridge passes
        the request on."""
        balance = self.cd.settled(who.address)
        if balance:
            amount = max(1, balance * percent // 100)
            send(self.cd.chain, who, self.cd.house.functions.requestForcedWithdrawal(amount))
            self.cd.poll()

    def settle(self) -> None:
        """The bridge settles what the cut emitted; then the books must agree."""
        for batch in self.ex.clearing.unconfirmed:
            negative = [(d.account, d.balance) for d in batch.deltas if d.balance < 0]
            assert not negative, f"batch {batch.batch_id} leaves balances below zero: {negative}"
        settled = self.cd.bridge.last_reconciled_batch
        self.cd.poll()
        self.unpolled = False
        bridge = self.cd.bridge
        assert bridge.halted is None, bridge.halted
        assert self.ex.clearing.unconfirmed == []
        if bridge.last_reconciled_batch != settled:
            self.check()

    def paid_out(self) -> int:
        """Tokens the vault paid out, by its ``Withdrawn`` logs."""
        logs = self.cd.house.events.Withdrawn().get_logs(from_block=self.cd.deployment.block)
        return sum(int(entry["args"]["amount"]) for entry in logs)

    def check(self) -> None:
        cd, ledger = self.cd, self.ex.ledger
        self.seen |= {a for a in ledger.accounts if is_address(a)}
        settled = cd.bridge.settled_balances(self.seen)
        deposited = sum(amount for _, amount in self.deposits)
        paid_out = self.paid_out()
        assert sum(settled.values()) == deposited - paid_out == cd.vault_tokens()
        pending = dict.fromkeys(self.seen, 0)
        for deposit_id, (account, amount) in enumerate(self.deposits, start=1):
            if deposit_id not in self.ex.deposits_seen:
                pending[account] += amount
        # withdrawals the engine has paid out of the ledger since the last cut: the next batch
        # pays them on chain (a forced request can arrive after the cut it missed)
        unpaid = dict.fromkeys(self.seen, 0)
        for withdrawal in self.ex.clearing.withdrawals:
            unpaid[withdrawal.account] += withdrawal.amount
        for account in sorted(self.seen):
            total = ledger.balances(account).total() if account in ledger.accounts else 0
            assert total == settled[account] - pending[account] - unpaid[account], account
        assert ledger.deposited == deposited - sum(pending.values())
        assert ledger.withdrawn == paid_out + sum(unpaid.values())

    def check_wallets(self) -> None:
        """The users hold what they did not deposit, and what was paid out to them."""
        received = 0
        for who in TRADERS:
            held = int(self.cd.token.functions.balanceOf(who.address).call())
            deposited = sum(amount for account, amount in self.deposits
                            if account == who.address.lower())
            received += held - (WALLET - deposited)
        assert received == self.paid_out()


# Alice buys a December future at the top of the band with little more than its margin; the
# mark then falls to the bottom and her loss is far over what she has. The insurance fund,
# funded on chain by the operator, covers her, and the batch moves its money on chain too.
INSURANCE_OVERDRAWN = Scenario(Stream(EARLY_DECEMBER, [
    Step(0, CreditDeposit(100, ALICE, 450 * USDC)),
    Step(0, CreditDeposit(101, BOB, 10_000 * USDC)),
    Step(0, CreditDeposit(102, CAROL, 10_000 * USDC)),
    Step(0, CreditDeposit(103, DAVE, 10_000 * USDC)),
    Step(0, PlaceOrder(BOB, GPU_FUT, SELL, 1, 600)),
    Step(0, PlaceOrder(ALICE, GPU_FUT, BUY, 1, 600)),
    Step(0, PlaceOrder(DAVE, GPU_FUT, BUY, 1, 400)),
    Step(0, PlaceOrder(CAROL, GPU_FUT, SELL, 1, 400)),
    Step(NS, ClearingCut()),
]), [], [], 0)


def test_chain_balances_equal_deposits_less_payouts_and_engine_totals() -> None:
    w = world()
    tester = evm(w.chain)
    snapshot = tester.take_snapshot()

    @settings(max_examples=15, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(scenarios())
    @example(INSURANCE_OVERDRAWN)
    def run(scenario: Scenario) -> None:
        tester.revert_to_snapshot(snapshot)
        Run(w, scenario).play()

    on_a_shallow_stack(run)


def on_a_shallow_stack(fn: Callable[[], None]) -> None:
    """Call ``fn`` in a thread of its own and raise what it raised.

    Only for speed: CPython 3.11 frees a frame-stack chunk as soon as the stack returns below
    it, and under pytest's deep stack web3's nested calls happen to cross a chunk boundary
    back and forth, an mmap and munmap each time (a third of the run in the kernel). A new
    thread's stack starts shallow.
    """
    failures: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=target, name="chain-conservation")
    thread.start()
    thread.join()
    if failures:
        raise failures[0]
