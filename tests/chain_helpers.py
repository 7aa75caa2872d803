"""A chain, its contracts and a `ChainBridge` in front of a `Desk`, for the bridge tests.

`ChainDesk` plays the whole exchange in one thread: the `Desk` sequences commands into an
`Exchange`, users act on the chain with their own keys (mint, approve, deposit, forced
withdrawal), and `ChainDesk.poll` runs one bridge round and applies the commands it returns,
as `cmx serve` does. `ChainDesk.restart_bridge` starts a new bridge on the same chain and
engine, as a restarted process would.
"""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.types import TxReceipt, Wei

from chain_bridge.bridge import ChainBridge, EngineView
from chain_bridge.chain import ETHER, Chain
from chain_bridge.deployment import Deployment, deploy
from engine.commands import ClearingCut, ExchangeCommand
from engine.events import ExchangeEvent
from engine.exchange import Exchange
from tests.exchange_helpers import Desk

USDC = 10**6


def user(n: int) -> LocalAccount:
    """A user with a fixed key (``n`` > 0)."""
    account: LocalAccount = Account.from_key((0xC0FFEE00 + n).to_bytes(32, "big"))
    return account


USER_GAS = 300_000


def evm(chain: Chain) -> Any:
    """The eth-tester behind the embedded chain (untyped)."""
    provider = chain.w3.provider
    assert isinstance(provider, EthereumTesterProvider)
    return provider.ethereum_tester


def send(chain: Chain, who: LocalAccount, call: ContractFunction) -> TxReceipt:
    """A user's transaction, signed with its key, with a fixed gas limit (py-evm's gas
    estimate is slow); it must succeed."""
    eth = chain.w3.eth
    tx = call.build_transaction({
        "from": who.address, "chainId": chain.chain_id, "gas": USER_GAS,
        "nonce": eth.get_transaction_count(who.address, "pending"),
        "maxPriorityFeePerGas": Wei(10**9),
        "maxFeePerGas": Wei(2 * int(eth.get_block("latest").get("baseFeePerGas", 0)) + 10**9),
    })
    raw = bytes(who.sign_transaction(tx).raw_transaction)  # type: ignore[arg-type]
    receipt = eth.wait_for_transaction_receipt(chain.send_raw(raw), poll_latency=0.01)
    assert receipt["status"] == 1, f"{call.fn_name} by {who.address} failed"
    return receipt


class ChainDesk:
    """An engine (`Desk`), a chain with the contracts, an operator and a bridge."""

    def __init__(self, chain: Chain, *, desk: Desk | None = None,
                 deployment: Deployment | None = None, operator: LocalAccount | None = None,
                 forced_withdrawal_delay_s: int = 3600, confirmations: int = 0) -> None:
        self.chain = chain
        self.desk = desk or Desk()
        self.operator = operator or user(0xFFFF)
        chain.fund(self.operator.address, 1000 * ETHER)
        self.deployment = deployment or deploy(chain, self.operator,
                                               forced_withdrawal_delay_s=forced_withdrawal_delay_s)
        self.token: Contract = chain.contract("CollateralToken", self.deployment.token)
        self.house: Contract = chain.contract("ClearingHouse", self.deployment.clearing_house)
        self.confirmations = confirmations
        self.bridge = self.restart_bridge()

    def restart_bridge(self) -> ChainBridge:
        """A new bridge on the same chain and engine (a restarted process)."""
        self.bridge = ChainBridge(self.chain, self.deployment, self.operator,
                                  confirmations=self.confirmations)
        return self.bridge

    @property
    def ex(self) -> Exchange:
        """The engine."""
        return self.desk.ex

    def view(self) -> EngineView:
        """What the engine shows the bridge now."""
        clearing = self.ex.clearing
        return EngineView(max(self.ex.deposits_seen, default=0),
                          frozenset(clearing.forced_seen), tuple(clearing.unconfirmed))

    def poll(self) -> list[ExchangeCommand]:
        """One bridge round; its commands applied to the engine, in order."""
        commands = self.bridge.poll(self.view())
        for command in commands:
            self.desk.apply(command)
        return commands

    def cut(self) -> list[ExchangeEvent]:
        """A clearing cut in the engine."""
        return self.desk.apply(ClearingCut())

    def clear(self) -> list[ExchangeCommand]:
        """Cut, then poll until the engine has no batch waiting (at most 5 rounds)."""
        self.cut()
        commands: list[ExchangeCommand] = []
        for _ in range(5):
            commands += self.poll()
            if not self.ex.clearing.unconfirmed or self.bridge.halted:
                break
        return commands

    # --- users on the chain -----------------------------------------------------------------

    def fund_user(self, who: LocalAccount, usdc: int) -> None:
        """Ether for gas and ``usdc`` micro-USDC of the collateral token."""
        self.chain.fund(who.address, 10 * ETHER)
        self.chain.transact(self.operator, self.token.functions.mint(who.address, usdc), "mint")

    def deposit(self, who: LocalAccount, amount: int) -> None:
        """``who`` mints, approves and deposits ``amount`` on chain."""
        self.fund_user(who, amount)
        self.chain.transact(who, self.token.functions.approve(self.house.address, amount),
                            "approve")
        self.chain.transact(who, self.house.functions.deposit(amount), "deposit")

    def request_forced_withdrawal(self, who: LocalAccount, amount: int) -> None:
        """``who`` asks the ClearingHouse for a forced withdrawal."""
        self.chain.transact(who, self.house.functions.requestForcedWithdrawal(amount),
                            "forced withdrawal request")

    def settled(self, who: str) -> int:
        """The ClearingHouse's settled balance of ``who``."""
        return int(self.house.functions.balanceOf(Web3.to_checksum_address(who)).call())

    def vault_tokens(self) -> int:
        """Collateral tokens the ClearingHouse holds."""
        return int(self.token.functions.balanceOf(self.house.address).call())
