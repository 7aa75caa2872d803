"""The compute providers of ``cmx serve --demo`` on a development chain. DEVELOPMENT ONLY.

Development accounts 0, 1 and 2 (makers in the demo, see `gateway.demo`) are providers: each
has one node per underlying traded spot (GPU.H100, GPU.H200, GPU.B200 and RACK.KW with the
shipped products), registered in the UptimeRegistry and attested epoch by epoch by a node
agent, so the demo's spot sells of these accounts are backed by attested nodes and their
deliveries settle from attestations (`engine.uptime`). A demo node stands for a pod of
machines, not one: its units are what a maker sells in a delivery window, `POD_NOTIONAL`
per hour of the window at the product's reference price (60 full sell ladders of the demo's
makers, `gateway.demo_market`), so they rarely run out.

One more node misbehaves: provider 1's second GPU.H100 node (`MISBEHAVING`), `FAULTY_NOTIONAL`
of units (one ladder). Its key is made so that its address sorts before its sibling's, so the engine
allocates deliveries to it first (in address order) and its missed epochs show up as
undelivered node-epochs. Epoch by epoch (`misbehaviour`, seeded) it attests, skips the
epoch (1 in 4), sends a stale attestation (1 in 10, refused ``late``) or one solved against
a wrong beacon (1 in 10, refused ``wrong_beacon``).

Node keys live in one directory (``DATA_DIR/chain/demo-nodes`` when the server makes them),
made once, mode 0600 (`ensure_node_keys`); `register_demo_nodes` registers on chain those not
registered yet. The agents run in one process of their own, never in the server's (the
proof of work takes CPU): ``python -m chain_bridge.demo_providers --url ws://HOST:PORT/
[--misbehaving KEY_FILE] KEY_FILE...``, started and stopped by `spawn_demo_agents` and
`stop_demo_agents`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec

from chain_bridge.attestation import address_of
from chain_bridge.node_agent import Conduct, NodeAgent, keygen, read_key_file
from engine.keys import dev_keys
from engine.market import Market

if TYPE_CHECKING:
    from chain_bridge.chain import Chain
    from chain_bridge.deployment import Deployment

log = logging.getLogger("cmx.demo_providers")

HOUR_NS: Final = 3600 * 1_000_000_000
PROVIDERS: Final = (0, 1, 2)
"""The development accounts that provide compute."""
POD_NOTIONAL: Final = 30_000 * 1_000_000
"""A node's units: this much notional (micro-USDC at the reference price) per hour of its
delivery window: 60 of the demo makers' full sell ladders (5 levels of at most 100 USDC),
where the busiest maker sells about 50 an hour."""
FAULTY_NOTIONAL: Final = 500 * 1_000_000
"""The misbehaving node's units, as notional: one full sell ladder."""
MISBEHAVING: Final = (1, "GPU.H100")
"""The provider and underlying of the extra, misbehaving node (the first underlying traded
if that one is not)."""
SEED: Final = 1
"""Seeds the misbehaving node's conduct."""
FAULTS_IN: Final = 20
FAULTS: Final = ((Conduct.SKIP, 5), (Conduct.STALE, 2), (Conduct.WRONG_BEACON, 2))
"""How many of `FAULTS_IN` epochs the misbehaving node spends on each fault, on average (it
attests the rest)."""
ZERO_ADDRESS: Final = "0x" + "0" * 40
STOP_WAIT_S: Final = 5.0

AgentProcess = subprocess.Popen[bytes]


class DemoNode(msgspec.Struct, frozen=True):
    """One node of the demo fleet: ``provider`` is a development account's index."""

    name: str
    """Its key file is ``<name>.key``."""
    provider: int
    underlying: str
    units: int
    misbehaving: bool = False


class NodeKey(msgspec.Struct, frozen=True):
    """A demo node with its key file and address."""

    node: DemoNode
    path: Path
    address: str


def demo_fleet(markets: Iterable[Market]) -> list[DemoNode]:
    """The demo's nodes for the spot ``markets`` (an exchange's): one per provider and spot
    underlying, and the misbehaving one."""
    spots = sorted((m for m in markets if m.spot), key=lambda m: m.instrument.underlying)
    if not spots:
        return []
    fleet = []
    for provider in PROVIDERS:
        for market in spots:
            hours = max(1, market.window_ns // HOUR_NS)
            fleet.append(DemoNode(f"p{provider}-{market.instrument.underlying}", provider,
                                  market.instrument.underlying,
                                  units_of(market, POD_NOTIONAL * hours)))
    provider, wanted = MISBEHAVING
    market = next((m for m in spots if m.instrument.underlying == wanted), spots[0])
    underlying = market.instrument.underlying
    fleet.append(DemoNode(f"p{provider}-{underlying}-faulty", provider, underlying,
                          units_of(market, FAULTY_NOTIONAL), misbehaving=True))
    return fleet


def units_of(market: Market, notional: int) -> int:
    """How many units (lots) of ``market`` ``notional`` micro-USDC buys at its reference
    price, at least one."""
    return max(1, notional // (market.instrument.reference_price_ticks * market.tick_value))


def ensure_node_keys(directory: Path, fleet: Sequence[DemoNode]) -> list[NodeKey]:
    """The fleet's node keys in ``directory``: made once (mode 0600, as ``cmx node-agent
    keygen`` makes them), read again on a restart. A misbehaving node's key is made after
    its honest sibling's (same provider and underlying), with an address sorting before it."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys: dict[str, NodeKey] = {}
    for node in sorted(fleet, key=lambda n: n.misbehaving):  # the honest ones first
        path = directory / f"{node.name}.key"
        if not path.exists():
            sibling = next((k.address for k in keys.values()
                            if (k.node.provider, k.node.underlying) ==
                            (node.provider, node.underlying)), None) \
                if node.misbehaving else None
            address = keygen(path)
            while sibling is not None and address >= sibling:
                path.unlink()
                address = keygen(path)
        keys[node.name] = NodeKey(node, path, address_of(read_key_file(path)))
    return [keys[node.name] for node in fleet]


def register_demo_nodes(chain: Chain, deployment: Deployment,
                        keys: Sequence[NodeKey]) -> list[str]:
    """Register in the UptimeRegistry each of ``keys``' nodes not registered yet, signed by
    its provider's development key; the addresses registered now."""
    from eth_account import Account  # noqa: PLC0415 (web3 loads only where needed)
    from web3 import Web3  # noqa: PLC0415

    registry = chain.contract("UptimeRegistry", deployment.registry)
    accounts = dev_keys()
    registered = []
    for key in keys:
        node = Web3.to_checksum_address(key.address)
        provider, provider_key = accounts[key.node.provider]
        owner = str(registry.functions.nodes(node).call()[0]).lower()
        if owner != ZERO_ADDRESS:
            if owner != provider:
                log.warning("demo node %s is registered to %s, not to %s", key.address, owner,
                            provider)
            continue
        label = key.node.underlying.encode("ascii").ljust(32, b"\0")
        chain.transact(Account.from_key(provider_key),
                       registry.functions.registerNode(node, label, key.node.units),
                       f"registering demo node {key.node.name}")
        registered.append(key.address)
    return registered


def misbehaviour(node: str, seed: int = SEED) -> Callable[[int], Conduct]:
    """The faulty node's conduct, epoch by epoch: the same for an epoch every time it is
    asked (a reconnect does not change it)."""

    def conduct(epoch: int) -> Conduct:
        roll = random.Random(f"{seed}:{node}:{epoch}").randrange(FAULTS_IN)
        for fault, odds in FAULTS:
            if roll < odds:
                return fault
            roll -= odds
        return Conduct.ATTEST

    return conduct


# --- the agents' process ---------------------------------------------------------------------


async def run_agents(url: str, key_files: Sequence[Path], misbehaving: Sequence[Path] = (), *,
                     seed: int = SEED, parent_pid: int | None = None) -> None:
    """One `NodeAgent` on ``url`` per key file of ``key_files`` (honest) and ``misbehaving``
    (faulty), until SIGINT or SIGTERM (or until process ``parent_pid`` is no longer the
    parent)."""
    faulty = {path.resolve() for path in misbehaving}
    agents = []
    for path in dict.fromkeys([*key_files, *misbehaving]):
        key = read_key_file(path)
        conduct = misbehaviour(address_of(key), seed) if path.resolve() in faulty else None
        agents.append(NodeAgent(key, url, conduct))
    log.info("%d node agents (%d misbehaving) on %s", len(agents), len(faulty), url)

    def stop() -> None:
        for agent in agents:
            agent.stop()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)

    async def orphaned() -> None:
        while os.getppid() == parent_pid:
            await asyncio.sleep(1.0)
        log.warning("the server (process %s) is gone: stopping", parent_pid)
        stop()

    watch = asyncio.create_task(orphaned()) if parent_pid is not None else None
    try:
        await asyncio.gather(*(agent.run() for agent in agents))
    finally:
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chain_bridge.demo_providers``."""
    parser = argparse.ArgumentParser(
        prog="python -m chain_bridge.demo_providers",
        description="Runs the demo's node agents, one per key file, in this process.")
    parser.add_argument("--url", required=True, help="the exchange's websocket API, e.g. "
                        "ws://127.0.0.1:8765/")
    parser.add_argument("--misbehaving", type=Path, action="append", default=[],
                        metavar="KEY_FILE", help="run an agent for this key as a faulty node "
                        "(repeatable; not listed again as KEY_FILE)")
    parser.add_argument("--seed", type=int, default=SEED, help="seeds the faulty conduct")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="stop once this process is no longer the parent")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("key_files", type=Path, nargs="*", metavar="KEY_FILE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from websockets.exceptions import InvalidURI  # noqa: PLC0415

    try:
        asyncio.run(run_agents(args.url, args.key_files, args.misbehaving, seed=args.seed,
                               parent_pid=args.parent_pid))
    except (OSError, ValueError, InvalidURI) as exc:
        log.error("%s", exc)
        return 2
    return 0


def spawn_demo_agents(url: str, key_files: Sequence[Path], misbehaving: Sequence[Path],
                      log_path: Path) -> AgentProcess:
    """Start the agents' process (this Python) for ``key_files`` (honest) and ``misbehaving``
    (faulty), appending its log to ``log_path``; it stops by itself if this process dies."""
    command = [sys.executable, "-m", "chain_bridge.demo_providers", "--url", url,
               "--parent-pid", str(os.getpid())]
    for path in misbehaving:
        command += ["--misbehaving", str(path)]
    command += [str(path) for path in key_files]
    with log_path.open("ab") as log_file:
        # a session of its own: a Ctrl-C at the terminal reaches the server, which stops it
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop_demo_agents(process: AgentProcess, timeout: float = STOP_WAIT_S) -> int:
    """Stop the agents' process: SIGTERM, then SIGKILL if it has not ended in ``timeout``
    seconds; its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


if __name__ == "__main__":
    sys.exit(main())
