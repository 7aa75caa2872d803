"""Provider nodes, uptime epochs and attested node-epochs: what a spot seller can deliver.

Providers register nodes on chain (`RegisterNode`), each serving one spot underlying with a
number of units (GPUs for ``GPU.*``, kW for ``RACK.KW``). Time is cut into numbered epochs
(`OpenEpoch`); in each, a node that is up proves it with an attestation the collector has
verified (`AttestationAccepted`), and the node-epoch counts as attested. The rules:

* An attestation counts if its node is registered and active at its epoch's start (not
  deregistered at or before it) and the epoch is known; a node attests an epoch once.
* Sellable nodes of a provider for a delivery window: its nodes of that underlying that
  attested at least one of the last `ATTESTED_EPOCHS` epochs opened and are not
  deregistered before the window's end. A provider with a node of an underlying sells it
  only from sellable nodes: its open sells plus a new one must fit in their units less what
  the window's deliveries already hold on them (`Uptime.free_units`). So lots held on a node
  that stopped attesting or was deregistered take nothing from the others.
* At a fill, the delivery's lots go to the seller's sellable nodes in address order, each
  taking up to its units less what earlier deliveries of the same window already hold on it.
  Lots left over (the nodes stopped attesting since the sell order was entered) stay
  unallocated, and count as undelivered.
* When the window has closed, its epochs are those opened with a start in
  [window start, window end), E of them. Required node-epochs: lots x E; delivered: the sum
  over allocated nodes of units x the window's epochs the node attested. A window with no
  epoch opened requires lots x (window length // the last epoch's length), at least one,
  and nothing of it is delivered. An epoch opened after the window settled counts for
  nothing.
* Epochs must have increasing numbers and start times; they may leave gaps or overlap.
  Attestations and epochs are forgotten once no open delivery's window and not the last
  `ATTESTED_EPOCHS` epochs include them (at each `OpenEpoch`); nodes are kept for good, as
  the chain keeps them.
"""

from __future__ import annotations

import re

import msgspec

from engine.commands import AttestationAccepted, DeregisterNode, OpenEpoch, RegisterNode
from engine.delivery import Delivery
from engine.events import Reason
from engine.ledger import SYSTEM_ACCOUNTS, is_address

ATTESTED_EPOCHS = 3
"""A node sells only if it attested one of the last this many epochs."""

_ZERO_ADDRESS = "0x" + "0" * 40
_HASH = re.compile(r"0x[0-9a-f]{64}")


class Node(msgspec.Struct, array_like=True):
    """A provider's registered node (a machine or a rack controller)."""

    node: str
    provider: str
    underlying: str
    units: int
    deregistered_at: int | None = None  # sells no window ending after it


class Epoch(msgspec.Struct, frozen=True, array_like=True):
    """One uptime epoch: nodes attest against its beacon."""

    epoch: int
    beacon: str
    start_ts: int
    length_ns: int


class UptimeState(msgspec.Struct, frozen=True, array_like=True):
    """The uptime part of the exchange's canonical state."""

    nodes: list[Node]  # by address
    epochs: list[Epoch]  # by number
    attested: list[tuple[str, int]]  # (node, epoch), sorted
    allocated: list[tuple[str, int, int]]  # (node, window start, units), sorted


def _is_hash(value: str) -> bool:
    """Whether ``value`` is ``0x`` and 32 bytes in lower-case hex."""
    return _HASH.fullmatch(value) is not None


class Uptime:
    """Registered nodes, recent epochs, attested node-epochs and allocations to nodes."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.epochs: dict[int, Epoch] = {}  # in increasing number (opened in that order)
        self.attested: set[tuple[str, int]] = set()  # (node, epoch)
        self.allocated: dict[tuple[str, int], int] = {}  # (node, window start) -> units
        self._fleets: dict[tuple[str, str], list[str]] = {}  # (provider, underlying) -> nodes

    # --- commands -------------------------------------------------------------------------
    # Each returns why the command is refused, or None once it is applied.

    def register(self, cmd: RegisterNode) -> Reason | None:
        """Add a node. The caller has checked that its underlying is traded spot."""
        if not is_address(cmd.node) or cmd.node == _ZERO_ADDRESS:
            return Reason.INVALID_NODE
        if not is_address(cmd.provider) or cmd.provider in SYSTEM_ACCOUNTS:
            return Reason.INVALID_ACCOUNT
        if cmd.units <= 0:
            return Reason.INVALID_AMOUNT
        if cmd.node in self.nodes:
            return Reason.NODE_REGISTERED
        self._add(Node(cmd.node, cmd.provider, cmd.underlying, cmd.units))
        return None

    def deregister(self, cmd: DeregisterNode) -> Reason | None:
        """End a node's activity at ``effective_ts``; a later call only brings it forward."""
        node = self.nodes.get(cmd.node)
        if node is None:
            return Reason.UNKNOWN_NODE
        if cmd.effective_ts < 0:
            return Reason.INVALID_AMOUNT
        if node.deregistered_at is not None and cmd.effective_ts >= node.deregistered_at:
            return Reason.NODE_DEREGISTERED
        node.deregistered_at = cmd.effective_ts
        return None

    def open_epoch(self, cmd: OpenEpoch, keep_from: int) -> Reason | None:
        """Open an epoch, then forget epochs (and their attestations) that start before
        ``keep_from`` and are not among the last `ATTESTED_EPOCHS`."""
        if not _is_hash(cmd.beacon):
            return Reason.INVALID_BEACON
        last = self.last_epoch()
        if cmd.epoch < 0 or cmd.start_ts < 0 or cmd.length_ns <= 0:
            return Reason.INVALID_EPOCH
        if last is not None and (cmd.epoch <= last.epoch or cmd.start_ts <= last.start_ts):
            return Reason.INVALID_EPOCH
        self.epochs[cmd.epoch] = Epoch(cmd.epoch, cmd.beacon, cmd.start_ts, cmd.length_ns)
        recent = list(self.epochs)[-ATTESTED_EPOCHS:]
        self.epochs = {n: e for n, e in self.epochs.items()
                       if e.start_ts >= keep_from or n in recent}
        self.attested = {(node, n) for node, n in self.attested if n in self.epochs}
        return None

    def attest(self, cmd: AttestationAccepted) -> Reason | None:
        """Count the node-epoch as attested."""
        if not _is_hash(cmd.digest) or not 0 <= cmd.nonce < 1 << 64:
            return Reason.INVALID_ATTESTATION
        node = self.nodes.get(cmd.node)
        if node is None:
            return Reason.UNKNOWN_NODE
        epoch = self.epochs.get(cmd.epoch)
        if epoch is None:
            return Reason.UNKNOWN_EPOCH
        if node.deregistered_at is not None and epoch.start_ts >= node.deregistered_at:
            return Reason.NODE_INACTIVE
        key = (cmd.node, cmd.epoch)
        if key in self.attested:
            return Reason.DUPLICATE_ATTESTATION
        self.attested.add(key)
        return None

    # --- selling and delivering -----------------------------------------------------------

    def free_units(self, provider: str, underlying: str, window_start: int,
                   window_end: int) -> int | None:
        """Units the provider may still sell in a window: those of its sellable nodes less
        what the window's deliveries hold on them. None if it has no node of ``underlying``
        (its capacity is then what `SetCapacity` says)."""
        fleet = self._fleets.get((provider, underlying))
        if fleet is None:
            return None
        return sum(max(0, self.nodes[node].units - self.allocated.get((node, window_start), 0))
                   for node in self._sellable(fleet, window_end))

    def has_nodes(self, provider: str, underlying: str) -> bool:
        """Whether the provider sells ``underlying`` from nodes (it registered one)."""
        return (provider, underlying) in self._fleets

    def allocate(self, delivery: Delivery) -> list[tuple[str, int]]:
        """Put the delivery's lots on the seller's sellable nodes, in address order."""
        fleet = self._fleets.get((delivery.seller, delivery.underlying), [])
        left = delivery.qty
        allocation: list[tuple[str, int]] = []
        for node in self._sellable(fleet, delivery.window_end):
            if not left:
                break
            key = (node, delivery.window_start)
            taken = min(left, self.nodes[node].units - self.allocated.get(key, 0))
            if taken > 0:
                allocation.append((node, taken))
                self.allocated[key] = self.allocated.get(key, 0) + taken
                left -= taken
        return allocation

    def release(self, delivery: Delivery) -> None:
        """The delivery closed: its nodes are free again in its window."""
        for node, units in delivery.allocation or ():
            key = (node, delivery.window_start)
            left = self.allocated[key] - units
            if left:
                self.allocated[key] = left
            else:
                del self.allocated[key]

    def settlement(self, delivery: Delivery) -> tuple[int, int]:
        """(delivered, required) node-epochs of a delivery whose window has closed."""
        window = [e.epoch for e in self.epochs.values()
                  if delivery.window_start <= e.start_ts < delivery.window_end]
        if not window:
            last = self.last_epoch()
            length = delivery.window_end - delivery.window_start
            epochs = max(1, length // last.length_ns) if last is not None else 1
            return 0, delivery.qty * epochs
        delivered = sum(units * sum((node, e) in self.attested for e in window)
                        for node, units in delivery.allocation or ())
        return delivered, delivery.qty * len(window)

    def grace(self) -> int:
        """How long after its window's end an attested delivery waits for late attestations
        of the window's last epoch: the length of the last epoch (0 before any)."""
        last = self.last_epoch()
        return last.length_ns if last is not None else 0

    def last_epoch(self) -> Epoch | None:
        """The epoch opened last, if any."""
        return self.epochs[next(reversed(self.epochs))] if self.epochs else None

    def _sellable(self, fleet: list[str], window_end: int) -> list[str]:
        """The nodes of ``fleet`` (in address order) that attested lately and are not
        deregistered before ``window_end``."""
        recent = list(self.epochs)[-ATTESTED_EPOCHS:]
        sellable = []
        for address in fleet:
            node = self.nodes[address]
            if node.deregistered_at is not None and node.deregistered_at < window_end:
                continue
            if any((address, epoch) in self.attested for epoch in recent):
                sellable.append(address)
        return sellable

    def _add(self, node: Node) -> None:
        self.nodes[node.node] = node
        fleet = self._fleets.setdefault((node.provider, node.underlying), [])
        fleet.append(node.node)
        fleet.sort()

    # --- state ----------------------------------------------------------------------------

    def state(self) -> UptimeState:
        """The canonical state (sorted where order is not meaningful)."""
        return UptimeState(
            nodes=[self.nodes[a] for a in sorted(self.nodes)],
            epochs=list(self.epochs.values()),
            attested=sorted(self.attested),
            allocated=sorted((node, w, n) for (node, w), n in self.allocated.items()),
        )

    @classmethod
    def restore(cls, state: UptimeState) -> Uptime:
        """Uptime in exactly the state ``state`` describes."""
        uptime = cls()
        for node in state.nodes:
            uptime._add(msgspec.structs.replace(node))
        uptime.epochs = {e.epoch: e for e in state.epochs}
        uptime.attested = set(state.attested)
        uptime.allocated = {(node, w): n for node, w, n in state.allocated}
        return uptime
