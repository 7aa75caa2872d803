"""The chain bridge inside `cmx serve`: options, start-up, the polling loop, the HTTP and
JSON-RPC endpoints.

``--chain embedded`` (the default) runs the in-process EVM and deploys the contracts at the
first start (later starts replay its transaction log); ``--chain anvil`` spawns Anvil on a
free loopback port with its state in the data directory; ``--rpc-url URL`` uses any node,
attaching to the deployment in ``--deployment`` (or the data directory's), deploying only on
a development node. ``--chain none`` runs without a chain. With ``--demo`` on a development
chain, the demo's providers register their nodes and the nodes' agents attest in a process
of their own (`chain_bridge.demo_providers`).

Every chain call runs on one thread of its own, so the event loop never waits on the chain:
each round the loop hands the bridge a view of the engine, the bridge answers with commands
to sequence. Clearing cuts are sequenced every ``--batch-interval`` seconds, or sooner once
``--batch-fills`` fills wait. The server gains ``/api/chain`` (what ``cmx chain status``
shows), ``/api/chain/withdrawal?id=N``, ``/api/chain/proof?node=A&epoch=N`` (what ``cmx
chain proof`` checks, from the attestation archive ``chain/attestations.sqlite``,
`chain_bridge.archive`) and the websocket path ``/chain`` through which ``cmx deposit``
reaches the chain, whichever it is (`chain_bridge.wallet`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol, TypeVar

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from chain_bridge import deployment as deployments
from chain_bridge.anvil import AnvilNode
from chain_bridge.archive import ArchiveError, AttestationArchive
from chain_bridge.attestation import DEFAULT_DIFFICULTY, Attestation
from chain_bridge.bridge import ChainBridge, EngineView
from chain_bridge.chain import ETHER, Chain, ChainError, embedded, rpc
from chain_bridge.collector import Collector
from chain_bridge.demo_providers import (
    AgentProcess,
    NodeKey,
    demo_fleet,
    ensure_node_keys,
    register_demo_nodes,
    spawn_demo_agents,
    stop_demo_agents,
)
from chain_bridge.deployment import Deployment
from chain_bridge.providers import SettledDeliveries, UptimeHistory, providers_report
from chain_bridge.wallet import WalletDesk
from engine.commands import (
    AttestationAccepted,
    BatchConfirmed,
    ClearingCut,
    ExchangeCommand,
    OpenEpoch,
)
from engine.delivery import window_start
from engine.events import ExchangeEvent
from engine.exchange import Exchange
from engine.instruments import spot_symbol
from engine.keys import dev_keys, read_key
from engine.ledger import INSURANCE_FUND

log = logging.getLogger("cmx.chain")

T = TypeVar("T")

POLL_MS = 200
DEREGISTER_LEAD_NS = 10 * 60 * 1_000_000_000
"""How long a deregistration may take to be sequenced (mined, confirmed, polled): the node
sells windows until then."""
MAX_UINT64_DIGITS = 20
STATUS_S = 1.0
"""How often the chain's part of ``/api/chain`` is read again."""
DEV_ETHER = 100 * ETHER
DEV_TOKENS = 10_000_000 * 10**6
"""Test USDC minted to each development account on a development chain."""
INSURANCE_FUNDING = 1_000_000 * 10**6
"""What the operator deposits for an empty insurance fund on a development chain (the chain
holds no debts: a cover the fund cannot pay halts clearing)."""
DEMO_DEPOSIT = 1_000_000 * 10**6
"""What ``--demo`` deposits for each development account (the demo market's funding)."""

class GatewayLike(Protocol):
    """What the bridge uses of the gateway (`gateway.hub.Gateway`)."""

    exchange: Exchange
    attest_handler: Any
    event_listeners: list[Callable[[ExchangeEvent, int], None]]

    def publish_attest(self, payload: str) -> None:
        """Announce an epoch on the ``attest`` channel."""

    def submit(self, command: ExchangeCommand, waiter: Any = None) -> int:
        """Sequence a command."""


class ServerLike(Protocol):
    """What the bridge uses of the server (`gateway.server.ExchangeServer`)."""

    routes: dict[str, Callable[[dict[str, str]], Any]]
    socket_routes: dict[str, Callable[[ServerConnection], Awaitable[None]]]
    port: int
    """The port it listens on (0 until it listens, if it was asked to pick one)."""

    def pump(self) -> None:
        """Commit what was submitted."""


async def start(args: argparse.Namespace, gateway: GatewayLike,
                server: ServerLike) -> Callable[[], Awaitable[None]]:
    """Start the chain service for `cmx serve` with its options; returns its stop."""
    service = ChainService(args, gateway, server)
    await service.start()
    return service.stop


class ChainService:
    """The bridge's thread, its loop in the server's event loop, and its endpoints."""

    def __init__(self, args: argparse.Namespace, gateway: GatewayLike,
                 server: ServerLike) -> None:
        self.args = args
        self.gateway = gateway
        self.server = server
        self.dir: Path = args.data_dir / "chain"
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="cmx-chain")
        self.chain: Chain | None = None
        self.bridge: ChainBridge | None = None
        self.desk: WalletDesk | None = None
        self.anvil: AnvilNode | None = None
        self._status: dict[str, Any] = {"state": "starting"}
        self._task: asyncio.Task[None] | None = None
        self._last_cut = time.monotonic()
        self.epoch_ns = int(args.epoch_seconds * 1_000_000_000)
        self.collector: Collector | None = None
        self.attestations_accepted = 0
        self._status_at = 0.0  # time.monotonic() of the chain's last status
        self._providers_report: dict[str, Any] | None = None
        self._providers_at = 0.0
        self.history = UptimeHistory()  # what /api/providers reports uptime from
        self.settled = SettledDeliveries(gateway.exchange)
        """The latest deliveries from nodes settled (/api/providers), from the events."""
        self._observed = 0.0  # time.monotonic() of the history's last look at the engine
        self.archive: AttestationArchive | None = None
        self.demo_nodes: list[NodeKey] = []
        """``--demo`` on a development chain: the demo providers' nodes."""
        self.demo_agents: AgentProcess | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def start(self) -> None:
        """Connect, deploy or attach, fund the development accounts, start polling."""
        try:
            await self._call(self._open)
        except BaseException:
            await self._call(self._close)
            self._thread.shutdown()
            raise
        assert self.bridge is not None
        self._status = self._with_engine(await self._call(self._status_now))
        self.server.routes["/api/chain"] = lambda _query: self._status
        self.server.routes["/api/chain/withdrawal"] = self._withdrawal
        self.server.routes["/api/providers"] = self._providers
        self.gateway.event_listeners.append(self.settled.on_event)
        self.server.routes["/api/chain/proof"] = self._proof
        self.server.routes["/api/chain/node"] = self._node
        self.server.socket_routes["/chain"] = self._wallet
        self.gateway.attest_handler = self._attest
        self._task = asyncio.create_task(self._loop())
        log.info("chain %s (id %d): ClearingHouse %s, collateral %s, last batch %d",
                 self._status["chain"], self._status["chain_id"],
                 self._status["clearing_house"], self._status["token"],
                 self._status["last_batch_id"])

    async def stop(self) -> None:
        """Stop polling, attesting and the demo's node agents; close the archive; stop Anvil
        if this process started it."""
        self.gateway.attest_handler = None  # attest ops are answered "unavailable" from now
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        if self.demo_agents is not None:
            status = await asyncio.to_thread(stop_demo_agents, self.demo_agents)
            log.info("demo node agents stopped (exit status %d)", status)
        await self._call(self._close)
        self._thread.shutdown()

    # --- on the chain thread ------------------------------------------------------------

    def _open(self) -> None:
        args = self.args
        self.dir.mkdir(parents=True, exist_ok=True)
        if args.rpc_url is not None:
            chain = rpc(args.rpc_url)
        elif args.chain == "anvil":
            self.anvil = AnvilNode(state=self.dir / "anvil-state.json",
                                   log=self.dir / "anvil.log")
            self.anvil.start()
            chain = rpc(self.anvil.url, kind="anvil")
        else:
            chain = embedded(self.dir / "embedded-transactions.log")
        self.chain = chain
        operator = self._operator_key(chain)
        path: Path = args.deployment or self.dir / "deployment.json"
        if path.exists():
            found = deployments.load(path)
            deployments.check(chain, found)
        elif chain.local:
            chain.fund(operator.address, DEV_ETHER)
            found = deployments.deploy(chain, operator,
                                       forced_withdrawal_delay_s=args.forced_withdrawal_delay,
                                       difficulty=args.attest_difficulty or DEFAULT_DIFFICULTY)
            deployments.save(found, path)
            log.info("contracts deployed on the %s chain, recorded in %s", chain.kind, path)
        else:
            raise ChainError(f"no deployment at {path}: give --deployment for this chain")
        if chain.local:
            chain.fund(operator.address, DEV_ETHER)
            self._fund_dev_accounts(chain, found, operator, deposit=args.demo)
            if args.demo:
                self._register_demo_nodes(chain, found)
        confirmations = args.confirmations if args.confirmations is not None else \
            0 if chain.local else 12
        self.bridge = ChainBridge(chain, found, operator, confirmations=confirmations)
        self.desk = WalletDesk(chain, found)
        self.archive = AttestationArchive(self.dir / "attestations.sqlite")
        target = int(self.bridge.registry.functions.target().call())
        self.collector = Collector(chain_id=chain.chain_id, registry=found.registry,
                                   target=target, epoch_ns=self.epoch_ns)

    def _operator_key(self, chain: Chain) -> LocalAccount:
        if self.args.operator_key is not None:
            key: LocalAccount = Account.from_key(read_key(self.args.operator_key))
            return key
        if not chain.local:
            raise ChainError("give --operator-key for a chain other than a development one")
        path = self.dir / "operator.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("0x" + secrets.token_hex(32) + "\n")
        generated: LocalAccount = Account.from_key(read_key(str(path)))
        return generated

    def _fund_dev_accounts(self, chain: Chain, found: Deployment, operator: LocalAccount, *,
                           deposit: bool) -> None:
        """The insurance fund when it is empty (the operator deposits for it), ether and test
        USDC for the development accounts; with ``deposit``, each deposits the demo's funding
        once."""
        token = chain.contract("CollateralToken", found.token)
        house = chain.contract("ClearingHouse", found.clearing_house)
        fund = Web3.to_checksum_address(INSURANCE_FUND)
        if house.functions.balanceOf(fund).call() == 0:
            chain.transact(operator, token.functions.mint(operator.address, INSURANCE_FUNDING),
                           "minting test USDC")
            chain.transact(operator, token.functions.approve(house.address, INSURANCE_FUNDING),
                           "approving the ClearingHouse")
            chain.transact(operator, house.functions.depositFor(fund, INSURANCE_FUNDING),
                           "funding the insurance fund")
        for address, key in dev_keys():
            account = Web3.to_checksum_address(address)
            chain.fund(account, DEV_ETHER)
            if token.functions.balanceOf(account).call() == 0 and \
                    house.functions.balanceOf(account).call() == 0:
                chain.transact(operator, token.functions.mint(account, DEV_TOKENS),
                               "minting test USDC")
            if deposit and house.functions.balanceOf(account).call() == 0:
                signer = Account.from_key(key)
                chain.transact(signer, token.functions.approve(house.address, DEMO_DEPOSIT),
                               "approving the ClearingHouse")
                chain.transact(signer, house.functions.deposit(DEMO_DEPOSIT), "deposit")

    def _register_demo_nodes(self, chain: Chain, found: Deployment) -> None:
        """The demo providers' nodes (`chain_bridge.demo_providers`): their keys in
        ``chain/demo-nodes``, made once; those not registered yet are registered."""
        fleet = demo_fleet(self.gateway.exchange.markets.values())
        self.demo_nodes = ensure_node_keys(self.dir / "demo-nodes", fleet)
        registered = register_demo_nodes(chain, found, self.demo_nodes)
        log.info("demo providers: %d nodes (%d registered now), keys in %s",
                 len(self.demo_nodes), len(registered), self.dir / "demo-nodes")

    def _poll(self, view: EngineView, epoch: int | None,
              ) -> tuple[list[ExchangeCommand], dict[str, Any]]:
        assert self.bridge is not None and self.chain is not None
        try:
            commands = self.bridge.poll(view)
            if epoch is not None:  # its beacon: the latest block's hash, unknown before now
                beacon = self.chain.w3.eth.get_block("latest")["hash"]
                commands.append(OpenEpoch(epoch, "0x" + bytes(beacon).hex(),
                                          epoch * self.epoch_ns, self.epoch_ns))
            self.bridge.last_error = None
        except Exception as exc:  # an outage (any client error): try again next round
            commands = []
            if self.bridge.last_error != str(exc):
                log.warning("chain unavailable, clearing waits: %s", exc)
            self.bridge.last_error = str(exc)
        return commands, self._status_now(fresh=time.monotonic() - self._status_at >= STATUS_S)

    def _status_now(self, *, fresh: bool = True) -> dict[str, Any]:
        """The chain's part of what ``/api/chain`` answers (a dozen calls), asked again only
        if ``fresh`` (on the chain thread: the engine's part is added on the event loop,
        `_with_engine`)."""
        assert self.bridge is not None
        if not fresh:
            return dict(self._status)
        self._status_at = time.monotonic()
        try:
            return self.bridge.status()
        except Exception as exc:  # the node is down: show what is known
            return {**self._status, "error": str(exc)}

    def _with_engine(self, status: dict[str, Any]) -> dict[str, Any]:
        """``status`` with the engine's part, read now (on the event loop, as the engine
        is)."""
        clearing = self.gateway.exchange.clearing
        status["engine_next_batch_id"] = clearing.next_batch_id
        status["engine_unconfirmed_batches"] = len(clearing.unconfirmed)
        status["attestations_accepted"] = self.attestations_accepted
        last = self.gateway.exchange.uptime.last_epoch()
        status["epoch"] = last.epoch if last is not None else None
        return status

    def _close(self) -> None:
        if self.archive is not None:
            self.archive.close()
        if self.anvil is not None:
            self.anvil.stop()

    # --- on the event loop ------------------------------------------------------------

    async def _loop(self) -> None:
        poll_s = POLL_MS / 1000
        self._sync_collector()
        while True:
            if self.demo_nodes and self.demo_agents is None and self.server.port:
                self._start_demo_agents()
            self._maybe_cut()
            exchange = self.gateway.exchange
            clearing, uptime = exchange.clearing, exchange.uptime
            if time.monotonic() - self._observed >= 1.0:  # before the engine forgets any
                self._observed = time.monotonic()
                self.history.observe(uptime)
            view = EngineView(max(exchange.deposits_seen, default=0),
                              frozenset(clearing.forced_seen), tuple(clearing.unconfirmed),
                              frozenset(uptime.nodes),
                              frozenset(n for n, node in uptime.nodes.items()
                                        if node.deregistered_at is not None))
            epoch = time.time_ns() // self.epoch_ns
            last = uptime.last_epoch()
            due = epoch if last is None or epoch > last.epoch else None
            try:
                commands, status = await self._call(self._poll, view, due)
                self._status = self._with_engine(status)
            except Exception:
                log.exception("chain bridge round failed")
                commands = []
            for command in commands:
                if isinstance(command, BatchConfirmed):
                    self._archive_batch(view, command.batch_id)
                self.gateway.submit(command)
            if commands:
                self.server.pump()
            await asyncio.sleep(poll_s)
            self._sync_collector()

    def _start_demo_agents(self) -> None:
        """The demo nodes' agents, in a process of their own, on the server's port (they
        reconnect until it listens)."""
        host = self.args.host if self.args.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        url = f"ws://{f'[{host}]' if ':' in host else host}:{self.server.port}/"
        log_path = self.dir / "demo-nodes" / "agents.log"
        self.demo_agents = spawn_demo_agents(
            url, [k.path for k in self.demo_nodes if not k.node.misbehaving],
            [k.path for k in self.demo_nodes if k.node.misbehaving], log_path)
        log.info("demo node agents (process %d) attest %d nodes on %s; their log: %s",
                 self.demo_agents.pid, len(self.demo_nodes), url, log_path)

    def _sync_collector(self) -> None:
        """The collector learns the engine's nodes and its newest epoch (which it then
        announces on the ``attest`` channel)."""
        assert self.collector is not None
        uptime = self.gateway.exchange.uptime
        collector = self.collector
        for address, node in uptime.nodes.items():
            if address not in collector.nodes:
                collector.register(address, node.provider, node.underlying, node.units)
            if node.deregistered_at is not None:
                collector.deregister(address, node.deregistered_at)
        last = uptime.last_epoch()
        if last is not None and (collector.current is None or last.epoch > collector.current):
            deadline = last.start_ts + last.length_ns
            collector.open_epoch(last.epoch, last.beacon, last.start_ts, deadline)
            collector.forget(last.epoch - 1)
            self.gateway.publish_attest(json.dumps({
                "channel": "attest", "type": "epoch", "epoch": last.epoch,
                "beacon": last.beacon, "target": f"0x{collector.target:064x}",
                "deadline_ns": deadline, "chain_id": collector.chain_id,
                "registry": collector.registry}))

    def _attest(self, request: Any, now_ns: int) -> tuple[str, str] | None:
        """The ``attest`` op: the collector's verdict; an accepted one is sequenced."""
        assert self.collector is not None
        try:
            attestation = Attestation(request.node.lower(), request.epoch, request.beacon,
                                      request.nonce, request.signature.lower())
        except (TypeError, ValueError) as exc:
            return "malformed", str(exc)
        verdict = self.collector.submit(attestation, now_ns)
        if verdict.reason is not None:
            return verdict.reason.value, verdict.detail
        assert self.archive is not None
        try:  # its beacon and signature, for proofs; the uptime counts even if this fails
            self.archive.accepted(attestation, verdict.digest)
        except ArchiveError:
            log.exception("attestation archive: %s epoch %d not recorded", attestation.node,
                          attestation.epoch)
        self.gateway.submit(AttestationAccepted(attestation.node, attestation.epoch,
                                                attestation.nonce, verdict.digest))
        self.server.pump()
        self.attestations_accepted += 1
        return None

    def _maybe_cut(self) -> None:
        now = time.monotonic()
        fills = len(self.gateway.exchange.clearing.fills)
        if now - self._last_cut >= self.args.batch_interval or fills >= self.args.batch_fills:
            self._last_cut = now
            self.gateway.submit(ClearingCut())
            self.server.pump()

    def _providers(self, _query: dict[str, str]) -> dict[str, Any]:
        """``/api/providers``, computed at most once a second however many pages poll it."""
        now = time.monotonic()
        if self._providers_report is None or now - self._providers_at >= STATUS_S:
            self._providers_report = providers_report(self.gateway.exchange, self.history,
                                                      time.time_ns(), self.settled)
            self._providers_at = now
        return self._providers_report

    def _node(self, query: dict[str, str]) -> dict[str, Any] | None:
        """A registered node as the engine knows it, for ``cmx provider deregister-node``:
        until when deliveries already sold hold it (``sold_until_ns``: the latest end of an
        open delivery window allocated to it, None if none), and from when a deregistration
        sent now is sure to honour every sale (``safe_from_ns``: also past the window a fill
        could still sell before the deregistration is sequenced, `DEREGISTER_LEAD_NS`)."""
        exchange = self.gateway.exchange
        node = exchange.uptime.nodes.get(query.get("node", "").lower())
        if node is None:
            return None
        ends = [d.window_end for d in exchange.deliveries.values()
                if any(held == node.node for held, _ in d.allocation or ())]
        sold_until = max(ends, default=None)
        # the node sells until the chain's deregistration is sequenced: a fill DEREGISTER_LEAD
        # from now would sell up to the end of the window after it
        market = exchange.markets.get(spot_symbol(node.underlying))
        safe_from = sold_until
        if market is not None:
            lead = window_start(time.time_ns() + DEREGISTER_LEAD_NS, market.window_ns)
            safe_from = max(sold_until or 0, lead + market.window_ns)
        return {"node": node.node, "provider": node.provider, "underlying": node.underlying,
                "units": node.units, "deregistered_at_ns": node.deregistered_at,
                "sold_until_ns": sold_until, "safe_from_ns": safe_from}

    def _withdrawal(self, query: dict[str, str]) -> dict[str, Any] | None:
        bridge = self.bridge
        if bridge is None or not query.get("id", "").isdigit():
            return None
        withdrawal_id = int(query["id"])
        block = bridge.paid_withdrawals.get(withdrawal_id)
        return {"withdrawal_id": withdrawal_id, "paid": block is not None, "block": block}

    def _archive_batch(self, view: EngineView, batch_id: int) -> None:
        """The archive records a batch the chain confirmed, before the engine drops it."""
        assert self.archive is not None
        for batch in view.unconfirmed:
            if batch.batch_id == batch_id:
                try:  # clearing goes on without it: only proofs are lost
                    self.archive.confirmed(batch)
                except ArchiveError:
                    log.exception("attestation archive: batch %d not recorded", batch_id)
                return

    def _proof(self, query: dict[str, str]) -> dict[str, Any] | None:
        """``/api/chain/proof?node=A&epoch=N``: `AttestationArchive.proof` (None: 404)."""
        node, epoch = query.get("node", ""), query.get("epoch", "")
        if self.archive is None or not (epoch.isascii() and epoch.isdigit()) or \
                len(epoch) > MAX_UINT64_DIGITS:
            return None
        return self.archive.proof(node, int(epoch))

    async def _wallet(self, connection: ServerConnection) -> None:
        """``/chain``: one JSON request per frame, answered in order (`WalletDesk`)."""
        assert self.desk is not None
        try:
            async for frame in connection:
                try:
                    request = json.loads(frame)
                except ValueError:
                    request = None
                if not isinstance(request, dict):
                    reply: dict[str, Any] = {"error": "expected a JSON object"}
                else:
                    reply = await self._call(self.desk.answer, request)
                await connection.send(json.dumps(reply))
        except ConnectionClosed:
            return
