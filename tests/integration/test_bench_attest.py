"""`cmx bench attest` on small counts: the real command line, and the invariants of its
figures (never their size on this machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from chain_bridge.attestation import DEFAULT_DIFFICULTY
from loadtest.bench_attest import MAX_NODES, AttestBenchResult, main_attest, run_attest_bench

KEYS = ("verified_per_s", "solve_p50_s", "solve_p90_s", "solve_p99_s",
        "hashes_per_s", "eth_hash_per_s", "accepted", "correct")


def check(figures: dict[str, Any] | AttestBenchResult, count: int, solves: int) -> None:
    f: dict[str, Any] = figures if isinstance(figures, dict) else msgspec.to_builtins(figures)
    for key in KEYS:
        assert key in f, key
    assert f["count"] == f["accepted"] == count
    assert f["nodes"] == min(count, MAX_NODES)
    assert f["epochs"] == -(-count // f["nodes"])
    # the last epoch's attestations replayed, and as many forged
    last = count - (f["epochs"] - 1) * f["nodes"]
    assert f["replayed_duplicates"] == f["forged_refused"] == last
    assert f["correct"] is True
    assert len(f["verified_per_s_runs"]) == 5
    assert min(f["verified_per_s_runs"]) <= f["verified_per_s"] <= max(f["verified_per_s_runs"])
    assert f["recover_per_s"] > 0
    assert f["collector_share_of_recover"] == f["verified_per_s"] / f["recover_per_s"]
    assert f["meets_verified_per_s"] == (f["verified_per_s"] >= 10_000)
    assert f["solves"] == solves
    assert 0 < f["solve_p50_s"] <= f["solve_p90_s"] <= f["solve_p99_s"] <= f["solve_max_s"]
    assert f["solve_mean_s"] > 0 and f["hashes_per_s"] > 0 and f["eth_hash_per_s"] > 0
    assert f["expected_solve_s"] == f["difficulty"] / f["hashes_per_s"]


def test_the_command_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "attest.json"
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", "attest", "--count", "300",
         "--solves", "4", "--difficulty", "2000", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    check(figures, 300, 4)
    assert figures["difficulty"] == 2000
    assert "BENCHMARKS.md, attestations verified by the collector >= 10,000/s" in result.stdout
    assert "correctness: ok" in result.stdout


def test_more_attestations_than_nodes_span_epochs() -> None:
    result = run_attest_bench(count=MAX_NODES + 150, difficulty=500, solves=1, log=False)
    check(result, MAX_NODES + 150, 1)
    assert result.epochs == 2


def test_the_timed_solves_default_to_the_agents_difficulty(tmp_path: Path) -> None:
    out = tmp_path / "attest.json"
    assert main_attest(count=20, difficulty=None, solves=1, json_path=str(out)) == 0
    figures = json.loads(out.read_text())
    check(figures, 20, 1)
    assert figures["difficulty"] == DEFAULT_DIFFICULTY
