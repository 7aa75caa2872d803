"""`cmx loadtest ws` end to end, briefly: a spawned server, the real command line, its JSON
and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cmx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def test_order_entry_run_loses_nothing_and_writes_json_and_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "ws.json", tmp_path / "ws.png"
    result = cmx("loadtest", "ws", "--spawn", "--rate", "500", "--duration", "2",
                 "--clients", "2", "--json", str(out), "--plot", str(png))
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    for key in ("sent", "acked", "lost", "errors", "orders_per_s", "p50_us", "p99_us",
                "p999_us", "max_us", "rate", "clients", "duration", "server_peak_rss_mb"):
        assert key in figures, key
    assert figures["sent"] == 1000
    assert figures["acked"] == figures["sent"]
    assert figures["lost"] == 0
    assert figures["places"] > 0 and figures["cancels"] > 0
    assert 0 < figures["p50_us"] <= figures["p99_us"] <= figures["p999_us"] <= \
        figures["max_us"]
    assert "acked 1,000 lost 0" in result.stdout
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_fanout_run_verifies_every_checksum(tmp_path: Path) -> None:
    out, png = tmp_path / "fanout.json", tmp_path / "fanout.png"
    result = cmx("loadtest", "ws", "fanout", "--subscribers", "10", "--updates", "200",
                 "--duration", "2", "--drain", "2", "--json", str(out), "--plot", str(png))
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["checksum_failures"] == 0
    assert figures["subscribers_synced_at_end"] == 10
    assert figures["driver_orders_acked"] == figures["driver_orders_sent"] == 400
    # every subscriber saw a stream of updates, each timed
    assert figures["messages_delivered"] >= 10 * 100
    assert 0 < figures["delivery_p50_us"] <= figures["delivery_p99_us"]
    assert figures["server_peak_rss_mb"] > 0
    assert png.read_bytes().startswith(PNG_MAGIC)
