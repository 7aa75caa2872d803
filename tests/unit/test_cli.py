"""The `cmx` command line as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway.cli import build_parser, main

CMX = [sys.executable, "-m", "gateway.cli"]


def test_help_lists_the_subcommands() -> None:
    out = subprocess.run([*CMX, "--help"], capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in ("bench", "engine", "shard", "replay"))
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


def test_bench_engine_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    run = subprocess.run([*CMX, "bench", "engine", "--ops", "2000", "--json", str(out)],
                         capture_output=True, text=True, check=True)
    assert "replay" in run.stdout
    figures = json.loads(out.read_text())
    assert figures["deterministic"] is True and figures["rejected"] == 0
    assert figures["commands"] == 1000 + 1000 + 2000  # deposits, warm-up orders, the mix
    for key in ("commands_per_s", "replay_commands_per_s", "apply_only_per_s"):
        assert figures[key] > 0, key


def test_shard_map_errors_are_clear(tmp_path: Path) -> None:
    shard_map = tmp_path / "shards.json"
    shard_map.write_text('{"shards": {"gpu": ["GPU.H100.SPOT"]}}')
    base = [*CMX, "shard", "--data-dir", str(tmp_path / "d"), "--shard-map", str(shard_map),
            "--listing-date", "2026-11-30"]
    missing = subprocess.run([*base, "--name", "rack"], capture_output=True, text=True,
                             check=False)
    assert missing.returncode == 2 and "no shard named rack" in missing.stderr
    shard_map.write_text('{"shards": {"gpu": ["GPU.NOPE.SPOT"]}}')
    unknown = subprocess.run([*base, "--name", "gpu"], capture_output=True, text=True,
                             check=False)
    assert unknown.returncode == 2 and "GPU.NOPE.SPOT" in unknown.stderr
    shard_map.write_text("{not json")
    broken = subprocess.run([*base, "--name", "gpu"], capture_output=True, text=True,
                            check=False)
    assert broken.returncode == 2 and "cmx shard:" in broken.stderr


def test_chain_proof_refuses_a_server_answering_for_another_attestation(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A server that proves some other node-epoch than the one asked for is caught before
    any check could pass on that other attestation."""
    other = {"pending": False, "batch_id": 3, "node": "0x" + "22" * 20, "epoch": 7,
             "nonce": 1, "digest": "0x" + "33" * 32, "beacon": "0x" + "44" * 32,
             "signature": "0x" + "55" * 65, "leaf": "0x" + "66" * 32, "proof": [],
             "root": "0x" + "66" * 32}

    class Lying(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(other).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Lying)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        asked = "0x" + "11" * 20
        status = main(["chain", "proof", "--node", asked, "--epoch", "7", "--port",
                       str(server.server_address[1])])
    finally:
        server.shutdown()
        server.server_close()
    assert status == 2
    assert f"not the attestation of {asked} for epoch 7" in capsys.readouterr().err
