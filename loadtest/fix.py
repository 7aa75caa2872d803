"""`cmx loadtest fix`: FIX order entry at a fixed rate, open loop.

N FIX sessions (`gateway.fix_client.FixClient`), each logged on as its own account, share an
aggregate rate R exactly as `loadtest.ws` schedules its clients: slot k is due at
``start + k/R`` and belongs to session ``k mod N``. In its slot a session sends a
NewOrderSingle D around the reference price (one in twenty crosses as an IOC) or, when it has
more than ``max_live`` resting, an OrderCancelRequest F for its oldest. A slot's latency runs
from when it was *due* to the first answer naming its ClOrdID: an ExecutionReport (New,
Rejected, Canceled) or an OrderCancelReject. Refusals count as ``errors``; what has no answer
after the drain is ``lost``, and so is what a generator that fell more than the drain behind
its schedule never sent (``unsent``). The generator runs in processes of its own (``procs``),
separate from the server's; the spawned server is `loadtest.ws_server` with its FIX acceptor.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.fix_client import TERMINAL_STATUSES, FixClient
from gateway.fix_codec import FixMessage
from gateway.fix_session import SessionConfig
from loadtest.report import Latencies, order_entry_text, plot, write_json
from loadtest.ws import CROSSING_SHARE, Begin, price_ladder, run_workers, summarize
from loadtest.ws_server import SpawnedServer, load_key


@dataclass(frozen=True)
class FixJob:
    """One worker's share of a FIX order entry run."""

    host: str
    port: int
    keys: list[str]
    session_numbers: list[int]
    """Each session's number k in 0..sessions-1: it owns the slots ``k mod sessions``."""
    sessions: int
    rate: float
    duration_s: float
    drain_s: float
    symbol: str
    bid_prices: list[str]
    ask_prices: list[str]
    cross_buy: str
    cross_sell: str
    max_live: int
    seed: int


class _Stats:
    def __init__(self) -> None:
        self.latencies = Latencies()
        self.sent: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.last_ack_ns = 0


class _Trader:
    """One load session: its client, resting orders and requests awaiting an answer."""

    def __init__(self, job: FixJob, stats: _Stats, number: int, key: str) -> None:
        self.job = job
        self.stats = stats
        self.rng = random.Random(job.seed * 1_000_003 + number)
        # a fresh session each run (141=Y): the numbers of an earlier run do not matter
        self.client = FixClient(job.host, job.port, key, sender_comp_id=f"LOAD{number}",
                                on_message=self.on_message,
                                config=SessionConfig(heartbeat_s=10, reset_on_logon=True))
        self.live: deque[str] = deque()
        self.pending: dict[str, tuple[int, str]] = {}  # ClOrdID -> (due ns, op)

    def act(self, due_ns: int) -> None:
        """This session's slot: place, or cancel the oldest resting order."""
        job, rng, client = self.job, self.rng, self.client
        if len(self.live) > job.max_live:
            cl_ord_id = client.cancel(self.live.popleft())
            op = "cancel"
        else:
            buy = rng.random() < 0.5
            qty = str(rng.randrange(1, 11))
            if rng.random() < CROSSING_SHARE:
                cl_ord_id = client.new_order(job.symbol, "buy" if buy else "sell", qty,
                                             job.cross_buy if buy else job.cross_sell,
                                             tif="ioc")
            else:
                cl_ord_id = client.new_order(
                    job.symbol, "buy" if buy else "sell", qty,
                    rng.choice(job.bid_prices if buy else job.ask_prices))
            op = "place"
        self.pending[cl_ord_id] = (due_ns, op)
        self.stats.sent[op] += 1

    def on_message(self, message: FixMessage) -> None:
        """An answer: record the latency of the request it names; follow resting orders."""
        kind = message.msg_type
        cl_ord_id = message.get(11) or ""
        status = message.get(39)
        if kind == "8" and status in TERMINAL_STATUSES:
            for name in (cl_ord_id, message.get(41) or ""):
                if name in self.live:
                    self.live.remove(name)
        answered = self.pending.pop(cl_ord_id, None)
        if answered is None:
            return
        due_ns, op = answered
        stats = self.stats
        now = time.monotonic_ns()
        stats.latencies.record_ns(now - due_ns)
        stats.last_ack_ns = now
        if kind == "9":
            stats.errors["cancel_rejected"] += 1
        elif kind != "8":
            stats.errors[f"msg_type_{kind}"] += 1
        elif message.get(150) == "8":
            stats.errors["order_rejected"] += 1
        elif op == "place" and status in ("0", "1"):
            self.live.append(cl_ord_id)  # an IOC leaves again with its terminal report


async def fix_worker(job: FixJob, begin: Begin) -> dict[str, Any]:
    """A worker process's part of a FIX run (see the module docstring)."""
    stats = _Stats()
    traders = [_Trader(job, stats, n, key)
               for n, key in zip(job.session_numbers, job.keys, strict=True)]
    for trader in traders:
        await trader.client.start()
    start_ns = await begin()
    unsent = await _schedule(job, traders, start_ns)
    sent_until = time.monotonic_ns()
    deadline = sent_until + int(job.drain_s * 1e9)
    while any(t.pending for t in traders) and time.monotonic_ns() < deadline:
        await asyncio.sleep(0.01)
    dropped = Counter(t.client.last_disconnect for t in traders if t.client.logons > 1)
    for trader in traders:
        await trader.client.close()
    return {"sent": dict(stats.sent), "acked": stats.latencies.count,
            "errors": dict(stats.errors), "closed_by_server": dict(dropped),
            "unsent": unsent, "start_ns": start_ns, "sent_until_ns": sent_until,
            "last_ack_ns": stats.last_ack_ns, "histogram": stats.latencies.encode()}


async def _schedule(job: FixJob, traders: list[_Trader], start_ns: int) -> int:
    """Act in every slot of this worker's sessions at its due time; a late slot is sent at
    once (its latency still counts from when it was due). A generator that cannot keep up
    gives up ``drain_s`` after the schedule's end; returns how many slots it left unsent."""
    interval_ns = 1e9 / job.rate
    total = int(job.rate * job.duration_s)
    give_up = start_ns + int((job.duration_s + job.drain_s) * 1e9)
    mine = sorted(zip(job.session_numbers, traders, strict=True), key=lambda pair: pair[0])
    slot_round = 0
    while True:
        base = slot_round * job.sessions
        if base >= total:
            return 0
        for number, trader in mine:
            slot = base + number
            if slot >= total:
                return 0
            due = start_ns + int(slot * interval_ns)
            now = time.monotonic_ns()
            if now > give_up:
                return sum(1 for later in range(slot, total)
                           if later % job.sessions in job.session_numbers)
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
            trader.act(due)
        slot_round += 1
        if slot_round % 64 == 0:
            await asyncio.sleep(0)  # let answers in even when the schedule is behind


def run_fix(host: str, port: int, keys: Sequence[str], *, rate: float, duration_s: float,
            sessions: int, procs: int, symbol: str, max_live: int, drain_s: float,
            seed: int = 1) -> dict[str, Any]:
    """One FIX run at ``rate`` orders/s; returns its figures (see `loadtest.ws.summarize`)."""
    ladder = price_ladder(symbol, 100)
    numbers = list(range(sessions))
    jobs = [(fix_worker, FixJob(
        host, port, [keys[n % len(keys)] for n in numbers[w::procs]], numbers[w::procs],
        sessions, rate, duration_s, drain_s, symbol, max_live=max_live, seed=seed, **ladder))
        for w in range(min(procs, sessions))]
    outcomes = run_workers(jobs, 2 * (duration_s + drain_s))
    figures = summarize(outcomes, rate=rate, duration=duration_s, sessions=sessions,
                        procs=len(jobs))
    figures["unsent"] = sum(outcome["unsent"] for outcome in outcomes)
    figures["lost"] += figures["unsent"]  # due and never answered, like the unanswered
    return figures


def describe(figures: dict[str, Any]) -> str:
    """One human line for a run."""
    return (f"rate {figures['rate']:,.0f}/s x {figures['duration']}s, {figures['sessions']} "
            f"FIX sessions: sent {figures['sent']:,} (unsent {figures['unsent']:,}) acked "
            f"{figures['acked']:,} lost {figures['lost']:,} errors {figures['errors']} reconnects "
            f"{sum(figures['connections_closed_by_server'].values())}; "
            + order_entry_text(figures))


def main_fix(address: str | None, rates: Sequence[float], *, duration_s: float, sessions: int,
             procs: int, symbol: str, max_live: int, drain_s: float, json_path: str | None,
             plot_path: str | None, store_fsync: bool = False) -> int:
    """``cmx loadtest fix``: one run per rate against a fresh spawned server each (its FIX
    session stores fsynced at each commit only with ``store_fsync``), or the acceptor at
    ``address`` (HOST:PORT, whose load accounts must be funded); prints a line per run,
    writes JSON and the plot. Exits 1 if any order was lost."""
    runs: list[dict[str, Any]] = []
    keys = [load_key(i) for i in range(sessions)]
    for rate in rates:
        if address is None:
            with tempfile.TemporaryDirectory(prefix="cmx-loadtest-fix-") as data_dir, \
                    SpawnedServer(Path(data_dir), sessions, fix=True,
                                  fix_store_fsync=store_fsync) as server:
                figures = run_fix("127.0.0.1", server.fix_port, keys, rate=rate,
                                  duration_s=duration_s, sessions=sessions, procs=procs,
                                  symbol=symbol, max_live=max_live, drain_s=drain_s)
                figures["server_peak_rss_mb"] = round(server.peak_rss_mb(), 1)
                figures["store_fsync"] = store_fsync
        else:
            host, _, port = address.rpartition(":")
            figures = run_fix(host or "127.0.0.1", int(port), keys, rate=rate,
                              duration_s=duration_s, sessions=sessions, procs=procs,
                              symbol=symbol, max_live=max_live, drain_s=drain_s)
        print(describe(figures), flush=True)
        runs.append(figures)
    curves = [(f"{run['rate']:,.0f}/s", run.pop("latencies")) for run in runs]
    if json_path is not None:
        write_json(json_path, runs[0] if len(runs) == 1 else runs)
    if plot_path is not None:
        plot(plot_path, f"FIX order entry ack latency, {sessions} sessions", curves, runs,
             rate_key="orders_per_s", target_ms=5.0)
    return 1 if any(run["lost"] for run in runs) else 0
