"""Clearing batches: what each cut asks the chain to do, checked against a simulated chain.

`Chain` plays the ClearingHouse contract with dicts: a deposit adds to the account's settled
balance; a batch must carry the next id, its deltas may never take a balance below zero, the
deltas settled since the last final chunk never sum above zero and a final chunk brings them
back to zero; withdrawals are paid after the deltas of their chunk, never over the balance,
and a forced request is served once, to its account, for at most what it asked.
`ChainDesk` is a `Desk` whose deposits and batches reach such a chain as they happen.

GPU.H100.SPOT: 1 000 micro-USDC per tick-lot, taker fee 5 bp (1 250 on one GPU-hour at 2 500).
GPU.H100.F2612: 3 720 000 micro-USDC per tick-lot, initial margin 20 %, taker fee 5 bp.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest

import engine.clearing
from engine.clearing import BatchAttestation, BatchDelta, BatchFill, BatchWithdrawal, ClearingBatch
from engine.commands import (
    AttestationAccepted,
    BatchConfirmed,
    CreditDeposit,
    ExchangeCommand,
    ForceWithdrawal,
    OpenEpoch,
    RegisterNode,
    RequestWithdrawal,
)
from engine.events import (
    ClearingCompleted,
    ClearingConfirmed,
    CommandRejected,
    DepositCredited,
    ExchangeEvent,
    ForcedWithdrawal,
    InsuranceCover,
    OrderCancelled,
    Reason,
)
from engine.exchange import Exchange
from engine.exchange_state import decode_state, encode_state
from engine.ledger import FEE_ACCOUNT, INSURANCE_FUND, Balances
from tests.exchange_helpers import (
    ALICE,
    BOB,
    BUY,
    CAROL,
    DAVE,
    GPU_FUT,
    GPU_SPOT,
    SELL,
    START,
    Desk,
    account,
    instrument,
    new_exchange,
    of_type,
    one,
)

SPOT_TV = instrument(GPU_SPOT).micro_usdc_per_tick_lot
FUT_TV = instrument(GPU_FUT).micro_usdc_per_tick_lot
RICH = 10_000_000_000


def moves(batch: ClearingBatch) -> list[BatchDelta]:
    """The deltas that move money (an account may also be listed with 0 to be reconciled)."""
    return [d for d in batch.deltas if d.amount]


def spot_fee(price: int, qty: int = 1) -> int:
    return price * qty * SPOT_TV * 5 // 10_000


def futures_fee(price: int, qty: int = 1) -> int:
    return price * qty * FUT_TV * 5 // 10_000


def futures_margin(price: int, qty: int = 1) -> int:
    return -(-price * qty * FUT_TV * 2_000 // 10_000)


def small_exchange() -> Exchange:
    """An exchange listing GPU.H100 spot and its December future only: quick cuts."""
    return new_exchange(instruments=(instrument(GPU_SPOT), instrument(GPU_FUT)))


class Chain:
    """The ClearingHouse contract's settled balances and checks, as plain Python."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.last_batch_id = 0
        self.last_deposit_id = 0
        self.credited_deposit_id = 0
        self.carry = 0  # sum of the deltas settled since the last final chunk
        self.deposited = 0
        self.withdrawn = 0
        self.forced: dict[int, tuple[str, int]] = {}  # request id: account, amount asked
        self.served: set[int] = set()
        self.settled: list[ClearingBatch] = []

    def balance(self, who: str) -> int:
        """The account's settled balance."""
        return self.balances.get(who, 0)

    def deposit(self, deposit_id: int, who: str, amount: int) -> None:
        """Tokens in: the balance grows at once."""
        self.balances[who] = self.balance(who) + amount
        self.deposited += amount
        self.last_deposit_id = max(self.last_deposit_id, deposit_id)

    def request_forced(self, request_id: int, who: str, amount: int) -> None:
        """A forced withdrawal request (the contract assigns each id once)."""
        self.forced.setdefault(request_id, (who, amount))

    def settle(self, batch: ClearingBatch) -> None:
        """`settleBatch`: fails as the contract would revert."""
        assert batch.batch_id == self.last_batch_id + 1, ("batch id", batch.batch_id)
        assert self.credited_deposit_id <= batch.credited_deposit_id <= self.last_deposit_id, \
            ("deposit id", batch.credited_deposit_id)
        for delta in batch.deltas:
            balance = self.balance(delta.account) + delta.amount
            assert balance >= 0, ("negative balance", delta, batch.batch_id)
            self.balances[delta.account] = balance
            self.carry += delta.amount
        if batch.last_chunk:
            assert self.carry == 0, ("not zero-sum", self.carry, batch.batch_id)
        else:
            assert self.carry <= 0, ("credit before debit", self.carry, batch.batch_id)
        for withdrawal in batch.withdrawals:
            balance = self.balance(withdrawal.account)
            assert 0 <= withdrawal.amount <= balance, ("withdrawal over balance", withdrawal)
            request = withdrawal.forced_request_id
            if request:
                asked = self.forced.get(request)
                assert asked is not None and request not in self.served, ("forced", withdrawal)
                assert asked[0] == withdrawal.account and withdrawal.amount <= asked[1], \
                    ("forced request", withdrawal, asked)
                self.served.add(request)
            self.balances[withdrawal.account] = balance - withdrawal.amount
            self.withdrawn += withdrawal.amount
        self.last_batch_id = batch.batch_id
        self.credited_deposit_id = batch.credited_deposit_id
        self.settled.append(batch)

    def follow(self, command: ExchangeCommand, events: Sequence[ExchangeEvent]) -> None:
        """What the chain sees of one command: the forced request behind it, the deposits the
        engine credited (already on chain), and every batch it cut, submitted in order."""
        if isinstance(command, ForceWithdrawal):
            self.request_forced(command.request_id, command.account, command.amount)
        for event in events:
            if isinstance(event, DepositCredited):
                self.deposit(event.deposit_id, event.account, event.amount)
            elif isinstance(event, ClearingBatch):
                self.settle(event)

    def check(self, exchange: Exchange) -> None:
        """Right after a cut: the chain holds exactly what the ledger says, account by
        account and in total."""
        ledger = exchange.ledger
        for who in {*self.balances, *ledger.accounts}:
            found = ledger.accounts.get(who)
            assert self.balance(who) == (found.total() if found else 0), who
        assert sum(self.balances.values()) == self.deposited - self.withdrawn
        assert self.deposited - self.withdrawn == ledger.deposited - ledger.withdrawn


class ChainDesk(Desk):
    """A `Desk` on a small exchange (GPU.H100 spot and December future) whose deposits and
    batches reach a `Chain` as they happen."""

    def __init__(self, exchange: Exchange | None = None) -> None:
        super().__init__(exchange if exchange is not None else small_exchange())
        self.chain = Chain()

    def apply(self, command: ExchangeCommand, ts: int | None = None) -> list[ExchangeEvent]:
        events = super().apply(command, ts)
        self.chain.follow(command, events)
        return events

    def cut_batches(self) -> list[ClearingBatch]:
        """Run a cut, check the chain holds the ledger's totals and each delta's balance,
        and return the cut's batches."""
        events = self.cut()
        self.chain.check(self.ex)
        batches = of_type(events, ClearingBatch)
        for delta in (d for b in batches for d in b.deltas):
            assert self.chain.balance(delta.account) == delta.balance, delta
        done = events.index(ClearingCompleted(self.ex.cuts))
        assert events[done - len(batches):done] == batches  # the cut's last word
        return batches


def funded(*accounts: str, amount: int = RICH) -> ChainDesk:
    """A `ChainDesk` where each of ``accounts`` has deposited ``amount``."""
    desk = ChainDesk()
    for who in accounts:
        desk.deposit(who, amount)
    return desk


def spot_trade(desk: Desk, buyer: str, seller: str, price: int = 2500) -> None:
    """``seller`` rests one GPU-hour, ``buyer`` takes it."""
    desk.capacity(seller, "GPU.H100", 10)
    desk.rest(seller, GPU_SPOT, SELL, 1, price)
    desk.place(buyer, GPU_SPOT, BUY, 1, price)


def futures_trade(desk: Desk, buyer: str, seller: str, price: int, qty: int = 1) -> None:
    """``seller`` rests, ``buyer`` takes (and pays the taker fee)."""
    desk.rest(seller, GPU_FUT, SELL, qty, price)
    desk.place(buyer, GPU_FUT, BUY, qty, price)


# --- what a cut carries ---------------------------------------------------------------------


def test_a_spot_trade_clears_its_fee_to_the_fee_account() -> None:
    desk = funded(ALICE, BOB)
    spot_trade(desk, ALICE, BOB)
    fee = spot_fee(2500)
    # premium and bond sit in escrow, which the chain counts: only the fee moves
    assert desk.cut_batches() == [ClearingBatch(
        batch_id=1, cut=1, last_chunk=True, credited_deposit_id=2,
        deltas=[BatchDelta(ALICE, -fee, RICH - fee), BatchDelta(FEE_ACCOUNT, fee, fee)],
        withdrawals=[],
        fills=[BatchFill(GPU_SPOT, 1, 2500, 1, ALICE, BOB, START)],
    )]
    assert desk.chain.balance(BOB) == RICH


def test_futures_clear_fees_and_variation_margin_debits_first() -> None:
    desk = funded(ALICE, BOB, CAROL, DAVE)
    futures_trade(desk, ALICE, BOB, 500, qty=2)
    open_fee = futures_fee(500, 2)
    assert desk.cut_batches() == [ClearingBatch(
        1, 1, True, 4,
        [BatchDelta(ALICE, -open_fee, RICH - open_fee), BatchDelta(FEE_ACCOUNT, open_fee,
                                                                   open_fee)],
        [], [BatchFill(GPU_FUT, 1, 500, 2, ALICE, BOB, START)])]
    # Carol and Dave trade at 510: the mark moves 10 ticks, Alice gains what Bob loses
    futures_trade(desk, DAVE, CAROL, 510)
    gain = 10 * 2 * FUT_TV
    dave_fee = futures_fee(510)
    (batch,) = desk.cut_batches()
    # the fee account sorts first among the accounts but is credited, so it comes after the
    # debits; each group is in account order
    assert batch.deltas == [
        BatchDelta(BOB, -gain, RICH - gain),
        BatchDelta(DAVE, -dave_fee, RICH - dave_fee),
        BatchDelta(FEE_ACCOUNT, dave_fee, open_fee + dave_fee),
        BatchDelta(ALICE, gain, RICH - open_fee + gain),
    ]
    assert FEE_ACCOUNT < BOB < DAVE < ALICE
    assert batch.fills == [BatchFill(GPU_FUT, 2, 510, 1, DAVE, CAROL, START)]
    assert (batch.batch_id, batch.cut, batch.withdrawals) == (2, 2, [])
    assert desk.chain.balance(CAROL) == RICH  # a maker's fee is 0


def test_a_withdrawal_is_paid_by_the_next_batch() -> None:
    desk = funded(ALICE)
    desk.apply(RequestWithdrawal(4, ALICE, 1_500_000))
    assert desk.chain.balance(ALICE) == RICH  # nothing leaves before the cut
    (batch,) = desk.cut_batches()
    assert (batch.batch_id, batch.cut, batch.last_chunk, batch.credited_deposit_id) == \
        (1, 1, True, 1)
    assert batch.withdrawals == [BatchWithdrawal(4, 0, ALICE, 1_500_000)]
    assert moves(batch) == []
    assert desk.chain.balance(ALICE) == RICH - 1_500_000
    desk.apply(RequestWithdrawal(9, ALICE, 500_000))
    (batch,) = desk.cut_batches()
    assert (batch.batch_id, batch.withdrawals) == (2, [BatchWithdrawal(9, 0, ALICE, 500_000)])


def test_a_withdrawal_and_a_delta_of_one_account_leave_it_at_the_delta_balance() -> None:
    desk = funded(ALICE, BOB)
    spot_trade(desk, ALICE, BOB)
    desk.apply(RequestWithdrawal(1, ALICE, 1_000_000))
    fee = spot_fee(2500)
    (batch,) = desk.cut_batches()
    # the delta adds back what the withdrawal pays out after it
    assert batch.deltas == [BatchDelta(ALICE, -fee, RICH - fee - 1_000_000),
                            BatchDelta(FEE_ACCOUNT, fee, fee)]
    assert batch.withdrawals == [BatchWithdrawal(1, 0, ALICE, 1_000_000)]
    assert desk.chain.balance(ALICE) == RICH - fee - 1_000_000


def test_a_cut_with_nothing_new_emits_no_batch() -> None:
    desk = ChainDesk()
    assert desk.cut_batches() == []  # a fresh exchange
    desk.deposit(ALICE, RICH)
    desk.deposit(BOB, RICH)
    spot_trade(desk, ALICE, BOB)
    assert len(desk.cut_batches()) == 1
    assert desk.cut_batches() == []
    # money that moved inside accounts, and back, is nothing new for the chain
    order = desk.rest(ALICE, GPU_SPOT, BUY, 1, 2400)
    desk.cancel(ALICE, GPU_SPOT, order)
    desk.place(CAROL, GPU_FUT, SELL, 1, 550)  # refused: Carol has nothing
    assert desk.cut_batches() == []
    assert desk.ex.clearing.next_batch_id == 2


def test_a_newly_credited_deposit_alone_emits_an_empty_batch() -> None:
    desk = ChainDesk()
    desk.apply(CreditDeposit(5, ALICE, RICH))
    assert desk.cut_batches() == [ClearingBatch(1, 1, True, 5, [], [], [])]
    desk.apply(CreditDeposit(6, BOB, 7))
    assert desk.cut_batches() == [ClearingBatch(2, 2, True, 6, [], [], [])]
    desk.apply(CreditDeposit(6, BOB, 7))  # a duplicate credits nothing
    assert desk.cut_batches() == []


def test_the_deltas_of_a_cut_sum_to_zero_and_fills_are_in_trade_order() -> None:
    desk = funded(ALICE, BOB, CAROL, DAVE)
    spot_trade(desk, ALICE, BOB)
    futures_trade(desk, CAROL, DAVE, 480)
    spot_trade(desk, DAVE, BOB, 2600)
    (batch,) = desk.cut_batches()
    assert sum(d.amount for d in batch.deltas) == 0
    assert [(f.symbol, f.trade_id, f.buyer, f.seller) for f in batch.fills] == [
        (GPU_SPOT, 1, ALICE, BOB), (GPU_FUT, 1, CAROL, DAVE), (GPU_SPOT, 2, DAVE, BOB)]


# --- chunks ---------------------------------------------------------------------------------


def chunked_desk() -> ChainDesk:
    """Two takers pay spot fees and one of them withdraws: 3 deltas and 1 withdrawal."""
    desk = funded(ALICE, BOB, CAROL, DAVE)
    spot_trade(desk, ALICE, BOB)
    spot_trade(desk, CAROL, DAVE)
    desk.apply(RequestWithdrawal(1, ALICE, 1_000_000))
    return desk


def test_a_cut_over_chunk_entries_is_split_into_consecutive_batches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.clearing, "CHUNK_ENTRIES", 2)
    desk = chunked_desk()
    desk.deposit(CAROL, 1)  # one more deposit id, carried by every chunk
    fee = spot_fee(2500)
    batches = desk.cut_batches()
    assert batches == [
        ClearingBatch(1, 1, False, 5,
                      [BatchDelta(ALICE, -fee, RICH - fee - 1_000_000),
                       BatchDelta(CAROL, -fee, RICH - fee + 1)], [], []),
        ClearingBatch(2, 1, False, 5, [BatchDelta(FEE_ACCOUNT, 2 * fee, 2 * fee)], [], []),
        # a withdrawal (a token transfer) weighs two deltas: a chunk of its own here
        ClearingBatch(3, 1, True, 5, [], [BatchWithdrawal(1, 0, ALICE, 1_000_000)],
                      [BatchFill(GPU_SPOT, 1, 2500, 1, ALICE, BOB, START),
                       BatchFill(GPU_SPOT, 2, 2500, 1, CAROL, DAVE, START)]),
    ]
    assert [b.batch_id for b in desk.ex.clearing.unconfirmed] == [1, 2, 3]
    spot_trade(desk, ALICE, BOB)
    (batch,) = desk.cut_batches()
    assert (batch.batch_id, batch.cut, batch.last_chunk) == (4, 2, True)


def test_one_entry_chunks_keep_the_running_sum_at_or_below_zero(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.clearing, "CHUNK_ENTRIES", 1)
    desk = chunked_desk()
    batches = desk.cut_batches()  # the chain checks the running sum chunk by chunk
    assert [b.batch_id for b in batches] == [1, 2, 3, 4]
    assert [b.last_chunk for b in batches] == [False, False, False, True]
    assert [len(b.deltas) + len(b.withdrawals) for b in batches] == [1, 1, 1, 1]
    assert [len(b.fills) for b in batches] == [0, 0, 0, 2]


def test_a_chunked_cut_leaves_every_account_at_its_delta_balance(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A delta's ``balance`` is what the account holds once the whole cut has settled: an
    # account's withdrawal may come in a later chunk than its delta, so the bridge reconciles
    # a cut after its last chunk.
    monkeypatch.setattr(engine.clearing, "CHUNK_ENTRIES", 2)
    desk = chunked_desk()
    chain = Chain()
    for n, who in enumerate((ALICE, BOB, CAROL, DAVE), start=1):
        chain.deposit(n, who, RICH)
    batches = desk.cut_batches()
    assert len(batches) > 1
    split = {d.account for d in batches[0].deltas} & \
        {w.account for b in batches[1:] for w in b.withdrawals}
    assert split, "the scenario puts a withdrawal in a later chunk than its delta"
    for batch in batches:
        chain.settle(batch)
    for delta in (d for b in batches for d in b.deltas):
        assert chain.balance(delta.account) == delta.balance, (
            f"after the cut the chain holds {chain.balance(delta.account)} "
            f"for {delta.account}, its delta says {delta.balance}")


def test_a_cut_of_more_than_800_deltas_takes_two_batches() -> None:
    assert engine.clearing.CHUNK_ENTRIES == 800
    desk = funded(BOB)
    desk.capacity(BOB, "GPU.H100", 800)
    takers = [account(0x1000 + n) for n in range(800)]
    for who in takers:
        desk.deposit(who, 10_000_000)
        desk.rest(BOB, GPU_SPOT, SELL, 1, 2500)
        desk.place(who, GPU_SPOT, BUY, 1, 2500)
    fee = spot_fee(2500)
    first, last = desk.cut_batches()
    # 800 takers' fees, then the fee account's credit: the running sum goes down, then to 0
    assert (first.batch_id, first.last_chunk, first.fills) == (1, False, [])
    assert first.deltas == [BatchDelta(who, -fee, 10_000_000 - fee) for who in sorted(takers)]
    assert (last.batch_id, last.last_chunk, last.deltas) == \
        (2, True, [BatchDelta(FEE_ACCOUNT, 800 * fee, 800 * fee)])
    assert [f.trade_id for f in last.fills] == list(range(1, 801))
    assert first.credited_deposit_id == last.credited_deposit_id == 801


# --- confirmations --------------------------------------------------------------------------


def three_batches() -> ChainDesk:
    desk = ChainDesk()
    for n in range(3):
        desk.deposit(ALICE, 1 + n)
        desk.cut_batches()
    assert [b.batch_id for b in desk.ex.clearing.unconfirmed] == [1, 2, 3]
    return desk


def rejected(batch_id: int) -> list[ExchangeEvent]:
    return [CommandRejected("batch_confirmed", "", batch_id, Reason.UNKNOWN_BATCH)]


def test_batches_are_confirmed_in_order() -> None:
    desk = three_batches()
    for batch_id in (1, 2, 3):
        assert desk.apply(BatchConfirmed(batch_id, f"0x{batch_id:064x}")) == \
            [ClearingConfirmed(batch_id, f"0x{batch_id:064x}")]
    assert desk.ex.clearing.unconfirmed == []
    assert desk.apply(BatchConfirmed(4, "0x04")) == rejected(4)  # not cut yet


def test_a_confirmation_out_of_order_is_refused() -> None:
    desk = three_batches()
    assert desk.apply(BatchConfirmed(2, "0x02")) == rejected(2)
    assert desk.apply(BatchConfirmed(0, "0x00")) == rejected(0)
    assert [b.batch_id for b in desk.ex.clearing.unconfirmed] == [1, 2, 3]
    assert desk.apply(BatchConfirmed(1, "0x01")) == [ClearingConfirmed(1, "0x01")]
    assert [b.batch_id for b in desk.ex.clearing.unconfirmed] == [2, 3]


def test_a_batch_is_confirmed_once() -> None:
    desk = three_batches()
    desk.apply(BatchConfirmed(1, "0x01"))
    assert desk.apply(BatchConfirmed(1, "0x01")) == rejected(1)
    assert [b.batch_id for b in desk.ex.clearing.unconfirmed] == [2, 3]


def test_unconfirmed_batches_are_kept_whole() -> None:
    desk = funded(ALICE, BOB)
    spot_trade(desk, ALICE, BOB)
    batches = desk.cut_batches()
    desk.deposit(CAROL, 5)
    batches += desk.cut_batches()
    assert desk.ex.clearing.unconfirmed == batches
    desk.apply(BatchConfirmed(1, "0x01"))
    assert desk.ex.clearing.unconfirmed == batches[1:]


# --- forced withdrawals ---------------------------------------------------------------------


def test_a_forced_withdrawal_cancels_every_order_and_pays_only_what_is_free() -> None:
    desk = funded(ALICE, BOB, amount=2_000_000_000)
    futures_trade(desk, ALICE, BOB, 500)
    spot_order = desk.rest(ALICE, GPU_SPOT, BUY, 1, 2400)
    futures_order = desk.rest(ALICE, GPU_FUT, BUY, 1, 490)
    margin = futures_margin(500)
    free = 2_000_000_000 - futures_fee(500) - margin
    assert desk.ex.free_collateral(ALICE) < free  # the orders hold some of it
    events = desk.apply(ForceWithdrawal(7, ALICE, 10**12))
    assert [(c.order_id, c.reason) for c in of_type(events, OrderCancelled)] == \
        [(futures_order, Reason.FORCED_WITHDRAWAL), (spot_order, Reason.FORCED_WITHDRAWAL)]
    assert one(events, ForcedWithdrawal) == ForcedWithdrawal(7, ALICE, 10**12, free)
    assert desk.balances(ALICE) == Balances(available=0, margin=margin)
    assert desk.ex.orders == {}
    (batch,) = desk.cut_batches()
    assert batch.withdrawals == [BatchWithdrawal(0, 7, ALICE, free)]
    assert desk.chain.balance(ALICE) == margin
    assert desk.chain.served == {7}


def test_a_forced_withdrawal_pays_what_it_asks_when_that_is_free() -> None:
    desk = funded(ALICE, BOB)
    order = desk.rest(ALICE, GPU_SPOT, BUY, 1, 2400)
    events = desk.apply(ForceWithdrawal(1, ALICE, 3_000_000))
    assert one(events, OrderCancelled).order_id == order
    assert one(events, ForcedWithdrawal) == ForcedWithdrawal(1, ALICE, 3_000_000, 3_000_000)
    assert desk.balances(ALICE) == Balances(available=RICH - 3_000_000)
    assert desk.cut_batches()[0].withdrawals == [BatchWithdrawal(0, 1, ALICE, 3_000_000)]


def test_a_forced_withdrawal_with_nothing_free_is_still_answered() -> None:
    desk = ChainDesk()
    desk.deposit(BOB, 5)
    assert desk.apply(ForceWithdrawal(2, ALICE, 100)) == [ForcedWithdrawal(2, ALICE, 100, 0)]
    assert ALICE not in desk.ex.ledger.accounts
    (batch,) = desk.cut_batches()
    assert batch.withdrawals == [BatchWithdrawal(0, 2, ALICE, 0)]
    assert batch.deltas == []


def test_a_forced_request_is_served_once() -> None:
    desk = funded(ALICE, BOB)
    desk.apply(ForceWithdrawal(3, ALICE, 1_000))
    order = desk.rest(ALICE, GPU_SPOT, BUY, 1, 2400)
    for who in (ALICE, BOB):
        assert desk.apply(ForceWithdrawal(3, who, 1_000)) == \
            [CommandRejected("force_withdrawal", who, 3, Reason.DUPLICATE_REQUEST)]
    assert order in desk.ex.orders  # a refused request cancels nothing
    assert desk.ex.ledger.withdrawn == 1_000
    assert desk.cut_batches()[0].withdrawals == [BatchWithdrawal(0, 3, ALICE, 1_000)]


@pytest.mark.parametrize(("request_id", "who", "amount", "reason"), [
    (1, FEE_ACCOUNT, 5, Reason.INVALID_ACCOUNT),
    (1, INSURANCE_FUND, 5, Reason.INVALID_ACCOUNT),
    (1, "0x1234", 5, Reason.INVALID_ACCOUNT),
    (1, ALICE, 0, Reason.INVALID_AMOUNT),
    (1, ALICE, -5, Reason.INVALID_AMOUNT),
    (0, ALICE, 5, Reason.INVALID_AMOUNT),
    (-1, ALICE, 5, Reason.INVALID_AMOUNT),
])
def test_invalid_forced_withdrawals_are_refused(request_id: int, who: str, amount: int,
                                                reason: Reason) -> None:
    desk = funded(ALICE)
    order = desk.rest(ALICE, GPU_SPOT, BUY, 1, 2400)
    assert desk.apply(ForceWithdrawal(request_id, who, amount)) == \
        [CommandRejected("force_withdrawal", who, request_id, reason)]
    assert order in desk.ex.orders
    assert desk.ex.clearing.forced_seen == set()


# --- the insurance fund ---------------------------------------------------------------------


def test_an_unfunded_insurance_cover_is_a_negative_balance_the_chain_refuses() -> None:
    # Alice buys at the top of the band with little more than the margin; the mark then falls
    # to the bottom, and her loss is far over what she has. The insurance fund, never funded,
    # covers her in the ledger and goes below zero there. The engine does not hide it: the
    # batch says the fund's balance is negative, which the contract refuses ("negative
    # balance"), so clearing stops until the fund is topped up (the bridge says why).
    desk = Desk(small_exchange())
    for who in (BOB, CAROL, DAVE):
        desk.deposit(who, RICH)
    desk.deposit(ALICE, futures_margin(600) + futures_fee(600))
    futures_trade(desk, ALICE, BOB, 600)
    futures_trade(desk, DAVE, CAROL, 400)
    events = desk.cut()
    cover = one(events, InsuranceCover)
    assert cover.fund_balance < 0
    deltas = [d for b in of_type(events, ClearingBatch) for d in b.deltas]
    assert [d for d in deltas if d.balance < 0] == \
        [BatchDelta(INSURANCE_FUND, cover.fund_balance, cover.fund_balance)]


# --- state ----------------------------------------------------------------------------------


def busy_desk() -> ChainDesk:
    """Trades, withdrawals, forced withdrawals, confirmations, and one more period under way
    (fills, a withdrawal, changed accounts, unconfirmed batches)."""
    desk = funded(ALICE, BOB, CAROL, DAVE)
    spot_trade(desk, ALICE, BOB)
    futures_trade(desk, CAROL, DAVE, 500, qty=2)
    desk.apply(RequestWithdrawal(1, ALICE, 1_000_000))
    desk.cut_batches()
    desk.apply(ForceWithdrawal(1, DAVE, 5_000_000))
    futures_trade(desk, ALICE, CAROL, 520)
    desk.cut_batches()
    desk.apply(BatchConfirmed(1, "0x01"))
    spot_trade(desk, DAVE, BOB, 2550)
    desk.apply(RequestWithdrawal(2, BOB, 2_000_000))
    desk.rest(CAROL, GPU_FUT, BUY, 1, 505)
    desk.deposit(CAROL, 3)
    return desk


def next_period(desk: Desk) -> list[ExchangeEvent]:
    """More of everything, to run on an exchange and on its restored copy."""
    events = desk.cut()
    events += desk.place(ALICE, GPU_FUT, SELL, 1, 505)  # trades with Carol's bid
    events += desk.apply(ForceWithdrawal(2, CAROL, 10**12))
    events += desk.apply(RequestWithdrawal(3, ALICE, 4_000_000))
    events += desk.apply(BatchConfirmed(2, "0x02"))
    events += desk.cut()
    return events


def test_a_restored_exchange_cuts_the_same_batches() -> None:
    desk = busy_desk()
    saved = desk.ex.state()
    restored = Exchange.restore(saved)
    assert restored.state_hash() == desk.ex.state_hash()
    from_bytes = Exchange.restore(decode_state(encode_state(desk.ex.state())))
    assert from_bytes.state_hash() == desk.ex.state_hash()
    twin = Desk(restored, ts=desk.ts)
    events = next_period(desk)
    assert of_type(events, ClearingBatch)  # the period did cut batches
    assert msgspec.msgpack.encode(next_period(twin)) == msgspec.msgpack.encode(events)
    assert twin.ex.state_hash() == desk.ex.state_hash()


def test_replaying_the_journal_gives_the_same_batches() -> None:
    desk = busy_desk()
    next_period(desk)
    replayed = ChainDesk()
    for stamped in desk.journal:
        events = replayed.ex.apply(stamped)
        replayed.chain.follow(stamped.command, events)
    assert replayed.chain.settled == desk.chain.settled
    assert msgspec.msgpack.encode(replayed.ex.clearing.state()) == \
        msgspec.msgpack.encode(desk.ex.clearing.state())
    assert replayed.ex.state_hash() == desk.ex.state_hash()


def test_recorded_attestations_travel_with_the_cuts_last_chunk() -> None:
    desk = funded(ALICE)
    node = account(0x0DE)
    desk.apply(RegisterNode(node, ALICE, "GPU.H100", 8))
    desk.apply(OpenEpoch(1, "0x" + "ab" * 32, desk.ts, 60_000_000_000))
    desk.apply(AttestationAccepted(node, 1, 7, "0x" + "cd" * 32))
    desk.apply(AttestationAccepted(node, 1, 8, "0x" + "ef" * 32))  # refused: a duplicate
    (batch,) = desk.cut_batches()
    assert batch.last_chunk
    assert batch.attestations == [BatchAttestation(node, 1, 7, "0x" + "cd" * 32)]
    assert desk.cut_batches() == []  # recorded once, committed once
