"""Latency histograms (HDR, microseconds), their merging across processes, and the JSON and
PNG outputs of the load tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

LOWEST_US = 1
HIGHEST_US = 600_000_000  # ten minutes: nothing a run records is clamped
SIGNIFICANT_DIGITS = 3
PERCENTILES = {"p50_us": 50.0, "p90_us": 90.0, "p99_us": 99.0, "p999_us": 99.9,
               "p9999_us": 99.99}


class Latencies:
    """An HDR histogram of latencies in microseconds."""

    def __init__(self, encoded: bytes | None = None) -> None:
        self._histogram = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        if encoded is not None:
            self._histogram.decode_and_add(encoded)

    def record_ns(self, nanoseconds: int) -> None:
        """Record one latency given in nanoseconds (below 1 µs counts as 1 µs)."""
        self._histogram.record_value(min(HIGHEST_US, max(LOWEST_US, nanoseconds // 1000)))

    def add(self, other: Latencies) -> None:
        """Add another histogram's counts to this one."""
        self._histogram.add(other._histogram)

    def encode(self) -> bytes:
        """The compressed HDR encoding (to send between processes)."""
        encoded: bytes = self._histogram.encode()
        return encoded

    @property
    def count(self) -> int:
        """Number of latencies recorded."""
        return int(self._histogram.get_total_count())

    def at(self, percentile: float) -> int:
        """The latency (µs) at ``percentile`` (0-100); 0 when empty."""
        return int(self._histogram.get_value_at_percentile(percentile)) if self.count else 0

    def summary(self) -> dict[str, int]:
        """p50/p90/p99/p99.9/p99.99 and max, in µs."""
        figures = {name: self.at(p) for name, p in PERCENTILES.items()}
        figures["max_us"] = int(self._histogram.get_max_value()) if self.count else 0
        return figures

    def distribution(self) -> tuple[list[float], list[float]]:
        """HDR-style percentile distribution: x = 1/(1-p) and latency in ms."""
        xs: list[float] = []
        ys: list[float] = []
        for step in range(0, 101):  # p from 0 to 99.999 in even log steps of 1/(1-p)
            fraction = 1 - 10 ** (-step / 20)
            xs.append(1 / (1 - fraction))
            ys.append(self.at(100 * fraction) / 1000)
        return xs, ys


def order_entry_text(figures: dict[str, Any]) -> str:
    """The tail of an order entry run's line: throughput and ack latency percentiles."""
    return (f"{figures['orders_per_s']:,} orders/s; ack p50 {figures['p50_us'] / 1000:.2f} ms "
            f"p99 {figures['p99_us'] / 1000:.2f} ms p99.9 {figures['p999_us'] / 1000:.2f} ms "
            f"max {figures['max_us'] / 1000:.2f} ms")


def aligned(rows: Sequence[tuple[str, str]], value_width: int) -> list[str]:
    """``rows`` of (name, value) as lines: names left-aligned in one column, values
    right-aligned in ``value_width``."""
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {value:>{value_width}}" for name, value in rows]


def write_json(path: str | Path, data: Any) -> None:
    """Write figures as indented JSON."""
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def plot(path: str | Path, title: str, curves: Sequence[tuple[str, Latencies]],
         runs: Sequence[dict[str, Any]] = (), rate_key: str = "rate",
         target_ms: float | None = None) -> None:
    """A PNG of the latency percentile distributions (log x, one curve per run) and, with
    several ``runs``, their p50/p99/p99.9 against ``rate_key``."""
    import matplotlib  # noqa: PLC0415 (plots only: keep the import off the run's path)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    panels = 2 if len(runs) > 1 else 1
    figure, axes = plt.subplots(1, panels, figsize=(7 * panels, 5), squeeze=False)
    left = axes[0][0]
    for label, latencies in curves:
        xs, ys = latencies.distribution()
        left.plot(xs, ys, label=label)
    left.set_xscale("log")
    left.set_yscale("log")
    ticks = [2, 10, 100, 1000, 10_000, 100_000]
    left.set_xticks(ticks, ["50%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
    left.set_xlabel("percentile")
    left.set_ylabel("latency (ms)")
    left.set_title(title)
    if target_ms is not None:
        left.axhline(target_ms, color="red", linestyle=":", label=f"target {target_ms:g} ms")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    if panels == 2:
        right = axes[0][1]
        rates = [run[rate_key] for run in runs]
        for key, label in (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")):
            right.plot(rates, [run[key] / 1000 for run in runs], marker="o", label=label)
        if target_ms is not None:
            right.axhline(target_ms, color="red", linestyle=":", label="p99 target")
        right.set_yscale("log")
        right.set_xlabel(rate_key.replace("_", " "))
        right.set_ylabel("latency (ms)")
        right.set_title("latency vs rate")
        right.grid(True, which="both", alpha=0.3)
        right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
