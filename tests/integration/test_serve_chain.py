"""`cmx serve` with its chain, driven as a user would: `cmx chain status`, `cmx deposit` and
`cmx withdraw` as separate processes against the embedded EVM, Anvil, and a node given by
``--rpc-url``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from websockets.sync.client import connect

from chain_bridge.anvil import AnvilNode
from chain_bridge.chain import ETHER, ChainError, rpc
from chain_bridge.cli import chain_proof
from chain_bridge.deployment import deploy, save
from chain_bridge.wallet import WalletClient
from engine.keys import dev_keys
from tests.integration.test_serve import ServeProcess

USDC = 10**6


def cmx(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the `cmx` command line as a separate process."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def chain_status(port: int) -> dict[str, Any]:
    done = cmx("chain", "status", "--json", "--port", str(port))
    assert done.returncode in (0, 2), done.stderr
    status: dict[str, Any] = json.loads(done.stdout)
    return status


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_the_demo_clears_batches_to_the_embedded_chain(tmp_path: Path,
                                                       started: list[ServeProcess]) -> None:
    serve = ServeProcess(tmp_path / "data", "--chain", "embedded", "--demo", "--fix-port",
                         "-1", "--batch-interval", "1")
    started.append(serve)
    first = chain_status(serve.port)
    assert first["chain"] == "embedded"
    assert first["clearing_house"].startswith("0x") and len(first["clearing_house"]) == 42
    # deposit 1 funds the insurance fund, 2-11 the ten demo accounts
    wait_for("eleven deposits credited and batched",
             lambda: chain_status(serve.port)["last_credited_deposit_id"] == 11)
    wait_for("two more batches",
             lambda: chain_status(serve.port)["last_batch_id"] >= first["last_batch_id"] + 2)
    later = chain_status(serve.port)
    assert later["last_batch_id"] > first["last_batch_id"]
    assert later["reconciled"] is True and later["halted"] is None
    assert later["accounts_checked"] > 0
    assert later["last_deposit_id"] == 11
    text = cmx("chain", "status", "--port", str(serve.port))
    assert text.returncode == 0 and "reconciled       yes" in text.stdout
    assert serve.stop() == 0
    # the embedded chain is rebuilt from its transaction log: same contracts, same batches
    again = ServeProcess(tmp_path / "data", "--chain", "embedded", "--fix-port", "-1",
                         "--batch-interval", "1")
    started.append(again)
    resumed = chain_status(again.port)
    assert resumed["clearing_house"] == later["clearing_house"]
    assert resumed["last_batch_id"] >= later["last_batch_id"]
    assert resumed["reconciled"] is True


def test_deposit_and_withdraw_from_the_command_line(tmp_path: Path,
                                                    started: list[ServeProcess]) -> None:
    serve = ServeProcess(tmp_path / "data", "--chain", "embedded", "--fix-port", "-1",
                         "--batch-interval", "1")
    started.append(serve)
    address, key = dev_keys()[3]
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    wallet = WalletClient(f"ws://127.0.0.1:{serve.port}/chain")
    before = wallet.request({"op": "account", "address": address})
    assert before["token_balance"] > 0  # development accounts get test USDC

    refused = cmx("deposit", "--port", str(serve.port), "--key", str(key_file), "-5")
    assert refused.returncode != 0
    done = cmx("deposit", "--port", str(serve.port), "--key", str(key_file), "1500.25")
    assert done.returncode == 0, done.stderr
    assert "deposited 1500.25 USDC" in done.stdout
    after = wallet.request({"op": "account", "address": address})
    assert after["settled_balance"] == 1_500_250_000
    assert after["token_balance"] == before["token_balance"] - 1_500_250_000

    too_much = cmx("withdraw", "--port", str(serve.port), "--key", str(key_file), "2000")
    wait_for("the deposit credited", lambda: chain_status(serve.port)
             ["last_credited_deposit_id"] >= 2)  # after the insurance fund's
    assert too_much.returncode != 0 and "insufficient_funds" in too_much.stderr
    out = cmx("withdraw", "--port", str(serve.port), "--key", str(key_file), "--wait", "500")
    assert out.returncode == 0, out.stderr
    assert "paid on chain" in out.stdout
    paid = wallet.request({"op": "account", "address": address})
    assert paid["token_balance"] == after["token_balance"] + 500 * USDC
    assert paid["settled_balance"] == 1_000_250_000
    assert chain_status(serve.port)["reconciled"] is True


def test_serve_spawns_anvil_and_clears_to_it(tmp_path: Path,
                                             started: list[ServeProcess]) -> None:
    serve = ServeProcess(tmp_path / "data", "--chain", "anvil", "--demo", "--fix-port", "-1",
                         "--batch-interval", "1")
    started.append(serve)
    first = chain_status(serve.port)
    assert first["chain"] == "anvil" and first["chain_id"] == 31337
    wait_for("demo deposits and batches on Anvil",
             lambda: chain_status(serve.port)["last_batch_id"] >= first["last_batch_id"] + 2)
    status = chain_status(serve.port)
    assert status["last_deposit_id"] == 11 and status["reconciled"] is True
    assert serve.stop() == 0
    anvils = subprocess.run(["pgrep", "-f", f"anvil.*{tmp_path}"], capture_output=True,
                            check=False)
    assert anvils.stdout == b"", "Anvil outlived the server"


def test_serve_attaches_to_a_deployment_on_any_node(tmp_path: Path,
                                                    started: list[ServeProcess]) -> None:
    node = AnvilNode()
    node.start()
    try:
        chain = rpc(node.url, kind="anvil")  # the test funds its operator the Anvil way
        operator: LocalAccount = Account.from_key("0x" + "a5" * 32)
        chain.fund(operator.address, 10 * ETHER)
        found = deploy(chain, operator, forced_withdrawal_delay_s=600)
        save(found, tmp_path / "deployment.json")
        (tmp_path / "operator.key").write_text("0x" + "a5" * 32)
        address, key = dev_keys()[5]
        token = chain.contract("CollateralToken", found.token)
        chain.transact(operator, token.functions.mint(chain.w3.to_checksum_address(address),
                                                      100 * USDC), "mint")
        serve = ServeProcess(tmp_path / "data", "--chain", "none", "--rpc-url", node.url,
                             "--deployment", str(tmp_path / "deployment.json"),
                             "--operator-key", str(tmp_path / "operator.key"),
                             "--confirmations", "0", "--fix-port", "-1",
                             "--batch-interval", "1")
        started.append(serve)
        status = chain_status(serve.port)
        assert status["chain"] == "rpc" and status["clearing_house"] == found.clearing_house
        done = cmx("deposit", "--port", str(serve.port), "--key", key, "100")
        assert done.returncode == 0, done.stderr
        wait_for("the deposit credited in a batch",
                 lambda: chain_status(serve.port)["last_credited_deposit_id"] == 1)
        assert chain_status(serve.port)["reconciled"] is True
        assert serve.stop() == 0
    finally:
        node.stop()


def test_a_node_without_the_deployment_is_refused(tmp_path: Path) -> None:
    node = AnvilNode()
    node.start()
    try:
        done = cmx("serve", "--data-dir", str(tmp_path / "data"), "--rpc-url", node.url,
                   "--operator-key", "0x" + "a5" * 32, "--port", "0", "--fix-port", "-1",
                   timeout=60)
    finally:
        node.stop()
    assert done.returncode != 0
    assert "give --deployment" in done.stderr


def test_a_registered_node_attests_every_epoch_through_the_agent(
        tmp_path: Path, started: list[ServeProcess]) -> None:
    serve = ServeProcess(tmp_path / "data", "--chain", "embedded", "--fix-port", "-1",
                         "--epoch-seconds", "1", "--attest-difficulty", "16")
    started.append(serve)
    key_file = tmp_path / "node.key"
    made = cmx("node-agent", "keygen", str(key_file))
    assert made.returncode == 0, made.stderr
    node = made.stdout.split()[-1].lower()
    assert node.startswith("0x") and len(node) == 42
    _, provider_key = dev_keys()[1]
    registered = cmx("provider", "register-node", "--port", str(serve.port), "--key",
                     provider_key, "--node", node, "--class", "GPU.H100", "--units", "8")
    assert registered.returncode == 0, registered.stderr
    agent = subprocess.Popen([sys.executable, "-m", "gateway.cli", "node-agent", "--key-file",
                              str(key_file), "--url", f"ws://127.0.0.1:{serve.port}/"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for("three accepted attestations",
                 lambda: chain_status(serve.port)["attestations_accepted"] >= 3)
    finally:
        agent.terminate()
        agent.wait(timeout=10)
    status = chain_status(serve.port)
    assert status["epoch"] is not None and status["reconciled"] is True
    # a forged one (another key's signature) is refused with its reason, to that client only
    with connect(f"ws://127.0.0.1:{serve.port}/") as ws:
        ws.recv()  # welcome
        ws.send(json.dumps({"op": "subscribe", "channel": "attest", "id": 1}))
        epochs: list[dict[str, Any]] = []
        while len(epochs) < 2:  # the next epoch: the stopped agent has not attested it
            message = json.loads(ws.recv(timeout=10))
            if message.get("type") == "epoch":
                epochs.append(message)
        epoch = epochs[-1]
        ws.send(json.dumps({"op": "attest", "id": 2, "node": node, "epoch": epoch["epoch"],
                            "beacon": epoch["beacon"], "nonce": 0,
                            "signature": "0x" + "11" * 65}))
        while True:
            reply = json.loads(ws.recv(timeout=10))
            if reply.get("id") == 2:
                break
    assert reply["type"] == "error" and reply["code"] in {"bad_signature", "above_target"}
    assert chain_status(serve.port)["attestations_accepted"] >= 3
    # the batches commit the accepted attestations: some settled root is not zero
    wait_for("an attestations root on chain", lambda: any(
        root != "0x" + "00" * 32 for root in chain_status(serve.port)["attestation_roots"]
        .values()))
    # the root of each settled batch, read from the chain
    every = cmx("chain", "status", "--json", "--batches", "100000", "--port", str(serve.port))
    assert every.returncode in (0, 2), every.stderr
    roots = json.loads(every.stdout)["attestation_roots"]
    assert sorted(map(int, roots)) == list(range(1, len(roots) + 1)) and roots
    recent = chain_status(serve.port)["attestation_roots"]
    assert {k: roots[k] for k in recent if k in roots} == \
        {k: v for k, v in recent.items() if k in roots}
    with pytest.raises(ChainError, match="first"):
        WalletClient(f"ws://127.0.0.1:{serve.port}/chain").request(
            {"op": "attestation_roots", "first": 0, "last": 5})
    # `cmx chain proof` proves an epoch whose batch settled, here and on chain
    settled = [settled_epoch(serve.port, node)]
    proof = cmx("chain", "proof", "--node", node, "--epoch", str(settled[0]), "--port",
                str(serve.port))
    assert proof.returncode == 0, proof.stdout + proof.stderr
    assert "all checks passed" in proof.stdout
    for check in ("local proof", "attestation on chain", "proof on chain"):
        assert any(line.startswith(check) and "passed" in line
                   for line in proof.stdout.splitlines()), (check, proof.stdout)
    as_json = cmx("chain", "proof", "--node", node, "--epoch", str(settled[0]), "--port",
                  str(serve.port), "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["passed"] is True and all(report["checks"].values())
    unknown = cmx("chain", "proof", "--node", node, "--epoch", "1", "--port", str(serve.port))
    assert unknown.returncode == 1 and "unknown" in unknown.stderr
    for odd in ("%C2%B2", "9" * 5000, "-1", "1e3"):  # "²" is a digit to str.isdigit
        with pytest.raises(urllib.error.HTTPError) as answered:
            urllib.request.urlopen(f"http://127.0.0.1:{serve.port}/api/chain/proof?node="
                                   f"{node}&epoch={odd}", timeout=5)
        assert answered.value.code == 404, odd


def settled_epoch(port: int, node: str) -> int:
    """An epoch the node attested whose batch has settled on chain (waits for one)."""
    settled: list[int] = []

    def a_settled_epoch() -> bool:
        last = chain_status(port)["epoch"]
        for epoch in range(last, last - 300, -1):
            found = chain_proof("127.0.0.1", port, node, epoch)
            if found is not None and not found["pending"]:
                settled.append(epoch)
                return True
        return False

    wait_for("an attestation proof from a settled batch", a_settled_epoch)
    return settled[0]


def test_an_attestation_is_proven_against_a_node_the_prover_chooses(
        tmp_path: Path, started: list[ServeProcess]) -> None:
    """`cmx chain proof --rpc-url --deployment`: the on-chain checks go to a node and
    contracts of the prover's choosing, not through the server being checked."""
    anvil = AnvilNode()
    anvil.start()
    agent = None
    try:
        chain = rpc(anvil.url, kind="anvil")
        operator: LocalAccount = Account.from_key("0x" + "a5" * 32)
        chain.fund(operator.address, 10 * ETHER)
        save(deploy(chain, operator, forced_withdrawal_delay_s=600, difficulty=16),
             tmp_path / "deployment.json")
        (tmp_path / "operator.key").write_text("0x" + "a5" * 32)
        serve = ServeProcess(tmp_path / "data", "--chain", "none", "--rpc-url", anvil.url,
                             "--deployment", str(tmp_path / "deployment.json"),
                             "--operator-key", str(tmp_path / "operator.key"),
                             "--confirmations", "0", "--fix-port", "-1",
                             "--batch-interval", "1", "--epoch-seconds", "1")
        started.append(serve)
        key_file = tmp_path / "node.key"
        node = cmx("node-agent", "keygen", str(key_file)).stdout.split()[-1].lower()
        registered = cmx("provider", "register-node", "--port", str(serve.port), "--key",
                         dev_keys()[1][1], "--node", node, "--class", "GPU.H100", "--units",
                         "8")
        assert registered.returncode == 0, registered.stderr
        agent = subprocess.Popen([sys.executable, "-m", "gateway.cli", "node-agent",
                                  "--key-file", str(key_file), "--url",
                                  f"ws://127.0.0.1:{serve.port}/"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        epoch = settled_epoch(serve.port, node)
        own = cmx("chain", "proof", "--node", node, "--epoch", str(epoch), "--port",
                  str(serve.port), "--rpc-url", anvil.url, "--deployment",
                  str(tmp_path / "deployment.json"), "--json")
        assert own.returncode == 0, own.stdout + own.stderr
        report = json.loads(own.stdout)
        assert report["passed"] is True and all(report["checks"].values())
        # the same contracts' addresses on another chain: the prover's node says no
        other = AnvilNode()
        other.start()
        try:
            refused = cmx("chain", "proof", "--node", node, "--epoch", str(epoch), "--port",
                          str(serve.port), "--rpc-url", other.url, "--deployment",
                          str(tmp_path / "deployment.json"))
        finally:
            other.stop()
        assert refused.returncode == 1 and "contract at" in refused.stderr, refused.stderr
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=10)
        anvil.stop()
