"""Integer micro-USDC balances of every account, and the conservation rule they obey.

Each account has four buckets: ``available`` (free collateral), ``reserved`` (held for open
orders), ``margin`` (futures initial margin on positions) and ``escrow`` (spot premiums and
bonds awaiting delivery). Money only moves between buckets, between accounts, or in and out
through deposits and withdrawals, so at every moment::

    sum of every bucket of every account == deposits - withdrawals

The fee account and the insurance fund are accounts too, with reserved addresses.
``available`` may go below zero only through clearing (variation margin and re-margining at a
new mark); such an account can only reduce its risk until it is topped up or liquidated.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

FEE_ACCOUNT = "0x00000000000000000000000000000000000000fe"
INSURANCE_FUND = "0x00000000000000000000000000000000000000f1"
SYSTEM_ACCOUNTS = frozenset({FEE_ACCOUNT, INSURANCE_FUND})

Bucket = Literal["available", "reserved", "margin", "escrow"]

_ADDRESS = re.compile(r"0x[0-9a-f]{40}")


def is_address(account: str) -> bool:
    """Whether ``account`` is a lower-case 0x-prefixed 20-byte hex address."""
    return _ADDRESS.fullmatch(account) is not None


class Balances(msgspec.Struct, array_like=True):
    """One account's buckets, in micro-USDC."""

    available: int = 0
    reserved: int = 0
    margin: int = 0
    escrow: int = 0

    def total(self) -> int:
        """Everything the account owns, in every bucket."""
        return self.available + self.reserved + self.margin + self.escrow


class Ledger:
    """All balances, the running deposit and withdrawal totals, and who changed."""

    def __init__(self) -> None:
        self.accounts: dict[str, Balances] = {}
        self.deposited = 0
        self.withdrawn = 0
        self.touched: dict[str, None] = {}  # accounts changed by the current command, in order

    def balances(self, account: str) -> Balances:
        """The account's balances (all zero for an account never seen)."""
        found = self.accounts.get(account)
        if found is None:
            found = self.accounts[account] = Balances()
        return found

    def move(self, account: str, source: Bucket, target: Bucket, amount: int) -> None:
        """Move ``amount`` between two buckets of one account."""
        if amount:
            b = self.balances(account)
            setattr(b, source, getattr(b, source) - amount)
            setattr(b, target, getattr(b, target) + amount)
            self.touched[account] = None

    def transfer(self, payer: str, source: Bucket, payee: str, target: Bucket,
                 amount: int) -> None:
        """Move ``amount`` from a bucket of one account to a bucket of another."""
        if amount:
            p = self.balances(payer)
            setattr(p, source, getattr(p, source) - amount)
            q = self.balances(payee)
            setattr(q, target, getattr(q, target) + amount)
            self.touched[payer] = None
            self.touched[payee] = None

    def deposit(self, account: str, amount: int) -> None:
        """Money in from the chain."""
        self.balances(account).available += amount
        self.deposited += amount
        self.touched[account] = None

    def withdraw(self, account: str, amount: int) -> None:
        """Money out to the chain."""
        self.balances(account).available -= amount
        self.withdrawn += amount
        self.touched[account] = None

    def total(self) -> int:
        """The sum of every bucket of every account."""
        return sum(b.total() for b in self.accounts.values())

    def conserved(self) -> bool:
        """Whether the ledger holds exactly what came in minus what went out."""
        return self.total() == self.deposited - self.withdrawn
