"""The attestation collector: decides, attestation by attestation, which node-epochs count.

Sans-I/O: it is fed the registry (nodes registered and deregistered on chain), the epochs
the bridge opens, and attestations with the time they arrived; it answers each with a
`Verdict`. Accepted verdicts become the engine's ``AttestationAccepted`` commands;
rejected ones carry a stable `Reason` the gateway returns to the agent.

An attestation is accepted iff, checked in this order (cheap checks first):

1. its fields have their wire form (`Reason.MALFORMED`);
2. its node is registered (`UNKNOWN_NODE`);
3. its epoch has been opened (`UNKNOWN_EPOCH`), is the current one or the one before it,
   and it arrived by that epoch's deadline plus the grace period (`LATE`);
4. the node was active when the epoch started: a deregistration effective at or before
   the epoch's start ends it (`INACTIVE_NODE`);
5. its beacon is that epoch's (`WRONG_BEACON`);
6. the node has no accepted attestation for that epoch yet (`DUPLICATE`);
7. its digest is below the target (`ABOVE_TARGET`);
8. the node's token bucket has a token (`RATE_LIMITED`);
9. the signature recovers the node (`BAD_SIGNATURE`).

The rate limit guards the one expensive check, the signature recovery (~75 µs against a
few µs for everything before it). It is counted after the proof of work on purpose: the
bucket is keyed by the node the attestation claims, so anyone can spend its tokens, and
there each token costs the spender a solved proof of work rather than a free message.

Grace: by default a tenth of the epoch length, at least one second: an agent that solves
near the deadline, or whose attestation crosses the next epoch's opening, still counts,
while an epoch's set of attested nodes is final soon after it ends.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from chain_bridge.attestation import (
    Attestation,
    address_of_public,
    digest_at,
    digest_head,
    digest_prefix,
    recover_public,
)

NS = 1_000_000_000
DEFAULT_BURST = 4
"""Attestations a node may have checked per epoch (at once, or spread): one is needed."""


class Reason(StrEnum):
    """Why an attestation was refused; stable codes sent back to the agent."""

    MALFORMED = "malformed"
    UNKNOWN_NODE = "unknown_node"
    INACTIVE_NODE = "inactive_node"
    UNKNOWN_EPOCH = "unknown_epoch"
    LATE = "late"
    WRONG_BEACON = "wrong_beacon"
    DUPLICATE = "duplicate"
    ABOVE_TARGET = "above_target"
    RATE_LIMITED = "rate_limited"
    BAD_SIGNATURE = "bad_signature"


class Verdict(msgspec.Struct, frozen=True):
    """The collector's answer to one attestation. ``reason`` is None iff it was accepted;
    ``digest`` (0x hex) is set once it has been computed (always, when accepted)."""

    attestation: Attestation
    reason: Reason | None = None
    detail: str = ""
    """For people: what exactly was wrong."""
    digest: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the node-epoch counts."""
        return self.reason is None


class RegisteredNode(msgspec.Struct, frozen=True):
    """A node key registered on chain by ``provider`` for ``units`` of ``underlying``
    (e.g. 8 GPUs of GPU.H100); ``deregister_ns``: when its deregistration takes effect."""

    provider: str
    underlying: str
    units: int
    deregister_ns: int | None = None


class Epoch(msgspec.Struct, frozen=True):
    """An epoch the bridge opened: its beacon (0x hex), start and deadline (ns)."""

    beacon: str
    start_ns: int
    deadline_ns: int


class _Bucket:
    """A token bucket holding up to ``burst`` tokens and refilled with ``burst`` per epoch
    length, in integer units (one token = ``epoch_ns`` units) so nothing drifts."""

    __slots__ = ("last_ns", "level")

    def __init__(self, level: int, now_ns: int) -> None:
        self.level = level
        self.last_ns = now_ns


class Collector:
    """Checks attestations against the registry, the open epochs and the target."""

    def __init__(self, *, chain_id: int, registry: str, target: int, epoch_ns: int,
                 grace_ns: int | None = None, burst: int = DEFAULT_BURST) -> None:
        if epoch_ns <= 0 or burst <= 0:
            raise ValueError("the epoch length and the burst must be positive")
        self.chain_id = chain_id
        self.registry = registry.lower()
        self._head = digest_head(chain_id, self.registry)
        self.target = target
        self.epoch_ns = epoch_ns
        self.grace_ns = max(NS, epoch_ns // 10) if grace_ns is None else grace_ns
        self.burst = burst
        self.nodes: dict[str, RegisteredNode] = {}
        self.epochs: dict[int, Epoch] = {}
        self.current: int | None = None
        self.previous: int | None = None
        self._attested: dict[int, set[str]] = {}
        self._buckets: dict[str, _Bucket] = {}
        # each node's public key once a signature has recovered it: later recoveries are
        # compared with it instead of being hashed into an address again
        self._publics: dict[str, bytes] = {}

    # --- what the chain and the bridge tell it -------------------------------------------

    def register(self, node: str, provider: str, underlying: str, units: int) -> None:
        """A node registered on chain (once for good: a second registration is an error)."""
        node = node.lower()
        if node in self.nodes:
            raise ValueError(f"node {node} is already registered")
        self.nodes[node] = RegisteredNode(provider.lower(), underlying, units)

    def deregister(self, node: str, effective_ns: int) -> None:
        """The node's deregistration, effective at ``effective_ns``: it attests no epoch
        that starts then or later."""
        node = node.lower()
        self.nodes[node] = msgspec.structs.replace(self.nodes[node], deregister_ns=effective_ns)

    def open_epoch(self, epoch: int, beacon: str, start_ns: int, deadline_ns: int) -> None:
        """Makes ``epoch`` current; the one current until now becomes the previous."""
        if self.current is not None and epoch <= self.current:
            raise ValueError(f"epoch {epoch} does not follow the current epoch {self.current}")
        self.epochs[epoch] = Epoch(beacon.lower(), start_ns, deadline_ns)
        self._attested[epoch] = set()
        self.previous, self.current = self.current, epoch

    def forget(self, before: int) -> None:
        """Drops the epochs before ``before`` and their attested nodes (attestations for
        them are then `LATE`)."""
        for epoch in [e for e in self.epochs if e < before]:
            del self.epochs[epoch]
            del self._attested[epoch]
        if self.previous is not None and self.previous < before:
            self.previous = None

    def attested(self, epoch: int) -> frozenset[str]:
        """The nodes whose attestation of ``epoch`` was accepted."""
        return frozenset(self._attested.get(epoch, ()))

    # --- attestations --------------------------------------------------------------------

    def submit(self, att: Attestation, now_ns: int) -> Verdict:
        """Checks ``att``, arrived at ``now_ns``; if accepted, the node-epoch is recorded."""
        if not att.well_formed():
            return Verdict(att, Reason.MALFORMED, "a field is not in its wire form")
        node = self.nodes.get(att.node)
        if node is None:
            return Verdict(att, Reason.UNKNOWN_NODE, f"{att.node} is not registered")
        epoch = att.epoch
        info = self.epochs.get(epoch) if epoch in (self.current, self.previous) else None
        if info is None:
            if self.current is None or epoch > self.current:
                return Verdict(att, Reason.UNKNOWN_EPOCH, f"epoch {epoch} is not open")
            return Verdict(att, Reason.LATE, f"epoch {epoch} is over (now {self.current})")
        if now_ns > info.deadline_ns + self.grace_ns:
            return Verdict(att, Reason.LATE, f"epoch {epoch} closed at {info.deadline_ns} ns "
                           f"(+{self.grace_ns} ns grace), arrived at {now_ns}")
        if node.deregister_ns is not None and node.deregister_ns <= info.start_ns:
            return Verdict(att, Reason.INACTIVE_NODE,
                           f"{att.node} was deregistered before epoch {epoch} started")
        if att.beacon != info.beacon:
            return Verdict(att, Reason.WRONG_BEACON, f"epoch {epoch}'s beacon is {info.beacon}")
        attested = self._attested[epoch]
        if att.node in attested:
            return Verdict(att, Reason.DUPLICATE, f"{att.node} already attested epoch {epoch}")
        found = digest_at(digest_prefix(self._head, bytes.fromhex(att.node[2:]), epoch,
                                        bytes.fromhex(att.beacon[2:])), att.nonce)
        hex_digest = "0x" + found.hex()
        if int.from_bytes(found, "big") >= self.target:
            return Verdict(att, Reason.ABOVE_TARGET, "the digest is not below the target",
                           hex_digest)
        if not self._take_token(att.node, now_ns):
            return Verdict(att, Reason.RATE_LIMITED, f"more than {self.burst} attestations "
                           "of this node to check in one epoch", hex_digest)
        try:
            public = recover_public(found, bytes.fromhex(att.signature[2:]))
        except ValueError as exc:
            return Verdict(att, Reason.BAD_SIGNATURE, str(exc), hex_digest)
        if public != self._publics.get(att.node):
            signer = address_of_public(public)
            if signer != att.node:
                return Verdict(att, Reason.BAD_SIGNATURE, f"signed by {signer}, not the node",
                               hex_digest)
            self._publics[att.node] = public
        attested.add(att.node)
        return Verdict(att, None, "", hex_digest)

    def _take_token(self, node: str, now_ns: int) -> bool:
        token = self.epoch_ns
        bucket = self._buckets.get(node)
        if bucket is None:
            bucket = self._buckets[node] = _Bucket(self.burst * token, now_ns)
        elif now_ns > bucket.last_ns:
            bucket.level = min(self.burst * token,
                               bucket.level + (now_ns - bucket.last_ns) * self.burst)
            bucket.last_ns = now_ns
        if bucket.level < token:
            return False
        bucket.level -= token
        return True
