"""The demo market: its accounts, and `DemoMarket` trading on a real exchange, with and
without provider nodes."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator

import pytest

import gateway.demo
from engine.commands import (
    AttestationAccepted,
    CancelAll,
    CancelOrder,
    CreditDeposit,
    ExchangeCommand,
    OpenEpoch,
    PlaceOrder,
    RegisterNode,
    SetCapacity,
)
from engine.delivery import window_start
from engine.events import (
    CommandRejected,
    DeliveryAllocated,
    DeliveryOpened,
    ExchangeEvent,
    InsuranceCover,
    Liquidation,
    OrderRejected,
    Trade,
)
from engine.keys import dev_keys
from engine.messages import Side
from engine.uptime import ATTESTED_EPOCHS
from gateway.auth import address_of
from gateway.demo import dev_accounts
from gateway.demo_market import (
    BP,
    DEMO_DEPOSIT_BASE,
    FUNDING,
    LEVELS,
    MAKER_LIMIT_LEVELS,
    MAKERS,
    MAX_DEVIATION_BP,
    DemoMarket,
    FairValue,
    max_lots,
)
from tests.exchange_helpers import NS, START, Desk, utc_ns

STEP = NS // 20  # the default interval of `run_demo`
SPOT = ["GPU.B200.SPOT", "GPU.H100.SPOT", "GPU.H200.SPOT", "RACK.KW.SPOT"]


class Run:
    """A `DemoMarket` on a `Desk` (which checks conservation after every command)."""

    def __init__(self, seed: int = 1, start: int = START, desk: Desk | None = None) -> None:
        self.desk = desk if desk is not None else Desk(ts=start)
        self.commands: list[ExchangeCommand] = []
        self.events: list[ExchangeEvent] = []
        self.market = DemoMarket(self.desk.ex, self._submit, random.Random(seed),
                                 dev_accounts())
        self.now = max(start, self.desk.ts)
        self.desk.at(self.now)
        self.funded = self.market.open(self.now)

    def _submit(self, command: ExchangeCommand) -> None:
        self.commands.append(command)
        self.events.extend(self.desk.apply(command))

    def steps(self, count: int, interval: int = STEP) -> Iterator[None]:
        """Advance ``count`` steps, yielding after each."""
        for _ in range(count):
            self.now += interval
            self.desk.at(self.now)
            self.market.step(self.now)
            yield

    def rejections(self) -> list[OrderRejected | CommandRejected]:
        return [e for e in self.events if isinstance(e, OrderRejected | CommandRejected)]

    def send(self, command: ExchangeCommand) -> None:
        """A command from outside the demo (the chain bridge's, in `cmx serve`)."""
        self._submit(command)


def test_dev_accounts_are_the_mnemonic_accounts_the_docs_list() -> None:
    keys = dev_keys()
    assert len(keys) == 10
    assert keys[0][0] == "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
    assert keys[9][0] == "0xa0ee7a142d267c1f36714e4a8f75612f20a79720"
    assert len({address for address, _ in keys}) == 10
    for address, key in keys:
        assert address_of(key) == address
        assert address in (gateway.demo.__doc__ or "")
    assert dev_accounts() == [address for address, _ in keys]


def test_fair_value_walks_within_its_bounds() -> None:
    fair = FairValue(2_500_000, 1, 0, 2_500_000)
    rng = random.Random(7)
    seen = set()
    for _ in range(100_000):
        fair.walk(rng)
        seen.add(fair.value)
    bound = 2_500_000 * MAX_DEVIATION_BP // BP
    assert min(seen) >= 2_500_000 - bound
    assert max(seen) <= 2_500_000 + bound
    assert max(seen) - min(seen) > 2_500_000 // 100  # it does move: more than 1 %


def test_demo_market_keeps_a_lively_two_sided_market_without_refusals() -> None:
    run = Run()
    assert run.funded == dev_accounts()
    ex = run.desk.ex
    for market, _ahead in run.market.quoted(run.now):  # the opening puts up every ladder
        assert len(market.book.depth(Side.BUY, 100)) >= LEVELS, market.symbol
        assert len(market.book.depth(Side.SELL, 100)) >= LEVELS, market.symbol
    samples: Counter[str] = Counter()
    two_sided: Counter[str] = Counter()
    steps = 3000
    for _ in run.steps(steps):
        for market, _ahead in run.market.quoted(run.now):
            bid, ask = market.book.best_bid(), market.book.best_ask()
            samples[market.symbol] += 1
            if bid is not None and ask is not None:
                two_sided[market.symbol] += 1
                assert bid < ask
                assert market.min_price <= bid and ask <= market.max_price

    quoted = [m.symbol for m, _ in run.market.quoted(run.now)]
    assert len(quoted) == 4 + 4 * 3
    assert set(SPOT) <= set(quoted)
    orders = [c for c in run.commands if type(c).__name__ in
              ("PlaceOrder", "AmendOrder", "CancelOrder")]
    assert len(run.rejections()) <= len(orders) // 200, Counter(
        str(e.reason) for e in run.rejections())
    for symbol in quoted:
        assert two_sided[symbol] >= 0.95 * samples[symbol], symbol
    trades = Counter(e.symbol for e in run.events if isinstance(e, Trade))
    for symbol in SPOT:
        assert trades[symbol] >= 20, trades
    for underlying in ("GPU.H100", "GPU.H200", "GPU.B200", "RACK.KW"):
        assert sum(n for s, n in trades.items() if s.startswith(underlying + ".F")) >= 20
    # a few tens of commands per second at 20 steps a second
    assert 0.5 * steps <= len(run.commands) <= 5 * steps
    # makers keep their ladders bounded; nobody is liquidated or bailed out
    live = Counter((o.account, o.symbol, o.side) for o in ex.orders.values())
    assert max(live.values()) <= LEVELS
    assert not [e for e in run.events if isinstance(e, Liquidation | InsuranceCover)]
    assert ex.ledger.conserved()
    assert ex.ledger.deposited == FUNDING * len(dev_accounts())


def test_makers_quote_around_the_fair_value_on_tick_and_in_band() -> None:
    run = Run(seed=3)
    for _ in run.steps(1000):
        pass
    for market, ahead in run.market.quoted(run.now):
        fair = run.market.fair[market.instrument.underlying].ticks(market, ahead)
        bid, ask = market.book.best_bid(), market.book.best_ask()
        assert bid is not None and ask is not None
        # within 1 % of the fair value (or a tick, for the coarse futures ticks)
        tolerance = max(2, fair // 100)
        assert fair - tolerance <= bid < ask <= fair + tolerance, (market.symbol, bid, ask)
    for account in dev_accounts()[:MAKERS]:
        mine = [o for o in run.desk.ex.orders.values() if o.account == account]
        assert mine
        for order in mine:
            market = run.desk.ex.markets[order.symbol]
            assert market.min_price <= order.limit <= market.max_price


def test_same_seed_same_market_other_seed_other_market() -> None:
    def journal(seed: int) -> tuple[list[ExchangeCommand], str]:
        run = Run(seed=seed)
        for _ in run.steps(500):
            pass
        return run.commands, run.desk.ex.state_hash()

    first, again, other = journal(5), journal(5), journal(6)
    assert first == again
    assert first[1] != other[1]


def test_a_restart_funds_nothing_twice_and_cancels_the_leftovers() -> None:
    run = Run()
    for _ in run.steps(300):
        pass
    accounts = set(dev_accounts())
    before = {i for i, o in run.desk.ex.orders.items() if o.account in accounts}
    assert before
    restarted = Run(seed=2, desk=run.desk)
    assert restarted.funded == []
    opening = restarted.commands
    assert not [c for c in opening if isinstance(c, CreditDeposit | SetCapacity)]
    assert {c.account for c in opening if isinstance(c, CancelAll)} <= accounts
    # the leftovers are gone; what the demo accounts show now is the new run's ladders
    now_live = {i for i, o in run.desk.ex.orders.items() if o.account in accounts}
    assert now_live
    assert not before & now_live
    tracked = {i for quotes in restarted.market.quotes.values() for i in quotes}
    assert now_live == tracked
    # today's index was fixed at the first opening: the walk carries on from there
    for underlying, fair in restarted.market.fair.items():
        assert fair.value == max((d, p) for (u, d), p in run.desk.ex.fixes.items()
                                 if u == underlying)[1]
    assert sorted(run.desk.ex.deposits_seen) == [DEMO_DEPOSIT_BASE + i for i in range(10)]
    for _ in restarted.steps(300):
        pass
    assert not restarted.rejections()


def test_an_expiring_future_is_left_before_its_last_trade() -> None:
    # GPU.H100.F2612 stops trading at 2026-12-31 00:00 UTC; quoting stops an hour before
    run = Run(start=utc_ns(2026, 12, 30, 22, 30))
    expiring = "GPU.H100.F2612"
    assert expiring in [m.symbol for m, _ in run.market.quoted(run.now)]
    for _ in run.steps(60, interval=30 * NS):
        pass
    assert run.now >= utc_ns(2026, 12, 30, 23, 0)
    quoted = [m.symbol for m, _ in run.market.quoted(run.now)]
    assert expiring not in quoted
    assert "GPU.H100.F2703" in quoted
    assert not [o for o in run.desk.ex.orders.values() if o.symbol == expiring]
    assert not run.rejections()


@pytest.mark.parametrize("side", [Side.BUY, Side.SELL])
def test_a_maker_at_its_position_limit_stops_adding_to_it(side: Side) -> None:
    run = Run()
    market = run.desk.ex.markets["GPU.H100.F2701"]
    maker = dev_accounts()[0]
    fair = run.market.fair["GPU.H100"].ticks(market, 2)
    assert run.market.ladder(maker, market, fair)[side]
    # a taker's trades leave the maker far long (buy side) or short (sell side)
    lots = MAKER_LIMIT_LEVELS * max_lots(market)
    taker = dev_accounts()[MAKERS]
    price = fair
    run.desk.rest(maker, market.symbol, side, lots, price)
    run.desk.place(taker, market.symbol, Side.SELL if side == Side.BUY else Side.BUY,
                   lots, price)
    assert abs(market.positions[maker].qty) == lots
    ladder = run.market.ladder(maker, market, fair)
    assert ladder[side] == []
    other = Side.SELL if side == Side.BUY else Side.BUY
    assert len(ladder[other]) == LEVELS


# --- providers selling from nodes --------------------------------------------------------

PROVIDER = dev_accounts()[1]  # a maker of GPU.H100.SPOT and GPU.B200.SPOT
H100_SPOT = "GPU.H100.SPOT"
EPOCH_NS = 5 * NS
EPOCH_STEPS = EPOCH_NS // STEP


class Fleet:
    """Provider nodes on a `Desk`, and the epochs they attest, as the chain bridge and the
    collector would sequence them."""

    def __init__(self, desk: Desk) -> None:
        self.desk = desk
        self.epoch = 0
        self.start = 0
        self.nodes: list[str] = []

    def register(self, node: str, units: int, underlying: str = "GPU.H100") -> None:
        self.desk.apply(RegisterNode(node, PROVIDER, underlying, units))
        self.nodes.append(node)

    def next_epoch(self, run: Run | None = None, *, attest: bool = True) -> None:
        """Open the next epoch now (or just after the last one started); its nodes attest
        it unless not ``attest``."""
        self.epoch += 1
        self.start = max(self.desk.ts, self.start + 1)
        commands: list[ExchangeCommand] = [
            OpenEpoch(self.epoch, f"0x{self.epoch:064x}", self.start, EPOCH_NS)]
        if attest:
            commands += [AttestationAccepted(node, self.epoch, 1, f"0x{i + 1:064x}")
                         for i, node in enumerate(self.nodes)]
        for command in commands:
            if run is not None:
                run.send(command)
            else:
                self.desk.apply(command)


def node(n: int) -> str:
    return f"0x{0x90DE_0000 + n:040x}"


def free_units(run: Run, underlying: str = "GPU.H100") -> int | None:
    ex = run.desk.ex
    window_ns = ex.markets[H100_SPOT].window_ns
    window = window_start(ex.last_ts, window_ns)
    return ex.uptime.free_units(PROVIDER, underlying, window, window + window_ns)


def provider_deliveries(run: Run, symbol: str = H100_SPOT) -> list[DeliveryOpened]:
    return [e for e in run.events if isinstance(e, DeliveryOpened)
            and e.seller == PROVIDER and e.symbol == symbol]


def test_a_provider_sells_spot_within_its_attested_nodes_free_units() -> None:
    desk = Desk()
    fleet = Fleet(desk)
    units = 60  # less than the provider sells in a window, so the limit is reached
    fleet.register(node(1), units)
    fleet.next_epoch()
    run = Run(desk=desk)
    ex = desk.ex
    for i, _ in enumerate(run.steps(3000)):
        if i % EPOCH_STEPS == 0:
            fleet.next_epoch(run)
        free = free_units(run)
        assert free is not None
        assert ex.open_sells.get((PROVIDER, H100_SPOT), 0) <= free
    assert run.rejections() == []
    deliveries = provider_deliveries(run)
    assert deliveries
    allocated: Counter[int] = Counter()
    for event in run.events:
        if isinstance(event, DeliveryAllocated):
            assert event.node == node(1)
            allocated[event.delivery_id] += event.units
    # every lot it sold is on its node, and the node is never sold past its units
    for delivery in deliveries:
        assert allocated[delivery.delivery_id] == delivery.qty
    window = deliveries[0].window_start
    assert {d.window_start for d in deliveries} == {window}
    assert units - max_lots(ex.markets[H100_SPOT]) <= sum(d.qty for d in deliveries) <= units
    assert ex.uptime.allocated[(node(1), window)] == sum(d.qty for d in deliveries)
    # the other makers of the instrument sell on as before, from their capacity
    sold: Counter[str] = Counter()
    for event in run.events:
        if isinstance(event, DeliveryOpened) and event.symbol == H100_SPOT:
            sold[event.seller] += event.qty
    assert max(n for seller, n in sold.items() if seller != PROVIDER) > units


def test_a_provider_whose_nodes_stopped_attesting_sells_nothing_spot() -> None:
    desk = Desk()
    fleet = Fleet(desk)
    fleet.register(node(1), 10_000)
    fleet.next_epoch()
    run = Run(desk=desk)
    ex = desk.ex
    for i, _ in enumerate(run.steps(600)):
        if i % EPOCH_STEPS == 0:
            fleet.next_epoch(run)
    assert ex.open_sells.get((PROVIDER, H100_SPOT), 0) > 0
    assert provider_deliveries(run)
    # the node misses ATTESTED_EPOCHS epochs: nothing of the provider is sellable any more
    for _ in range(ATTESTED_EPOCHS):
        fleet.next_epoch(run, attest=False)
    assert free_units(run) == 0
    stopped = len(run.commands)
    open_sells = [ex.open_sells.get((PROVIDER, H100_SPOT), 0)]
    for _ in run.steps(1200):
        open_sells.append(ex.open_sells.get((PROVIDER, H100_SPOT), 0))
    assert run.rejections() == []
    # it never offered more: no new sell, no sell amended up; its asks were cancelled
    assert open_sells == sorted(open_sells, reverse=True)
    assert open_sells[-1] == 0
    after = [c for c in run.commands[stopped:]
             if getattr(c, "account", None) == PROVIDER and getattr(c, "symbol", None) ==
             H100_SPOT]
    assert any(isinstance(c, CancelOrder) for c in after)
    assert not [c for c in after if isinstance(c, PlaceOrder) and c.side == Side.SELL]
    # it still bids for spot, and sells spot where it has no nodes (from its capacity)
    assert any(o.account == PROVIDER and o.symbol == H100_SPOT and o.side == Side.BUY
               for o in ex.orders.values())
    assert provider_deliveries(run, "GPU.B200.SPOT")
