"""`cmx loadtest ws`: websocket order entry at a fixed rate, open loop.

N client connections, each logged in as its own account, share an aggregate rate R: slot k of
the run is due at ``start + k/R`` and belongs to client ``k mod N``. In its slot a client
places a limit order around the reference price (most rest a few ticks off the touch, one in
twenty crosses as an IOC) or, when it has more than ``max_live`` resting, cancels its oldest,
so the book stays bounded. Every client order id is fresh. A slot's latency runs from when it
was *due* (not when it was sent) to its reply (an ``order`` or an ``error``), so a generator
or server that falls behind shows as latency instead of a lower rate (no coordinated
omission). Latencies go to HDR histograms in microseconds; after the schedule the run waits
``drain`` seconds for the last replies, and whatever is unanswered then is ``lost``.

The generator runs in worker processes of its own (``procs``), separate from the server's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import tempfile
import time
import traceback
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from queue import Empty
from typing import Any, TypeVar

from engine.instruments import Instrument, utc_today
from engine.registry import Registry
from gateway import api
from gateway.client import TraderClient
from loadtest.report import Latencies, order_entry_text, plot, write_json
from loadtest.ws_server import SpawnedServer, load_key

CROSSING_SHARE = 0.05
START_DELAY_NS = 500_000_000
SETUP_TIMEOUT_S = 300.0

_T = TypeVar("_T")
Begin = Callable[[], Awaitable[int]]
"""Report this worker ready, wait for the common start, return it (monotonic ns)."""


def dev_keys() -> list[str]:
    """The keys of the development mnemonic's accounts (the ones ``cmx serve --demo``
    funds); development only."""
    from engine.keys import dev_keys as derive  # noqa: PLC0415 (eth-account: --url runs only)

    return [key for _, key in derive()]


# --- worker processes -------------------------------------------------------------------------


Body = Callable[[Any, Begin], Coroutine[Any, Any, dict[str, Any]]]
"""A worker process's run: given its job and `Begin`, its figures."""


def _worker_main(body: Body, job: Any, index: int,
                 ready: Queue[str | None], go: Event, start: Synchronized[int],
                 results: Queue[tuple[int, dict[str, Any]]]) -> None:
    async def begin() -> int:
        ready.put(None)
        await asyncio.to_thread(go.wait)
        return int(start.value)

    try:
        results.put((index, asyncio.run(body(job, begin))))
    except BaseException:
        failure = traceback.format_exc()
        ready.put(failure)
        results.put((index, {"error": failure}))


def run_workers(jobs: Sequence[tuple[Body, Any]], timeout_s: float) -> list[dict[str, Any]]:
    """Run each (body, job) in a process of its own; once all are ready (connected, logged
    in, subscribed), start them together and return their results in order."""
    context = multiprocessing.get_context("spawn")
    ready: Queue[str | None] = context.Queue()
    results: Queue[tuple[int, dict[str, Any]]] = context.Queue()
    go = context.Event()
    start: Synchronized[int] = context.Value("q", 0)
    processes = [context.Process(target=_worker_main,
                                 args=(body, job, index, ready, go, start, results))
                 for index, (body, job) in enumerate(jobs)]
    for process in processes:
        process.start()
    try:
        for _ in processes:
            failure = _next(ready, processes, SETUP_TIMEOUT_S)
            if failure is not None:
                raise RuntimeError(f"load test worker failed:\n{failure}")
        start.value = time.monotonic_ns() + START_DELAY_NS
        go.set()
        outcomes = [outcome for _, outcome in sorted(
            _next(results, processes, timeout_s + SETUP_TIMEOUT_S) for _ in processes)]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    errors = [o["error"] for o in outcomes if "error" in o]
    if errors:
        raise RuntimeError("load test worker failed:\n" + "\n".join(errors))
    return outcomes


def _next(queue: Queue[_T], processes: Sequence[BaseProcess], timeout_s: float) -> _T:
    """The next item of ``queue``; fails if a worker died without reporting or time ran
    out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=0.5)
        except Empty:
            dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"load test worker exited with {dead[0]}") from None
    raise TimeoutError("load test workers did not answer in time")


# --- order entry --------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderJob:
    """One worker's share of an order entry run."""

    url: str
    keys: list[str]
    """Private keys of this worker's clients, one connection each."""
    client_numbers: list[int]
    """Each client's number k in 0..clients-1: it owns the slots ``k mod clients``."""
    clients: int
    rate: float
    duration_s: float
    drain_s: float
    symbol: str
    bid_prices: list[str]
    """Resting buy prices (below the reference); asks likewise above it."""
    ask_prices: list[str]
    cross_buy: str
    cross_sell: str
    max_live: int
    seed: int


def price_ladder(symbol: str, spread_ticks: int) -> dict[str, Any]:
    """The price texts an order job uses: ``spread_ticks`` levels each side of the reference
    (kept inside the price band), and IOC prices that cross them."""
    spec: Instrument = Registry.load(listing_date=utc_today()).get(symbol)
    reference = spec.reference_price_ticks
    low, high = spec.price_band()
    spread = max(1, min(spread_ticks, reference - low - 1, high - reference - 1))
    return {
        "bid_prices": [spec.ticks_to_price(reference - i) for i in range(1, spread + 1)],
        "ask_prices": [spec.ticks_to_price(reference + i) for i in range(1, spread + 1)],
        "cross_buy": spec.ticks_to_price(reference + spread),
        "cross_sell": spec.ticks_to_price(reference - spread),
    }


class _Trader:
    """One load client: its connection, resting orders and requests awaiting a reply."""

    def __init__(self, job: OrderJob, stats: _Stats, number: int) -> None:
        self.job = job
        self.stats = stats
        self.rng = random.Random(job.seed * 1_000_003 + number)
        self.client = TraderClient(on_message=lambda _: None, on_ack=self.on_ack)
        self.live: deque[str] = deque()
        self.pending: dict[int, tuple[int, str, str]] = {}  # id -> (due ns, op, cl_ord_id)

    def act(self, due_ns: int) -> None:
        """This client's slot: place, or cancel the oldest resting order."""
        job, rng = self.job, self.rng
        if len(self.live) > job.max_live:
            cl_ord_id = self.live.popleft()
            request: dict[str, Any] = {"op": "cancel", "cl_ord_id": cl_ord_id}
            op = "cancel"
        else:
            cl_ord_id = self.client.next_cl_ord_id()
            buy = rng.random() < 0.5
            request = {"op": "place", "symbol": job.symbol, "side": "buy" if buy else "sell",
                       "qty": str(rng.randrange(1, 11)), "cl_ord_id": cl_ord_id}
            if rng.random() < CROSSING_SHARE:
                request["price"] = job.cross_buy if buy else job.cross_sell
                request["tif"] = "ioc"
            else:
                request["price"] = rng.choice(job.bid_prices if buy else job.ask_prices)
            op = "place"
        self.pending[self.client.send_nowait(request)] = (due_ns, op, cl_ord_id)
        self.stats.sent[op] += 1

    def on_ack(self, request_id: int, reply: Any) -> None:
        """A reply: record its latency from the slot's due time."""
        due_ns, op, cl_ord_id = self.pending.pop(request_id)
        stats = self.stats
        now = time.monotonic_ns()
        stats.latencies.record_ns(now - due_ns)
        stats.last_ack_ns = now
        if isinstance(reply, api.Error):
            stats.errors[reply.code] += 1
        elif op == "place" and reply.order is not None and \
                reply.order.status in ("new", "partially_filled"):
            self.live.append(cl_ord_id)


class _Stats:
    def __init__(self) -> None:
        self.latencies = Latencies()
        self.sent: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.last_ack_ns = 0


async def order_worker(job: OrderJob, begin: Begin) -> dict[str, Any]:
    """A worker process's part of an order entry run (see the module docstring)."""
    stats = _Stats()
    traders = [_Trader(job, stats, n) for n in job.client_numbers]
    for trader, key in zip(traders, job.keys, strict=True):
        await trader.client.connect(job.url)
        await trader.client.login(key)
    start_ns = await begin()
    await _schedule(job, traders, start_ns)
    sent_until = time.monotonic_ns()
    deadline = sent_until + int(job.drain_s * 1e9)
    while any(t.pending and t.client.close_status is None for t in traders) and \
            time.monotonic_ns() < deadline:
        await asyncio.sleep(0.01)
    closed = Counter(f"{t.client.close_status[0]} {t.client.close_status[1]}".strip()
                     for t in traders if t.client.close_status is not None)
    for trader in traders:
        await trader.client.close()
    return {"sent": dict(stats.sent), "acked": stats.latencies.count,
            "errors": dict(stats.errors), "closed_by_server": dict(closed),
            "start_ns": start_ns, "sent_until_ns": sent_until,
            "last_ack_ns": stats.last_ack_ns, "histogram": stats.latencies.encode()}


async def _schedule(job: OrderJob, traders: list[_Trader], start_ns: int) -> None:
    """Act in every slot of this worker's clients at its due time; a late slot is sent at
    once (and its latency still counts from when it was due)."""
    interval_ns = 1e9 / job.rate
    total = int(job.rate * job.duration_s)
    mine = sorted(zip(job.client_numbers, traders, strict=True), key=lambda pair: pair[0])
    slot_round = 0
    while True:
        base = slot_round * job.clients
        if base >= total:
            return
        for number, trader in mine:
            slot = base + number
            if slot >= total:
                return
            due = start_ns + int(slot * interval_ns)
            delay = due - time.monotonic_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            trader.act(due)
        slot_round += 1
        if slot_round % 64 == 0:
            await asyncio.sleep(0)  # let replies in even when the schedule is behind


def run_orders(url: str, keys: Sequence[str], *, rate: float, duration_s: float, clients: int,
               procs: int, symbol: str, max_live: int, drain_s: float,
               seed: int = 1) -> dict[str, Any]:
    """One order entry run at ``rate`` orders/s; returns its figures (see `summarize`)."""
    ladder = price_ladder(symbol, 100)
    numbers = list(range(clients))
    jobs = [(order_worker, OrderJob(
        url, [keys[n % len(keys)] for n in numbers[w::procs]], numbers[w::procs], clients,
        rate, duration_s, drain_s, symbol, max_live=max_live, seed=seed, **ladder))
        for w in range(min(procs, clients))]
    outcomes = run_workers(jobs, duration_s + drain_s)
    return summarize(outcomes, rate=rate, duration=duration_s, clients=clients,
                     procs=len(jobs))


def summarize(outcomes: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """Merge the workers' figures: counts, achieved rate and latency percentiles."""
    latencies = Latencies()
    sent: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    closed: Counter[str] = Counter()
    for outcome in outcomes:
        latencies.add(Latencies(outcome["histogram"]))
        sent.update(outcome["sent"])
        errors.update(outcome["errors"])
        closed.update(outcome["closed_by_server"])
    start = min(o["start_ns"] for o in outcomes)
    sent_until = max(o["sent_until_ns"] for o in outcomes)
    last_ack = max(o["last_ack_ns"] for o in outcomes)
    total_sent = sum(sent.values())
    figures: dict[str, Any] = {
        **settings,
        "sent": total_sent, "acked": latencies.count, "lost": total_sent - latencies.count,
        "places": sent["place"], "cancels": sent["cancel"],
        "errors": sum(errors.values()), "error_codes": dict(errors),
        "connections_closed_by_server": dict(closed),
        "orders_per_s": round(latencies.count / max(1e-9, (last_ack - start) / 1e9)),
        "send_s": round((sent_until - start) / 1e9, 3),
        **latencies.summary(),
    }
    figures["latencies"] = latencies
    return figures


def describe(figures: dict[str, Any]) -> str:
    """One human line for a run."""
    return (f"rate {figures['rate']:,.0f}/s x {figures['duration']}s, {figures['clients']} "
            f"clients: sent {figures['sent']:,} acked {figures['acked']:,} lost "
            f"{figures['lost']} errors {figures['errors']} connections closed "
            f"{sum(figures['connections_closed_by_server'].values())}; "
            + order_entry_text(figures))


def main_ws(url: str | None, rates: Sequence[float], *, duration_s: float, clients: int,
            procs: int, symbol: str, max_live: int, drain_s: float, json_path: str | None,
            plot_path: str | None) -> int:
    """``cmx loadtest ws``: one run per rate, against a fresh spawned server each (or the
    server at ``url``); prints a line per run, writes JSON and the plot. Exits 1 if any
    order was lost."""
    runs: list[dict[str, Any]] = []
    for rate in rates:
        if url is None:
            with tempfile.TemporaryDirectory(prefix="cmx-loadtest-") as data_dir, \
                    SpawnedServer(Path(data_dir), clients) as server:
                figures = run_orders(server.url, [load_key(i) for i in range(clients)],
                                     rate=rate, duration_s=duration_s, clients=clients,
                                     procs=procs, symbol=symbol, max_live=max_live,
                                     drain_s=drain_s)
                figures["server_peak_rss_mb"] = round(server.peak_rss_mb(), 1)
        else:
            figures = run_orders(url, dev_keys(), rate=rate, duration_s=duration_s,
                                 clients=clients, procs=procs, symbol=symbol,
                                 max_live=max_live, drain_s=drain_s)
        print(describe(figures), flush=True)
        runs.append(figures)
    curves = [(f"{run['rate']:,.0f}/s", run.pop("latencies")) for run in runs]
    if json_path is not None:
        write_json(json_path, runs[0] if len(runs) == 1 else runs)
    if plot_path is not None:
        plot(plot_path, f"websocket order entry ack latency, {clients} clients", curves,
             runs, rate_key="orders_per_s", target_ms=5.0)
    return 1 if any(run["lost"] for run in runs) else 0
