"""The committed contract artifacts are exactly what the pinned solc-js makes of the sources.

Recompiling needs Node.js and the npm packages of package.json (`npm ci`); without them the
test fails rather than skips, so stale artifacts cannot slip through a machine that lacks them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from chain_bridge.contracts import ARTIFACTS_DIR, load_artifact

ROOT = Path(__file__).resolve().parents[2]
COMPILE = ROOT / "chain_bridge" / "contracts" / "compile.js"
CONTRACTS = ("ClearingHouse", "CollateralToken", "UptimeRegistry")


def test_artifacts_match_the_sources() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is needed to recompile the contracts: install it (Debian: nodejs)")
    if not (ROOT / "node_modules" / "solc" / "package.json").is_file():
        pytest.fail("the pinned Solidity compiler is missing: run `npm ci` in the repository root")
    run = subprocess.run(
        [node, str(COMPILE), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_artifacts_are_complete_and_pinned() -> None:
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["solc"]
    assert sorted(path.stem for path in ARTIFACTS_DIR.glob("*.json")) == list(CONTRACTS)
    for name in CONTRACTS:
        artifact = load_artifact(name)
        assert artifact.contract_name == name
        assert artifact.solc_version.startswith(f"{pinned}+")
        assert artifact.bytecode.startswith("0x") and len(artifact.bytecode) > 2
        assert artifact.deployed_bytecode.startswith("0x") and len(artifact.deployed_bytecode) > 2
        assert any(entry.get("type") == "function" for entry in artifact.abi)
