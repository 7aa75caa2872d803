"""`cmx bench gas` on a few accounts: the real command line on a real Anvil, and the
invariants of its figures (never their size on this machine, beyond what the EVM fixes)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

import engine.clearing
from chain_bridge.anvil import anvil_binary
from chain_bridge.chain import ChainError
from loadtest.bench_gas import GasBenchResult, run_gas_bench

ACCOUNTS = 40
KEYS = ("gas_per_delta", "gas_per_delta_new_account", "batch_1000_gas", "batch_1000_chunks",
        "block_gas_limit", "empty_batch_gas", "batch_1000_entries", "batch_1000_chunk_gas",
        "gas_per_withdrawal", "reconciled", "accounts")


@pytest.fixture(autouse=True)
def _anvil_installed() -> None:
    try:
        anvil_binary()
    except ChainError as exc:
        pytest.fail(f"{exc}. Run `./dev env` (it runs `npm ci`) to install Anvil.")


def check(figures: dict[str, Any] | GasBenchResult) -> None:
    f: dict[str, Any] = figures if isinstance(figures, dict) else msgspec.to_builtins(figures)
    for key in KEYS:
        assert key in f, key
    assert f["accounts"] == f["batch_1000_accounts"] == ACCOUNTS
    # every account pays a taker fee, the fee account takes them all
    assert f["batch_1000_entries"] == ACCOUNTS + 1
    assert f["batch_1000_chunks"] == math.ceil((ACCOUNTS + 1) / f["chunk_entries"])  # deltas
    chunk_gas = f["batch_1000_chunk_gas"]
    assert len(chunk_gas) == f["batch_1000_chunks"]
    assert sum(chunk_gas) == f["batch_1000_gas"]
    assert max(chunk_gas) == f["batch_1000_max_chunk_gas"] <= f["block_gas_limit"]
    assert f["block_gas_limit"] > 0
    assert 21_000 < f["empty_batch_gas"] < min(chunk_gas)
    assert 0 < f["gas_per_delta"] < f["gas_per_delta_new_account"]
    # a zero slot made non-zero costs 20,000 gas against 2,900 for a non-zero one
    assert f["gas_per_delta_new_account"] - f["gas_per_delta"] > 15_000
    assert f["gas_per_withdrawal"] > f["gas_per_delta"]
    assert f["block_gas_limit"] >= f["chunk_of_withdrawals_tx_gas"] > \
        f["chunk_of_withdrawals_gas"] > \
        f["chunk_entries"] // engine.clearing.WITHDRAWAL_WEIGHT * f["gas_per_withdrawal"]
    assert f["batch_1000_gas_per_account"] > f["gas_per_delta"]
    assert f["meets_gas_per_delta"] == (f["gas_per_delta"] <= 10_000)
    assert f["meets_accounts_per_batch"] is False  # fewer than 1,000 accounts
    assert f["reconciled"] is True
    assert f["accounts_checked"] == f["batch_1000_entries"]
    assert f["accounts_per_block"] > f["new_accounts_per_block"] > 0


def test_the_command_writes_its_figures_and_compares_them_with_the_targets(
        tmp_path: Path) -> None:
    out = tmp_path / "gas.json"
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", "gas", "--accounts", str(ACCOUNTS),
         "--json", str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    check(figures)
    assert figures["batch_1000_chunks"] == 1
    assert "BENCHMARKS.md, gas per account delta <= 10,000" in result.stdout
    assert "not measured (ran with --accounts 40)" in result.stdout


def test_a_batch_over_the_chunk_size_is_settled_in_chunks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.clearing, "CHUNK_ENTRIES", 16)
    result = run_gas_bench(ACCOUNTS, probe=10, log=False)
    check(result)
    assert (result.chunk_entries, result.batch_1000_chunks) == (16, 3)
    assert result.probe_deltas == 10
