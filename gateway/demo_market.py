"""The simulated market behind ``cmx serve --demo``, sans-I/O: state in, commands out.

`DemoMarket` reads the exchange it trades on and sends commands through a ``submit`` callable
that applies each one at once (the sequencer does), so every decision sees the state the
previous command left. It owns no clock and no randomness of its own: the caller passes the
time and a seeded `random.Random`, so a seed and a sequence of times give the same commands.

What it does, all in integer ticks, lots and micro-USDC:

* **Opening**: credits each account once (deposit ids from `DEMO_DEPOSIT_BASE`, which no
  chain deposit reaches, so a restart finds them and credits nothing twice), gives every
  account spot capacity on each underlying, cancels what its accounts left resting, and puts
  up every maker's ladder at once.
* **Providers**: an account with registered nodes of an underlying (on a development chain,
  `chain_bridge.demo_providers` registers some for accounts 0 to 2) sells it spot from them
  only, as the engine has it (`engine.uptime`): its open sells stay within the free units of
  its nodes that attested lately, and when they no longer fit (its nodes stopped attesting)
  a refresh cancels its highest asks until they do. Capacity applies to the others.
* **Fair values**: one per underlying, in micro-USDC per unit of the futures' quote (what an
  index fix is in), a mean-reverting random walk around the products' reference price. Spot
  quotes it per spot unit (a kW-month is 30 kW-days); each futures month adds a small basis.
* **Makers** keep a ladder of `LEVELS` orders per side on the spot instruments and the nearest
  `FUTURE_MONTHS` futures of each underlying, three makers per instrument, each with its own
  spread. A refresh moves only the orders whose price left the ladder (an amend each), so a
  one-step move of the fair value costs one amend per side; a refresh with nothing to move
  may show a new size on one level. Futures makers lean their quotes against their position.
* **Takers** send marketable IOC limit orders and IOC market orders, leaning against their
  futures position so it stays bounded. Half the refreshes and taker orders go to spot.
* **Operator**: an index fix per underlying per UTC day and a `ClearingCut` every minute
  (futures marks); `cmx serve`'s clock sends the `Timer`s that close spot deliveries and halt
  expired futures.

Nothing is sent that the exchange would refuse: orders stay inside the price band, spot sells
inside what the seller may offer (`Exchange.spot_room`: its nodes' free units, or its
capacity), and an account whose free collateral is below `RESERVE` waits.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final

from engine.commands import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    ClearingCut,
    CreditDeposit,
    ExchangeCommand,
    IndexFix,
    PlaceOrder,
    SetCapacity,
)
from engine.exchange import Exchange
from engine.instruments import Instrument
from engine.market import Market
from engine.messages import OrderType, Side, TimeInForce

NS: Final = 1_000_000_000
MICRO: Final = 1_000_000
BP: Final = 10_000

DEMO_DEPOSIT_BASE: Final = 1 << 60
"""Deposit ids ``DEMO_DEPOSIT_BASE + i`` fund demo account ``i``."""
FUNDING: Final = 1_000_000 * MICRO
"""What each demo account is credited: 1,000,000 USDC."""
CAPACITY: Final = 100_000
"""Units (GPUs, kW) of each underlying every demo account may sell per delivery window."""
RESERVE: Final = 100_000 * MICRO
"""Free collateral an account keeps: below it, it sends no order that could need more."""

MAKERS: Final = 6
"""Accounts ``0..MAKERS-1`` make markets; the rest take."""
MAKERS_PER_INSTRUMENT: Final = 3
LEVELS: Final = 5
"""Orders per side in each maker's ladder."""
FUTURE_MONTHS: Final = 3
"""Futures months quoted per underlying, nearest first."""
QUOTE_CUTOFF_NS: Final = 3600 * NS
"""Futures stop being quoted this long before their last trade."""
SPOT_LEVEL_NOTIONAL: Final = 100 * MICRO
FUTURE_LEVEL_NOTIONAL: Final = 30_000 * MICRO
"""The largest order a maker shows on a level, by notional at the reference price."""
TAKER_LIMIT_LEVELS: Final = 8
MAKER_LIMIT_LEVELS: Final = 20
"""Futures positions, in largest orders, past which takers only reduce and makers stop
adding."""

REFRESHES_PER_STEP: Final = 2
RESIZE_PERCENT: Final = 50
"""The chance, in percent, that a refresh with nothing to move shows a new size on a level."""
TAKE_PERCENT: Final = 25
"""The chance, in percent, that a step sends a taker order."""
MARKET_ORDER_PERCENT: Final = 20
"""The share, in percent, of taker orders sent as market orders."""
CUT_EVERY_NS: Final = 60 * NS

MOVE_PERCENT: Final = 10
"""The chance, in percent, that a fair value moves in a step."""
WALK_BP: Final = 3
"""The fair value's move, in basis points of the reference."""
REVERSION: Final = 800
"""A move pulls the fair value back by 1/REVERSION of its distance from the reference."""
MAX_DEVIATION_BP: Final = 600
BASIS_BP_PER_MONTH: Final = {"GPU.H100": -40, "GPU.H200": -20, "GPU.B200": 30, "RACK.KW": 50}
"""Each futures month's premium over spot: older GPUs get cheaper ahead, newer and power
dearer. Underlyings not named here have none."""

Submit = Callable[[ExchangeCommand], object]


def micro_per_unit(instrument: Instrument, ticks: int) -> int:
    """A price in ticks as micro-USDC per unit of the instrument's quote."""
    scale: int = 10**instrument.price_precision
    return ticks * instrument.tick_units * MICRO // scale


def utc_day(ts: int) -> int:
    """The UTC calendar day of ``ts`` (ns) as YYYYMMDD, as index fixes name days."""
    day = datetime.fromtimestamp(ts // NS, UTC)
    return day.year * 10_000 + day.month * 100 + day.day


class FairValue:
    """One underlying's fair value: a mean-reverting integer random walk."""

    def __init__(self, reference: int, spot_units: int, basis_bp: int, start: int) -> None:
        self.reference = reference
        """Micro-USDC per unit of the futures' quote."""
        self.spot_units = spot_units
        """Spot quote units in one futures quote unit (1, or 30 kW-days per kW-month)."""
        self.basis_bp = basis_bp
        self.value = start

    def walk(self, rng: random.Random) -> None:
        """One step: perhaps up or down by `WALK_BP`, pulled back towards the reference,
        bounded."""
        if rng.randrange(100) >= MOVE_PERCENT:
            return
        step = self.reference * WALK_BP // BP
        value = self.value + rng.choice((-step, step)) - (self.value - self.reference) // \
            REVERSION
        bound = self.reference * MAX_DEVIATION_BP // BP
        self.value = min(max(value, self.reference - bound), self.reference + bound)

    def ticks(self, market: Market, months_ahead: int) -> int:
        """The fair price of ``market`` in its ticks (``months_ahead`` 0 for spot)."""
        if market.spot:
            return market.to_ticks(self.value, self.spot_units)
        return market.to_ticks(self.value * (BP + self.basis_bp * months_ahead), BP)


class Quote:
    """A demo order the maker placed: its side and the price it last set."""

    __slots__ = ("price", "side")

    def __init__(self, side: Side, price: int) -> None:
        self.side = side
        self.price = price


class DemoMarket:
    """Simulated makers, takers and operator on ``accounts`` of ``exchange``."""

    def __init__(self, exchange: Exchange, submit: Submit, rng: random.Random,
                 accounts: Sequence[str]) -> None:
        if len(accounts) <= MAKERS:
            raise ValueError(f"the demo needs more than {MAKERS} accounts")
        self.exchange = exchange
        self._submit = submit
        self.rng = rng
        self.accounts = list(accounts)
        self.sent: Counter[str] = Counter()
        """Commands sent, by command type."""
        self.fair = self._fair_values()
        self.quotes: dict[tuple[str, str], dict[int, Quote]] = {}
        self._last_fair: dict[tuple[str, str], int] = {}
        self._next_cut = 0

    def _fair_values(self) -> dict[str, FairValue]:
        markets = self.exchange.markets.values()
        spots = {m.instrument.underlying: m.instrument for m in markets if m.spot}
        futures = {m.instrument.underlying: m.instrument for m in markets if not m.spot}
        fair: dict[str, FairValue] = {}
        for underlying in sorted(spots):
            spot = spots[underlying]
            spot_reference = micro_per_unit(spot, spot.reference_price_ticks)
            future = futures.get(underlying)
            reference = spot_reference if future is None else \
                micro_per_unit(future, future.reference_price_ticks)
            fixes = [(day, p) for (u, day), p in self.exchange.fixes.items() if u == underlying]
            start = max(fixes)[1] if fixes else reference  # a restart carries on from the fix
            bound = reference * MAX_DEVIATION_BP // BP
            fair[underlying] = FairValue(reference, max(1, reference // spot_reference),
                                         BASIS_BP_PER_MONTH.get(underlying, 0),
                                         min(max(start, reference - bound), reference + bound))
        return fair

    def submit(self, command: ExchangeCommand) -> None:
        """Send one command and count it."""
        self.sent[type(command).__name__] += 1
        self._submit(command)

    # --- opening --------------------------------------------------------------------------

    def open(self, now: int, *, fund: bool = True) -> list[str]:
        """Fund (unless ``fund`` is false) and enable the accounts that need it, cancel their
        leftovers, fix today's index and put up every maker's ladder; returns the accounts
        funded now (none on a restart)."""
        ex = self.exchange
        funded = []
        for i, account in enumerate(self.accounts):
            if fund and DEMO_DEPOSIT_BASE + i not in ex.deposits_seen:
                self.submit(CreditDeposit(DEMO_DEPOSIT_BASE + i, account, FUNDING))
                funded.append(account)
            for underlying in self.fair:
                if ex.capacity.get((account, underlying), 0) < CAPACITY:
                    self.submit(SetCapacity(account, underlying, CAPACITY))
        owners = {order.account for order in ex.orders.values()}
        for account in self.accounts:
            if account in owners:
                self.submit(CancelAll(account))
        self._operate(now)
        for market, months_ahead in self.quoted(now):
            for account in self._makers(market):
                self.refresh(account, market, months_ahead)
        return funded

    # --- every step -----------------------------------------------------------------------

    def step(self, now: int) -> None:
        """Advance the simulation to ``now`` (ns): operator duties, fair values, a few maker
        refreshes and perhaps a taker order."""
        self._operate(now)
        rng = self.rng
        for fair in self.fair.values():
            fair.walk(rng)
        quoted = self.quoted(now)
        if not quoted:
            return
        for _ in range(REFRESHES_PER_STEP):
            market, months_ahead = self._pick(quoted)
            self.refresh(self._makers(market)[rng.randrange(MAKERS_PER_INSTRUMENT)], market,
                         months_ahead)
        if rng.randrange(100) < TAKE_PERCENT:
            market, _ = self._pick(quoted)
            self.take(self.accounts[rng.randrange(MAKERS, len(self.accounts))], market)
        self._cancel_unquoted({m.symbol for m, _ in quoted})

    def _pick(self, quoted: list[tuple[Market, int]]) -> tuple[Market, int]:
        """A quoted instrument: spot half the time, the instruments a newcomer looks at
        first."""
        spot = self.rng.randrange(2) == 0
        return self.rng.choice([q for q in quoted if q[0].spot == spot] or quoted)

    def _operate(self, now: int) -> None:
        ex = self.exchange
        day = utc_day(max(now, ex.last_ts))
        for underlying, fair in self.fair.items():
            if (underlying, day) not in ex.fixes:
                self.submit(IndexFix(underlying, day, fair.value))
        if now >= self._next_cut:
            self._next_cut = now + CUT_EVERY_NS
            self.submit(ClearingCut())

    def quoted(self, now: int) -> list[tuple[Market, int]]:
        """The instruments quoted now, each with how many months ahead it is (0 for spot):
        every spot instrument and the nearest `FUTURE_MONTHS` futures still trading."""
        quoted: list[tuple[Market, int]] = []
        futures: dict[str, list[Market]] = {}
        for symbol in sorted(self.exchange.markets):
            market = self.exchange.markets[symbol]
            if market.instrument.underlying not in self.fair or market.halted:
                continue
            if market.spot:
                quoted.append((market, 0))
            elif market.last_trade_ns - QUOTE_CUTOFF_NS > now:
                futures.setdefault(market.instrument.underlying, []).append(market)
        for months in futures.values():
            months.sort(key=lambda m: m.last_trade_ns)
            quoted.extend((m, ahead) for ahead, m in enumerate(months[:FUTURE_MONTHS], 1))
        return quoted

    def _makers(self, market: Market) -> list[str]:
        first = market.instrument.instrument_id % MAKERS
        spacing = MAKERS // MAKERS_PER_INSTRUMENT
        return [self.accounts[(first + k * spacing) % MAKERS]
                for k in range(MAKERS_PER_INSTRUMENT)]

    # --- makers ---------------------------------------------------------------------------

    def _live_quotes(self, account: str, symbol: str) -> dict[int, Quote]:
        """The maker's demo orders on ``symbol`` still open, forgetting those that are not."""
        quotes = self.quotes.setdefault((account, symbol), {})
        orders = self.exchange.orders
        for order_id in [i for i in quotes if i not in orders]:
            del quotes[order_id]
        return quotes

    def ladder(self, account: str, market: Market, fair: int) -> dict[Side, list[int]]:
        """The prices ``account`` wants to show on ``market`` around ``fair`` (ticks), best
        first per side."""
        maker = self.accounts.index(account)
        half_spread = max(1, fair * (10 + 5 * (maker % 3)) // BP)
        step = max(1, fair * (8 + 4 * (maker % 2)) // BP)
        anchor = (fair + step // 2) // step * step
        size = max_lots(market)
        position = market.positions.get(account)
        held = position.qty if position is not None else 0
        lean = min(max(-held * step // (2 * size), -half_spread), half_spread)
        prices: dict[Side, list[int]] = {}
        for side, sign in ((Side.BUY, -1), (Side.SELL, 1)):
            if sign * held <= -MAKER_LIMIT_LEVELS * size:
                prices[side] = []  # long enough to stop buying (short: selling)
                continue
            levels = [anchor + lean + sign * (half_spread + k * step) for k in range(LEVELS)]
            prices[side] = [p for p in levels if market.min_price <= p <= market.max_price]
        return prices

    def refresh(self, account: str, market: Market, months_ahead: int) -> None:
        """Bring ``account``'s orders on ``market`` to its ladder with the fewest commands;
        if that takes none, now and then show another size on one level."""
        self._fit_sells(account, market)
        fair = self.fair[market.instrument.underlying].ticks(market, months_ahead)
        prices = self.ladder(account, market, fair)
        key = (account, market.symbol)
        rising = fair >= self._last_fair.get(key, 0)
        self._last_fair[key] = fair
        # move the side that goes away from the other first, so no order crosses its own
        sent = sum(self.sent.values())
        for side in (Side.SELL, Side.BUY) if rising else (Side.BUY, Side.SELL):
            self._refresh_side(account, market, side, prices[side])
        quotes = self._live_quotes(account, market.symbol)
        if sum(self.sent.values()) == sent and quotes and \
                self.rng.randrange(100) < RESIZE_PERCENT:
            order_id = self.rng.choice(sorted(quotes))
            quote = quotes[order_id]
            qty = self._size(max_lots(market))
            if self._can_add(account, market, quote.side,
                             qty - self.exchange.orders[order_id].remaining):
                self.submit(AmendOrder(account, market.symbol, order_id, quote.price, qty))

    def _refresh_side(self, account: str, market: Market, side: Side,
                      prices: list[int]) -> None:
        quotes = self._live_quotes(account, market.symbol)
        wanted = dict.fromkeys(prices)
        stale: list[int] = []
        for order_id, quote in sorted(quotes.items()):
            if quote.side != side:
                continue
            if quote.price in wanted:
                del wanted[quote.price]
            else:
                stale.append(order_id)
        size = max_lots(market)
        for price in wanted:
            qty = self._size(size)
            if stale:
                order_id = stale.pop()
                remaining = self.exchange.orders[order_id].remaining
                if not self._can_add(account, market, side, qty - remaining):
                    continue
                self.submit(AmendOrder(account, market.symbol, order_id, price, qty))
                if order_id in self.exchange.orders:
                    quotes[order_id].price = price
            elif self._can_add(account, market, side, qty):
                order_id = self.exchange.next_order_id
                self.submit(PlaceOrder(account, market.symbol, side, qty, price))
                if order_id in self.exchange.orders:
                    quotes[order_id] = Quote(side, price)
        for order_id in stale:
            self.submit(CancelOrder(account, market.symbol, order_id))
            del quotes[order_id]

    def _size(self, largest: int) -> int:
        """A level's size: mostly small, now and then the largest."""
        return 1 + min(self.rng.randrange(largest), self.rng.randrange(largest))

    def _can_add(self, account: str, market: Market, side: Side, lots: int) -> bool:
        """Whether ``account`` may add ``lots`` on ``side`` without a refusal: collateral
        above the reserve, and for a spot sell room left (`Exchange.spot_room`)."""
        if lots <= 0:
            return True
        ex = self.exchange
        if ex.free_collateral(account) < RESERVE:
            return False
        if not market.spot or side == Side.BUY:
            return True
        return lots <= self.exchange.spot_room(account, market)

    def _fit_sells(self, account: str, market: Market) -> None:
        """A provider selling from nodes cancels its highest spot asks until its open sells
        fit in their free units again."""
        if not market.spot or \
                not self.exchange.uptime.has_nodes(account, market.instrument.underlying):
            return
        excess = -self.exchange.spot_room(account, market)
        quotes = self._live_quotes(account, market.symbol)
        asks = sorted(((q.price, i) for i, q in quotes.items() if q.side == Side.SELL),
                      reverse=True)
        for _, order_id in asks:
            if excess <= 0:
                break
            excess -= self.exchange.orders[order_id].remaining
            self.submit(CancelOrder(account, market.symbol, order_id))
            del quotes[order_id]

    def _cancel_unquoted(self, quoted: set[str]) -> None:
        for (account, symbol), quotes in self.quotes.items():
            if symbol not in quoted:
                for order_id in sorted(self._live_quotes(account, symbol)):
                    self.submit(CancelOrder(account, symbol, order_id))
                quotes.clear()

    # --- takers ---------------------------------------------------------------------------

    def take(self, account: str, market: Market) -> None:
        """Send one IOC order from ``account`` that trades against the best quote."""
        rng = self.rng
        size = max_lots(market)
        position = market.positions.get(account)
        held = position.qty if position is not None else 0
        limit = TAKER_LIMIT_LEVELS * size
        side = Side.SELL if held >= limit else Side.BUY if held <= -limit else \
            rng.choice((Side.BUY, Side.SELL))
        book = market.book
        best = book.best_ask() if side == Side.BUY else book.best_bid()
        qty = self._size(size)
        if best is None or not self._can_add(account, market, side, qty):
            return
        if rng.randrange(100) < MARKET_ORDER_PERCENT:
            self.submit(PlaceOrder(account, market.symbol, side, qty,
                                   order_type=OrderType.MARKET, tif=TimeInForce.IOC))
            return
        reach = rng.randrange(3) * max(1, best * 5 // BP)
        price = best + reach if side == Side.BUY else best - reach
        price = min(max(price, market.min_price), market.max_price)
        self.submit(PlaceOrder(account, market.symbol, side, qty, price, tif=TimeInForce.IOC))


def max_lots(market: Market) -> int:
    """The largest order a demo account sends on ``market``: `SPOT_LEVEL_NOTIONAL` or
    `FUTURE_LEVEL_NOTIONAL` at the reference price, at least one lot."""
    notional = SPOT_LEVEL_NOTIONAL if market.spot else FUTURE_LEVEL_NOTIONAL
    lot = market.instrument.reference_price_ticks * market.tick_value
    return max(1, notional // lot)

