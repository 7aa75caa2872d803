"""The `cmx` command line as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser

CMX = [sys.executable, "-m", "gateway.cli"]


def test_help_lists_the_subcommands() -> None:
    out = subprocess.run([*CMX, "--help"], capture_output=True, text=True, check=True).stdout
    assert "bench" in out
    bench = subprocess.run([*CMX, "bench", "core", "--help"], capture_output=True, text=True,
                           check=True).stdout
    assert "--ops" in bench and "--json" in bench and "--seed" in bench


def test_unknown_subcommand_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["no-such-command"])
    assert exit_info.value.code == 2


def test_bench_core_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "core.json"
    run = subprocess.run(
        [*CMX, "bench", "core", "--ops", "3000", "--runs", "1", "--json", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "state hash" in run.stdout
    figures = json.loads(out.read_text())
    assert figures["state_hash_equal"] is True
    for key in ("reference_ops_per_s", "cython_ops_per_s", "cython_batch_ops_per_s",
                "cython_p50_ns", "cython_p99_ns", "cython_p9999_ns"):
        assert figures[key] > 0, key
    assert figures["commands"] == 3000 + 1000  # the mix after a 1,000-order warm-up


def test_bench_core_refuses_an_unknown_symbol() -> None:
    run = subprocess.run([*CMX, "bench", "core", "--symbol", "GPU.X999.SPOT", "--ops", "10"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert "GPU.X999.SPOT" in run.stderr
