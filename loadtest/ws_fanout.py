"""`cmx loadtest ws fanout`: many book subscribers, one stream of book changes.

Subscribers (spread over worker processes) follow one symbol at depth 10. ``verify`` of them
hold a `gateway.local_book.LocalBook`, checking every message's sequence and checksum; the
rest only check that ``seq`` continues (`TraderClient` with ``keep_books=False``), so that on
a small machine the subscribers' own work does not swamp what is measured, the server. A
driver (an order entry worker, open loop) places and cancels orders within ten ticks of the
reference price at a fixed rate, so nearly every command changes a visible level. The
delivery latency of a book update is its arrival time less its ``ts`` (the server's clock at
sequencing, same machine), in an HDR histogram. A subscriber that falls behind gets the
server's conflated snapshots instead of the updates it missed; those are counted, not timed.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway import api
from gateway.client import TraderClient
from loadtest.report import Latencies, plot, write_json
from loadtest.ws import Begin, OrderJob, order_worker, price_ladder, run_workers
from loadtest.ws_server import SpawnedServer, load_key

CONNECT_CONCURRENCY = 50
DRIVER_CLIENTS = 4
DRIVER_MAX_LIVE = 20
NEAR_TOUCH_TICKS = 10


class _Subscriber:
    """One subscriber connection and what it saw during the timed window."""

    def __init__(self, latencies: Latencies, window: list[int], verify: bool) -> None:
        self.latencies = latencies
        self.window = window  # [start ns, end ns] on the wall clock, set at the start
        self.client = TraderClient(on_message=self.on_message, keep_books=verify)
        self.messages = 0
        self.snapshots = 0
        self.first: tuple[int, int] | None = None  # (wall ns, seq) of the first timed update
        self.last: tuple[int, int] | None = None

    def on_message(self, message: Any) -> None:
        """Time each book update that arrives within the window."""
        if not isinstance(message, api.BookMessage):
            return
        now = time.time_ns()
        start, end = self.window
        if not start <= now <= end:
            return
        self.messages += 1
        if message.type == "snapshot":
            self.snapshots += 1
            return
        self.latencies.record_ns(now - int(message.ts))
        self.last = (now, message.seq)
        if self.first is None:
            self.first = self.last


async def subscriber_worker(job: dict[str, Any], begin: Begin) -> dict[str, Any]:
    """A worker process's subscribers: connect and subscribe all, then count and time what
    arrives during the run."""
    latencies = Latencies()
    window = [0, 0]
    subscribers = [_Subscriber(latencies, window, i < job["verify"])
                   for i in range(job["subscribers"])]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(subscriber: _Subscriber) -> None:
        async with gate:
            await subscriber.client.connect(job["url"])
            await subscriber.client.subscribe("book", [job["symbol"]], depth=10)

    await asyncio.gather(*(connect(s) for s in subscribers))
    start_mono = await begin()
    offset = time.time_ns() - time.monotonic_ns()
    window[0] = start_mono + offset
    window[1] = window[0] + int(job["duration_s"] * 1e9)
    await asyncio.sleep(max(0.0, (window[1] - time.time_ns()) / 1e9) + job["drain_s"])
    rates = [(s.last[1] - s.first[1]) / ((s.last[0] - s.first[0]) / 1e9)
             for s in subscribers if s.first and s.last and s.last[0] > s.first[0]]
    figures = {
        "messages": sum(s.messages for s in subscribers),
        "snapshots": sum(s.snapshots for s in subscribers),
        "checksum_failures": sum(s.client.checksum_failures for s in subscribers),
        "gaps": sum(s.client.gaps for s in subscribers),
        "resyncs": sum(s.client.resyncs for s in subscribers),
        "synced": sum(1 for s in subscribers if s.client.keep_books
                      and s.client.books[job["symbol"]].synced),
        "book_updates_per_s": max(rates, default=0.0),
        "histogram": latencies.encode(),
    }
    for subscriber in subscribers:
        await subscriber.client.close()
    return figures


def run_fanout(subscribers: int, updates_per_s: float, duration_s: float, procs: int,
               symbol: str, drain_s: float, verify: int = 20) -> dict[str, Any]:
    """One fan-out run against a fresh spawned server; returns its figures."""
    with tempfile.TemporaryDirectory(prefix="cmx-fanout-") as data_dir, \
            SpawnedServer(Path(data_dir), DRIVER_CLIENTS) as server:
        shares = [subscribers // procs + (1 if i < subscribers % procs else 0)
                  for i in range(procs)]
        jobs: list[tuple[Any, Any]] = [
            (subscriber_worker, {"url": server.url, "symbol": symbol, "subscribers": share,
                                 "verify": -(-verify * share // subscribers),
                                 "duration_s": duration_s, "drain_s": drain_s})
            for share in shares if share]
        numbers = list(range(DRIVER_CLIENTS))
        jobs.append((order_worker, OrderJob(
            server.url, [load_key(n) for n in numbers], numbers, DRIVER_CLIENTS,
            updates_per_s, duration_s, drain_s, symbol, max_live=DRIVER_MAX_LIVE, seed=7,
            **price_ladder(symbol, NEAR_TOUCH_TICKS))))
        *watchers, driver = run_workers(jobs, duration_s + drain_s)
        peak_rss = server.peak_rss_mb()
    latencies = Latencies()
    for watcher in watchers:
        latencies.add(Latencies(watcher.pop("histogram")))
    total = sum(w["messages"] for w in watchers)
    figures: dict[str, Any] = {
        "subscribers": subscribers, "verifying": verify, "updates": updates_per_s,
        "duration": duration_s,
        "procs": len(watchers),
        "driver_orders_sent": sum(driver["sent"].values()),
        "driver_orders_acked": Latencies(driver["histogram"]).count,
        "book_updates_per_s": round(max(w["book_updates_per_s"] for w in watchers), 1),
        "messages_delivered": total,
        "updates_per_s_per_subscriber": round(total / subscribers / duration_s, 1),
        "delivered_per_s": round(total / duration_s),
        "conflated_snapshots": sum(w["snapshots"] for w in watchers),
        "checksum_failures": sum(w["checksum_failures"] for w in watchers),
        "gaps": sum(w["gaps"] for w in watchers),
        "resyncs": sum(w["resyncs"] for w in watchers),
        "subscribers_synced_at_end": sum(w["synced"] for w in watchers),
        "server_peak_rss_mb": round(peak_rss, 1),
        **{f"delivery_{k}": v for k, v in latencies.summary().items()},
    }
    figures["latencies"] = latencies
    return figures


def describe_fanout(figures: dict[str, Any]) -> str:
    """One human line for a fan-out run."""
    return (f"fan-out {figures['subscribers']} subscribers, {figures['updates']:,.0f} "
            f"orders/s driving {figures['book_updates_per_s']:,.0f} book updates/s: "
            f"{figures['updates_per_s_per_subscriber']:,.0f} msgs/s per subscriber "
            f"({figures['messages_delivered']:,} total), delivery p50 "
            f"{figures['delivery_p50_us'] / 1000:.2f} ms p99 "
            f"{figures['delivery_p99_us'] / 1000:.2f} ms p99.9 "
            f"{figures['delivery_p999_us'] / 1000:.2f} ms; checksum failures "
            f"{figures['checksum_failures']}, resyncs {figures['resyncs']}, conflated "
            f"{figures['conflated_snapshots']}; server peak RSS "
            f"{figures['server_peak_rss_mb']} MB")


def main_fanout(subscribers: int, updates: float, *, duration_s: float, procs: int,
                symbol: str, drain_s: float, json_path: str | None,
                plot_path: str | None, verify: int = 20) -> int:
    """``cmx loadtest ws fanout``: run, print, write JSON and plot; exits 1 on any checksum
    failure."""
    figures = run_fanout(subscribers, updates, duration_s, procs, symbol, drain_s,
                         min(verify, subscribers))
    print(describe_fanout(figures), flush=True)
    latencies = figures.pop("latencies")
    if json_path is not None:
        write_json(json_path, figures)
    if plot_path is not None:
        plot(plot_path, f"book delivery latency, {subscribers} subscribers",
             [(f"{figures['book_updates_per_s']:,.0f} updates/s", latencies)],
             target_ms=50.0)
    return 1 if figures["checksum_failures"] else 0
