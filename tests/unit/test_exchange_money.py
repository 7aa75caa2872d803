"""Money in and out: deposits credited once, withdrawals only from free collateral."""

from __future__ import annotations

import pytest

from engine.commands import CreditDeposit, RequestWithdrawal
from engine.events import (
    BalanceChanged,
    CommandRejected,
    DepositCredited,
    Reason,
    WithdrawalRequested,
)
from engine.ledger import FEE_ACCOUNT, INSURANCE_FUND, Balances
from tests.exchange_helpers import ALICE, BOB, BUY, GPU_SPOT, SELL, Desk, instrument

SPOT_TV = instrument(GPU_SPOT).micro_usdc_per_tick_lot


def test_a_deposit_is_credited_to_available() -> None:
    desk = Desk()
    assert desk.apply(CreditDeposit(7, ALICE, 5_000_000)) == [
        DepositCredited(7, ALICE, 5_000_000),
        BalanceChanged(ALICE, 5_000_000, 0, 0, 0),
    ]
    desk.apply(CreditDeposit(8, ALICE, 1))
    assert desk.balances(ALICE) == Balances(available=5_000_001)
    assert (desk.ex.ledger.deposited, desk.ex.ledger.withdrawn) == (5_000_001, 0)


def test_a_deposit_id_is_credited_once() -> None:
    desk = Desk()
    desk.apply(CreditDeposit(7, ALICE, 5_000_000))
    duplicate = [CommandRejected("credit_deposit", ALICE, 7, Reason.DUPLICATE_DEPOSIT)]
    assert desk.apply(CreditDeposit(7, ALICE, 5_000_000)) == duplicate
    assert desk.apply(CreditDeposit(7, BOB, 9)) == \
        [CommandRejected("credit_deposit", BOB, 7, Reason.DUPLICATE_DEPOSIT)]
    assert desk.balances(ALICE) == Balances(available=5_000_000)
    assert desk.balances(BOB) == Balances()
    assert desk.ex.ledger.deposited == 5_000_000


@pytest.mark.parametrize(("who", "amount", "reason"), [
    (ALICE, 0, Reason.INVALID_AMOUNT),
    (ALICE, -5, Reason.INVALID_AMOUNT),
    ("0x" + "A" * 40, 5, Reason.INVALID_ACCOUNT),
    ("0x1234", 5, Reason.INVALID_ACCOUNT),
    ("", 5, Reason.INVALID_ACCOUNT),
    (FEE_ACCOUNT, 5, Reason.INVALID_ACCOUNT),
])
def test_invalid_deposits_are_refused(who: str, amount: int, reason: Reason) -> None:
    desk = Desk()
    assert desk.apply(CreditDeposit(3, who, amount)) == \
        [CommandRejected("credit_deposit", who, 3, reason)]
    assert desk.ex.ledger.total() == desk.ex.ledger.deposited == 0


def test_deposits_to_the_insurance_fund_fund_it() -> None:
    desk = Desk()
    # the fund is a system account: credited, but no client balance event
    assert desk.apply(CreditDeposit(1, INSURANCE_FUND, 2_000_000)) == \
        [DepositCredited(1, INSURANCE_FUND, 2_000_000)]
    assert desk.balances(INSURANCE_FUND) == Balances(available=2_000_000)
    assert desk.ex.ledger.deposited == 2_000_000


def test_a_withdrawal_takes_from_available() -> None:
    desk = Desk()
    desk.deposit(ALICE, 5_000_000)
    assert desk.apply(RequestWithdrawal(4, ALICE, 1_500_000)) == [
        WithdrawalRequested(4, ALICE, 1_500_000),
        BalanceChanged(ALICE, 3_500_000, 0, 0, 0),
    ]
    assert (desk.ex.ledger.deposited, desk.ex.ledger.withdrawn) == (5_000_000, 1_500_000)
    assert desk.apply(RequestWithdrawal(5, ALICE, 3_500_000)) == [
        WithdrawalRequested(5, ALICE, 3_500_000),
        BalanceChanged(ALICE, 0, 0, 0, 0),
    ]


def test_withdrawals_come_only_from_free_collateral() -> None:
    desk = Desk()
    desk.deposit(ALICE, 5_000_000)
    desk.deposit(BOB, 5_000_000)
    desk.capacity(BOB, "GPU.H100", 1)
    desk.rest(ALICE, GPU_SPOT, BUY, 1, 2400)  # holds 2 400 000 + 1 200
    desk.rest(BOB, GPU_SPOT, SELL, 1, 2600)  # holds a 650 000 bond
    alice_free = 5_000_000 - (2400 * SPOT_TV + 2400 * SPOT_TV * 5 // 10_000)
    bob_free = 5_000_000 - 2600 * SPOT_TV // 4
    refused = desk.apply(RequestWithdrawal(1, ALICE, alice_free + 1))
    assert refused == \
        [CommandRejected("request_withdrawal", ALICE, 1, Reason.INSUFFICIENT_FUNDS)]
    assert desk.apply(RequestWithdrawal(2, BOB, bob_free + 1)) == \
        [CommandRejected("request_withdrawal", BOB, 2, Reason.INSUFFICIENT_FUNDS)]
    desk.apply(RequestWithdrawal(3, ALICE, alice_free))
    desk.apply(RequestWithdrawal(4, BOB, bob_free))
    assert desk.balances(ALICE) == Balances(available=0, reserved=5_000_000 - alice_free)
    assert desk.balances(BOB) == Balances(available=0, reserved=2600 * SPOT_TV // 4)


def test_escrow_is_not_free_collateral() -> None:
    desk = Desk()
    desk.deposit(ALICE, 3_000_000)
    desk.deposit(BOB, 1_000_000)
    desk.capacity(BOB, "GPU.H100", 1)
    desk.rest(BOB, GPU_SPOT, SELL, 1, 2500)
    desk.place(ALICE, GPU_SPOT, BUY, 1, 2500)
    left = 3_000_000 - 2500 * SPOT_TV - 2500 * SPOT_TV * 5 // 10_000
    assert desk.balances(ALICE) == Balances(available=left, escrow=2500 * SPOT_TV)
    assert desk.apply(RequestWithdrawal(1, ALICE, left + 1))[0] == \
        CommandRejected("request_withdrawal", ALICE, 1, Reason.INSUFFICIENT_FUNDS)
    assert desk.apply(RequestWithdrawal(2, BOB, 1_000_000 - 2500 * SPOT_TV // 4 + 1))[0] == \
        CommandRejected("request_withdrawal", BOB, 2, Reason.INSUFFICIENT_FUNDS)


def test_a_withdrawal_id_is_used_once() -> None:
    desk = Desk()
    desk.deposit(ALICE, 5_000_000)
    desk.apply(RequestWithdrawal(9, ALICE, 1_000_000))
    assert desk.apply(RequestWithdrawal(9, ALICE, 1_000_000)) == \
        [CommandRejected("request_withdrawal", ALICE, 9, Reason.DUPLICATE_WITHDRAWAL)]
    assert desk.balances(ALICE) == Balances(available=4_000_000)
    assert desk.ex.ledger.withdrawn == 1_000_000


@pytest.mark.parametrize(("who", "amount", "reason"), [
    (ALICE, 0, Reason.INVALID_AMOUNT),
    (ALICE, -1, Reason.INVALID_AMOUNT),
    (ALICE, 5_000_001, Reason.INSUFFICIENT_FUNDS),
    (BOB, 1, Reason.INSUFFICIENT_FUNDS),  # never deposited
    ("0x" + "A" * 40, 1, Reason.INVALID_ACCOUNT),
    (FEE_ACCOUNT, 1, Reason.INVALID_ACCOUNT),
    (INSURANCE_FUND, 1, Reason.INVALID_ACCOUNT),
])
def test_invalid_withdrawals_are_refused(who: str, amount: int, reason: Reason) -> None:
    desk = Desk()
    desk.deposit(ALICE, 5_000_000)
    desk.apply(CreditDeposit(100, INSURANCE_FUND, 5_000_000))
    assert desk.apply(RequestWithdrawal(6, who, amount)) == \
        [CommandRejected("request_withdrawal", who, 6, reason)]
    assert desk.ex.ledger.withdrawn == 0
    assert desk.balances(ALICE) == Balances(available=5_000_000)


def test_asking_for_free_collateral_changes_nothing() -> None:
    # A query, used by gateways and risk views: it must not add an account to the ledger, or
    # the state hash of a replica that asked would differ from a replay of the same journal.
    desk = Desk()
    desk.deposit(ALICE, 5_000_000)
    before = desk.ex.state_hash()
    assert desk.ex.free_collateral(ALICE) == 5_000_000
    assert desk.ex.free_collateral(BOB) == 0
    assert desk.ex.state_hash() == before
    assert BOB not in desk.ex.ledger.accounts
