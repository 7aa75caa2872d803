"""``cmx deposit``, ``cmx chain status`` and ``cmx chain proof``: against a running `cmx
serve`, found with ``--host``/``--port``, whichever chain it uses; and ``cmx node-agent``.
(web3 is imported only by the commands that use it, the agent's modules only by the agent:
every `cmx` command builds this parser.)"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgspec

from engine.keys import read_key

MICRO = 10**6
DEREGISTER_NOTICE_S = 60
"""The default notice of a deregistration with no delivery sold on the node."""
DEREGISTER_MINING_S = 15
"""How far past the chain's latest block a deregistration must take effect."""


def register(commands: Any) -> None:
    """Add ``deposit``, ``chain`` and ``node-agent`` to the `cmx` subparsers."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "deposit", help="deposit collateral into the ClearingHouse",
        description="Approves and deposits AMOUNT USDC from the key's account into the "
        "ClearingHouse of the running exchange; the exchange credits it once the chain has "
        "it. The transactions are signed here and relayed by the server.")
    _server_options(parser)
    parser.add_argument("--key", required=True, metavar="KEY_OR_FILE",
                        help="the depositing account's private key (hex, or a file)")
    parser.add_argument("--for", dest="beneficiary", metavar="ADDRESS", default=None,
                        help="credit this account instead of the key's own (e.g. the "
                        "insurance fund)")
    parser.add_argument("amount", help="USDC, e.g. 1000 or 12.5")
    parser.set_defaults(handler=_deposit)

    provider = commands.add_parser("provider", help="compute providers: register nodes")
    provider_sub = provider.add_subparsers(dest="provider_command", metavar="COMMAND",
                                           required=True)
    register_node = provider_sub.add_parser(
        "register-node", help="register a node in the UptimeRegistry",
        description="Registers NODE (the address of the node agent's key) in the exchange's "
        "UptimeRegistry as a node of the provider account of --key; the exchange learns of "
        "it from the chain. Signed here, relayed by the running server.")
    _server_options(register_node)
    register_node.add_argument("--key", required=True, metavar="KEY_OR_FILE",
                               help="the provider account's private key (hex, or a file)")
    register_node.add_argument("--node", required=True, help="the node's address")
    register_node.add_argument("--class", dest="node_class", required=True,
                               help="what it provides: GPU.H100, GPU.H200, GPU.B200, RACK.KW")
    register_node.add_argument("--units", type=int, required=True,
                               help="GPU count, or kW for a rack controller")
    register_node.set_defaults(handler=_register_node)
    deregister = provider_sub.add_parser(
        "deregister-node", help="deregister a node, with notice",
        description="Ends NODE's activity in the UptimeRegistry at --at (default: the end "
        "of the last delivery window sold on it or that it may still sell before the "
        "deregistration reaches the exchange, about ten minutes). From then it "
        "sells no window ending later; a time before the end of windows already sold on it is "
        "refused unless --force (those epochs would count as undelivered, and the buyers be "
        "compensated from the provider's bond). A deregistration can only be brought forward.")
    _server_options(deregister)
    deregister.add_argument("--key", required=True, metavar="KEY_OR_FILE",
                            help="the provider account's private key (hex, or a file)")
    deregister.add_argument("--node", required=True, help="the node's address")
    deregister.add_argument("--at", type=_utc_time, default=None, metavar="TIME",
                            help="when, as an ISO 8601 time (UTC unless it says otherwise)")
    deregister.add_argument("--force", action="store_true",
                            help="even before the end of windows already sold on the node")
    deregister.set_defaults(handler=_deregister_node)

    chain = commands.add_parser("chain", help="the exchange's chain: status, attestation proofs")
    sub = chain.add_subparsers(dest="chain_command", metavar="COMMAND", required=True)
    status = sub.add_parser("status", help="contracts, batches, deposits, reconciliation",
                            description="What the running exchange's chain bridge reports: "
                            "the chain, the contracts, the last settled batch and deposit, "
                            "and whether the last reconciliation matched.")
    _server_options(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--batches", type=int, default=None, metavar="N",
                        help="the attestations root of each of the last N settled batches "
                        "(read from the chain; default the last ten)")
    status.set_defaults(handler=_status)
    proof = sub.add_parser(
        "proof", help="prove a node's attestation for an epoch against the chain",
        description="Fetches the archived attestation of NODE for EPOCH and the Merkle proof "
        "of its place in the clearing batch that committed it, recomputes its leaf and "
        "digest and checks the proof here, then has the chain check the attestation "
        "(UptimeRegistry.verifyAttestation) and the proof against the batch's attestations "
        "root (ClearingHouse.verifyProof). Exit status 0 if every check passes, 2 if one "
        "fails, 1 if it cannot be checked (unknown, not yet in a settled batch, no server).")
    _server_options(proof)
    proof.add_argument("--node", required=True, metavar="ADDRESS", help="the node's address")
    proof.add_argument("--epoch", required=True, type=int, help="the uptime epoch")
    proof.add_argument("--json", action="store_true", help="print JSON")
    proof.add_argument("--rpc-url", default=None, metavar="URL",
                       help="ask this chain node for the on-chain checks instead of the "
                       "server (which is the party being checked)")
    proof.add_argument("--deployment", type=Path, default=None, metavar="FILE",
                       help="with --rpc-url: the contracts' addresses (a deployment JSON, "
                       "as cmx serve records it), instead of the ones the server names")
    proof.set_defaults(handler=_proof)
    _register_node_agent(commands)


def _register_node_agent(commands: Any) -> None:
    agent: argparse.ArgumentParser = commands.add_parser(
        "node-agent", help="attest a node's uptime, epoch by epoch (runs on the node)",
        description="Follows the exchange's epochs on its websocket API, solves each epoch's "
        "proof of work, signs it with the node key and submits it; reconnects with backoff "
        "and logs each solve. 'cmx node-agent keygen FILE' makes the key.")
    agent.add_argument("--key-file", type=Path, metavar="FILE", help="the node key")
    agent.add_argument("--url", help="the exchange's websocket API, e.g. ws://HOST:8765/")
    agent.add_argument("--log-level", default="INFO")
    sub = agent.add_subparsers(dest="agent_command", metavar="COMMAND")
    keygen = sub.add_parser("keygen", help="create a node key file (mode 0600)",
                            description="Writes a fresh secp256k1 key to FILE (never over an "
                            "existing file) and prints the node's address, to register.")
    keygen.add_argument("file", type=Path, metavar="FILE")
    agent.set_defaults(handler=_node_agent)


def _node_agent(args: argparse.Namespace) -> int:
    from chain_bridge import node_agent  # noqa: PLC0415 (websockets, coincurve: only here)

    if args.agent_command == "keygen":
        try:
            print(node_agent.keygen(args.file))
        except FileExistsError:
            print(f"cmx node-agent keygen: {args.file} exists; not overwritten", file=sys.stderr)
            return 1
        return 0
    if args.key_file is None or args.url is None:
        print("cmx node-agent: --key-file and --url are required", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return node_agent.main(args.key_file, args.url)


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="the server (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="its port (default 8765)")


def _utc_time(text: str) -> int:
    """An ISO 8601 time as Unix seconds (rounded up; UTC unless it names its offset)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return math.ceil(when.timestamp())


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def micro_usdc(text: str) -> int:
    """``text`` USDC in micro-USDC (at most 6 decimals, positive)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not an amount: {text!r}") from None
    micro = value * MICRO
    if not value.is_finite() or value <= 0 or micro != micro.to_integral_value():
        raise ValueError(f"not a positive amount of USDC with at most 6 decimals: {text!r}")
    return int(micro)


def chain_status(host: str, port: int) -> dict[str, Any]:
    """``/api/chain`` of the server at ``host``:``port`` (`ConnectionError` if it cannot
    tell)."""
    status = _get_json(host, port, "/api/chain", {})
    if status is None:
        raise ConnectionError(f"the server at {host}:{port} reports no chain status")
    return status


def chain_proof(host: str, port: int, node: str, epoch: int) -> dict[str, Any] | None:
    """``/api/chain/proof`` of ``node`` for ``epoch`` (`AttestationArchive.proof`); None if the
    server has archived no such attestation (`ConnectionError` if it cannot tell)."""
    return _get_json(host, port, "/api/chain/proof", {"node": node, "epoch": epoch})


def _get_json(host: str, port: int, path: str, query: dict[str, Any]) -> dict[str, Any] | None:
    """A JSON route of the server's chain bridge; None if it answered "not found"
    (`ConnectionError` if the server cannot tell: unreachable, or without a chain)."""
    url = f"http://{host}:{port}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            found: dict[str, Any] = json.loads(response.read())
            return found
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            if exc.headers.get_content_type() == "application/json":
                return None  # the route answered: no such thing
            raise ConnectionError(f"the server at {host}:{port} runs without a chain, or "
                                  f"has no {path}") from exc
        raise ConnectionError(f"{url}: {exc}") from exc
    except OSError as exc:
        raise ConnectionError(f"cannot reach cmx serve at {host}:{port}: {exc}") from exc


PROOF_CHECKS = {
    "leaf": "leaf recomputed from the fields",
    "digest": "digest recomputed from the fields",
    "local_proof": "the proof leads from the leaf to the root, checked here",
    "root_on_chain": "the root is the batch's attestationsRoots on chain",
    "attestation_on_chain": "UptimeRegistry.verifyAttestation",
    "proof_on_chain": "ClearingHouse.verifyProof against the on-chain root",
}
"""The checks of `check_proof`, and what each means."""


def check_proof(url: str, found: dict[str, Any], rpc_url: str | None = None,
                deployment_file: Path | None = None) -> dict[str, bool | None]:
    """The checks (`PROOF_CHECKS`) of an archived proof ``found`` (`chain_proof`, not
    pending): True or False, None when one cannot be made (no beacon or signature archived).
    The on-chain ones go through the server's ``/chain`` at ``url``, or with ``rpc_url`` to
    that node directly (contract addresses from ``deployment_file``, else the server's).
    `ValueError` for a malformed field, `ChainError` if the server or node refuses."""
    from chain_bridge import deployment as deployments  # noqa: PLC0415
    from chain_bridge.attestation import digest  # noqa: PLC0415 (web3: only here)
    from chain_bridge.batches import attestation_leaf  # noqa: PLC0415
    from chain_bridge.chain import rpc  # noqa: PLC0415
    from chain_bridge.deployment import Deployment  # noqa: PLC0415
    from chain_bridge.merkle import verify_proof  # noqa: PLC0415
    from chain_bridge.wallet import WalletClient, WalletDesk  # noqa: PLC0415
    from engine.clearing import BatchAttestation  # noqa: PLC0415

    def raw(value: Any, name: str) -> bytes:
        if not isinstance(value, str) or not value.startswith("0x"):
            raise ValueError(f"the server's {name} is not 0x hex: {value!r}")
        return bytes.fromhex(value[2:])

    node, epoch, nonce = found["node"], found["epoch"], found["nonce"]
    if not isinstance(node, str) or len(raw(node, "node")) != 20 or \
            not all(type(n) is int and 0 <= n < 2**64 for n in (epoch, nonce)) or \
            len(raw(found["digest"], "digest")) != 32:
        raise ValueError(f"the server's proof is malformed: {found}")
    leaf = attestation_leaf(BatchAttestation(node, epoch, nonce, found["digest"]))
    root = raw(found["root"], "root")
    proof = [raw(sibling, "proof") for sibling in found["proof"]]
    client = WalletClient(url)
    info = client.request({"op": "info"}) if deployment_file is None else \
        msgspec.to_builtins(deployments.load(deployment_file))
    ask: Callable[[dict[str, Any]], dict[str, Any]] = client.request
    if rpc_url is not None:
        chain = rpc(rpc_url)
        found_deployment = msgspec.convert(info, Deployment)
        deployments.check(chain, found_deployment)
        desk = WalletDesk(chain, found_deployment)
        ask = desk.verify_attestation
        info = {**info, "chain_id": chain.chain_id}
    complete = found.get("beacon") is not None and found.get("signature") is not None
    checks: dict[str, bool | None] = {
        "leaf": leaf == raw(found["leaf"], "leaf"),
        "digest": None,
        "local_proof": verify_proof(root, leaf, proof),
    }
    if complete:
        again = digest(int(info["chain_id"]), info["registry"], node, epoch,
                       raw(found["beacon"], "beacon"), nonce)
        checks["digest"] = again == raw(found["digest"], "digest")
    reply = ask({
        "op": "verify_attestation", "node": node, "epoch": epoch,
        "beacon": found["beacon"] if complete else "0x" + "00" * 32, "nonce": nonce,
        "signature": found["signature"] if complete else "0x", "batch_id": found["batch_id"],
        "leaf": "0x" + leaf.hex(), "proof": found["proof"]})
    checks["root_on_chain"] = reply["root"] == "0x" + root.hex()
    checks["attestation_on_chain"] = bool(reply["attestation_valid"]) if complete else None
    checks["proof_on_chain"] = bool(reply["proof_valid"])
    return checks


def _proof(args: argparse.Namespace) -> int:
    from chain_bridge.chain import ChainError  # noqa: PLC0415 (web3: only here)

    node = args.node.lower()
    what = f"the attestation of {node} for epoch {args.epoch}"
    try:
        found = chain_proof(args.host, args.port, node, args.epoch)
        if found is None:
            print(f"cmx chain proof: {what} is unknown to the server (never accepted, or "
                  "accepted before it kept an archive)", file=sys.stderr)
            return 1
        if found.get("pending"):
            if args.json:
                print(json.dumps(found, indent=2, sort_keys=True))
            print(f"cmx chain proof: {what} was accepted but no batch settled on chain "
                  "commits it yet: try again after the next batch", file=sys.stderr)
            return 1
        if found.get("node") != node or found.get("epoch") != args.epoch:
            print(f"cmx chain proof: the server answered with the attestation of "
                  f"{found.get('node')} for epoch {found.get('epoch')}, not {what}",
                  file=sys.stderr)
            return 2
        checks = check_proof(f"ws://{args.host}:{args.port}/chain", found, args.rpc_url,
                             args.deployment)
    except (ConnectionError, ValueError, KeyError, TypeError, ChainError) as exc:
        print(f"cmx chain proof: {exc!s}", file=sys.stderr)
        return 1
    passed = all(checks.values())
    unknown = None in checks.values()
    if args.json:
        print(json.dumps({**found, "checks": checks, "passed": passed}, indent=2,
                         sort_keys=True))
    else:
        print(f"attestation      {found['node']} epoch {found['epoch']} (nonce "
              f"{found['nonce']})")
        print(f"batch            {found['batch_id']}")
        print(f"leaf             {found['leaf']}")
        print(f"root             {found['root']}")
        siblings = len(found["proof"])
        print(f"proof            {siblings} sibling hash{'' if siblings == 1 else 'es'}")
        for name, meaning in PROOF_CHECKS.items():
            verdict = {True: "passed", False: "FAILED", None: "not checked"}[checks[name]]
            print(f"{name.replace('_', ' '):<21}{verdict:<12}({meaning})")
        if passed:
            print("all checks passed")
        elif unknown and False not in checks.values():
            print("not every check could be made: the archive lacks the beacon or signature")
        else:
            print("CHECKS FAILED: " + ", ".join(n for n, ok in checks.items() if ok is False))
    if passed:
        return 0
    return 1 if False not in checks.values() else 2


def _deposit(args: argparse.Namespace) -> int:
    from chain_bridge.chain import ChainError  # noqa: PLC0415 (web3: only here)
    from chain_bridge.wallet import deposit  # noqa: PLC0415

    try:
        amount = micro_usdc(args.amount)
        receipts = deposit(f"ws://{args.host}:{args.port}/chain", read_key(args.key), amount,
                           args.beneficiary)
    except (ValueError, ChainError) as exc:
        print(f"cmx deposit: {exc}", file=sys.stderr)
        return 1
    last = receipts[-1]
    print(f"deposited {args.amount} USDC: transaction {last['tx']} in block {last['block']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    try:
        status = chain_status(args.host, args.port)
        if args.batches is not None:
            status["attestation_roots"] = _attestation_roots(
                f"ws://{args.host}:{args.port}/chain", status["last_batch_id"], args.batches)
    except (ConnectionError, ValueError) as exc:
        print(f"cmx chain status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(f"chain            {status['chain']} (id {status['chain_id']}), block "
              f"{status.get('block')}")
        print(f"ClearingHouse    {status['clearing_house']}  (collateral {status['token']})")
        print(f"last batch       {status['last_batch_id']}  "
              f"(engine: {status['engine_unconfirmed_batches']} waiting)")
        print(f"deposits         {status['last_deposit_id']} on chain, "
              f"{status['last_credited_deposit_id']} credited in batches")
        print(f"reconciled       {'yes' if status['reconciled'] else 'NO'} "
              f"({status['accounts_checked']} account balances checked)")
        print(f"uptime epoch     {status.get('epoch')} "
              f"({status.get('attestations_accepted', 0)} attestations accepted since start)")
        for key in ("halted", "deposit_gap", "error"):
            if status.get(key):
                print(f"{key:<16} {status[key]}")
    return 0 if status["reconciled"] else 2


def _attestation_roots(url: str, last_batch: int, count: int) -> dict[str, str]:
    """The attestations roots of the last ``count`` settled batches, from the chain through
    the server's ``/chain`` (in requests of at most a thousand)."""
    from chain_bridge.chain import ChainError  # noqa: PLC0415 (web3: only here)
    from chain_bridge.wallet import MAX_ROOTS, WalletClient  # noqa: PLC0415

    if count < 1:
        raise ValueError("--batches: at least 1")
    client = WalletClient(url)
    roots: dict[str, str] = {}
    for first in range(max(1, last_batch - count + 1), last_batch + 1, MAX_ROOTS):
        try:
            roots.update(client.request({"op": "attestation_roots", "first": first,
                                         "last": min(last_batch, first + MAX_ROOTS - 1)})
                         ["roots"])
        except ChainError as exc:
            raise ConnectionError(str(exc)) from exc
    return roots


def _register_node(args: argparse.Namespace) -> int:
    from chain_bridge.chain import ChainError  # noqa: PLC0415 (web3: only here)
    from chain_bridge.wallet import register_node  # noqa: PLC0415

    try:
        receipt = register_node(f"ws://{args.host}:{args.port}/chain", read_key(args.key),
                                args.node, args.node_class, args.units)
    except (ValueError, ChainError) as exc:
        print(f"cmx provider register-node: {exc}", file=sys.stderr)
        return 1
    print(f"node {args.node.lower()} registered ({args.node_class}, {args.units} units): "
          f"transaction {receipt['tx']} in block {receipt['block']}")
    return 0


def _deregister_node(args: argparse.Namespace) -> int:
    from chain_bridge.chain import ChainError  # noqa: PLC0415 (web3: only here)
    from chain_bridge.wallet import chain_time, deregister_node  # noqa: PLC0415

    node = args.node.lower()
    try:
        info = _get_json(args.host, args.port, "/api/chain/node", {"node": node})
    except ConnectionError as exc:
        print(f"cmx provider deregister-node: {exc}", file=sys.stderr)
        return 1
    if info is None:
        print(f"cmx provider deregister-node: the exchange knows no node {node}",
              file=sys.stderr)
        return 1
    held, safe = (-(-info[key] // 1_000_000_000) if info.get(key) is not None else None
                  for key in ("sold_until_ns", "safe_from_ns"))
    if args.at is not None and held is not None and args.at < held and not args.force:
        print(f"cmx provider deregister-node: deliveries already sold hold {node} until "
              f"{_iso(held)}; give --at {_iso(held)} or later, or --force",
              file=sys.stderr)
        return 1
    if args.at is not None and safe is not None and args.at < safe and not args.force:
        print(f"cmx provider deregister-node: warning: {node} sells windows until the "
              f"deregistration is sequenced; one ending after {_iso(args.at)} would count "
              f"as undelivered ({_iso(safe)} or later is sure to be safe)", file=sys.stderr)
    url = f"ws://{args.host}:{args.port}/chain"
    try:
        # not before the chain's clock (the registry refuses the past), with room to be mined
        earliest = chain_time(url) + DEREGISTER_MINING_S
        if args.at is not None and args.at < earliest:
            print(f"cmx provider deregister-node: {_iso(args.at)} is too soon for the chain "
                  f"(its clock is at {_iso(earliest - DEREGISTER_MINING_S)}); give "
                  f"--at {_iso(earliest)} or later", file=sys.stderr)
            return 1
        at = args.at if args.at is not None else \
            max(safe or held or math.ceil(time.time()) + DEREGISTER_NOTICE_S, earliest)
        receipt = deregister_node(url, read_key(args.key), node, at)
    except (ValueError, ChainError) as exc:
        print(f"cmx provider deregister-node: {exc}", file=sys.stderr)
        return 1
    print(f"node {node} deregistered from {_iso(at)}: transaction {receipt['tx']} in block "
          f"{receipt['block']}")
    return 0
