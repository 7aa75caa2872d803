"""`cmx bench attest`: how fast the collector verifies attestations, and how long a node's
solve takes at the default difficulty.

* **Verification** (BENCHMARKS.md: ≥ 10k attestations/s). ``count`` attestations from up to
  1,000 registered nodes over as many epochs as that takes, solved beforehand at a tiny
  difficulty (the collector's work does not depend on it), go through `Collector.submit`,
  every check included (the digest, the signature recovery), in several runs, each beside
  a run of the bare signature recoveries (libsecp256k1's ecrecover, the bulk of the work).
  All must be accepted; the same attestations replayed are all duplicates, and as many
  forged ones (another node's signature) are all refused.
* **Solving**: ``solves`` solves at ``difficulty`` (default `DEFAULT_DIFFICULTY`, sized to
  about a second of one core), each of a fresh beacon as the agent gets them: p50/p90/p99
  solve times, and the hash rate beside eth_hash's, measured in the same run.
"""

from __future__ import annotations

import statistics
import sys
import time

import msgspec
from eth_hash.auto import keccak

from chain_bridge.attestation import (
    DEFAULT_DIFFICULTY,
    Attestation,
    address_bytes,
    address_of,
    digest,
    digest_head,
    digest_prefix,
    recover_public,
    sign,
    solve,
    target_of,
)
from chain_bridge.collector import NS, Collector, Reason
from loadtest.report import aligned

TARGET_VERIFIED_PER_S = 10_000
MAX_NODES = 1_000
VERIFY_DIFFICULTY = 16
RUNS = 5
CHAIN_ID = 31337
REGISTRY = "0x" + "c0" * 20
PROVIDER = "0x" + "01" * 20
EPOCH_NS = 300 * NS


class AttestBenchResult(msgspec.Struct):
    """What `cmx bench attest` measured; written as JSON with ``--json``."""

    count: int
    nodes: int
    epochs: int
    verified_per_s: float
    """Attestations through `Collector.submit`: the median of the runs."""
    verified_per_s_runs: list[float]
    recover_per_s: float
    """The same signatures through `recover_public` alone, run beside each collector run
    (median): the floor the collector's other checks add to."""
    collector_share_of_recover: float
    """``verified_per_s`` / ``recover_per_s``, the ratio the noisy machine leaves alone."""
    accepted: int
    replayed_duplicates: int
    forged_refused: int
    meets_verified_per_s: bool
    difficulty: int
    solves: int
    solve_p50_s: float
    solve_p90_s: float
    solve_p99_s: float
    solve_mean_s: float
    solve_max_s: float
    hashes_per_s: float
    """Nonces tried per second by `chain_bridge.attestation.solve`, over all the solves."""
    eth_hash_per_s: float
    """The same digests through eth_hash one call each, for comparison."""
    expected_solve_s: float
    """``difficulty`` / ``hashes_per_s``: the mean solve time that hash rate gives."""
    correct: bool


def _node_key(n: int) -> bytes:
    return keccak(f"cmx bench attest node {n}".encode())


def _beacon(epoch: int) -> bytes:
    return keccak(f"cmx bench attest beacon {epoch}".encode())


def _presolved(count: int, nodes: list[tuple[bytes, str]]) -> list[list[Attestation]]:
    """``count`` attestations, epoch by epoch, each node once per epoch."""
    target = target_of(VERIFY_DIFFICULTY)
    epochs: list[list[Attestation]] = []
    for i in range(count):
        epoch, (key, node) = 1 + i // len(nodes), nodes[i % len(nodes)]
        if epoch > len(epochs):
            epochs.append([])
        solution = solve(CHAIN_ID, REGISTRY, node, epoch, _beacon(epoch), target)
        assert solution is not None
        nonce, found = solution
        epochs[-1].append(Attestation(node, epoch, "0x" + _beacon(epoch).hex(), nonce,
                                      sign(key, found)))
    return epochs


def _collector(nodes: list[tuple[bytes, str]]) -> Collector:
    collector = Collector(chain_id=CHAIN_ID, registry=REGISTRY,
                          target=target_of(VERIFY_DIFFICULTY), epoch_ns=EPOCH_NS)
    for _, node in nodes:
        collector.register(node, PROVIDER, "GPU.H100", 8)
    return collector


def _open(collector: Collector, epoch: int) -> int:
    """Opens ``epoch``; returns a time within it."""
    start = epoch * EPOCH_NS
    collector.open_epoch(epoch, "0x" + _beacon(epoch).hex(), start, start + EPOCH_NS)
    return start + NS


def _verify_run(nodes: list[tuple[bytes, str]],
                epochs: list[list[Attestation]]) -> tuple[float, int, Collector]:
    """One pass of every attestation through a fresh collector: (seconds spent submitting,
    accepted, the collector)."""
    collector = _collector(nodes)
    elapsed, accepted = 0.0, 0
    for epoch, atts in enumerate(epochs, start=1):
        now = _open(collector, epoch)
        started = time.perf_counter()
        verdicts = [collector.submit(att, now) for att in atts]
        elapsed += time.perf_counter() - started
        accepted += sum(verdict.accepted for verdict in verdicts)
    return elapsed, accepted, collector


def _recover_rate(signed: list[tuple[bytes, bytes]]) -> float:
    started = time.perf_counter()
    for found, signature in signed:
        recover_public(found, signature)
    return len(signed) / (time.perf_counter() - started)


def _eth_hash_rate(prefix: bytes, seconds: float = 0.5) -> float:
    tried, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for nonce in range(tried, tried + 10_000):
            keccak(prefix + nonce.to_bytes(8, "big"))
        tried += 10_000
    return tried / (time.perf_counter() - started)


def run_attest_bench(count: int = 20_000, difficulty: int = DEFAULT_DIFFICULTY,
                     solves: int = 20, log: bool = True) -> AttestBenchResult:
    """Runs both parts; prints progress if ``log``."""
    def say(text: str) -> None:
        if log:
            print(text, flush=True)

    nodes = [(key, address_of(key)) for key in map(_node_key, range(min(count, MAX_NODES)))]
    say(f"solving and signing {count:,} attestations of {len(nodes):,} nodes "
        f"(difficulty {VERIFY_DIFFICULTY}) ...")
    epochs = _presolved(count, nodes)
    signed = [(digest(CHAIN_ID, REGISTRY, att.node, att.epoch, bytes.fromhex(att.beacon[2:]),
                      att.nonce), bytes.fromhex(att.signature[2:]))
              for atts in epochs for att in atts]
    runs: list[float] = []
    recover_runs: list[float] = []
    accepted_counts: list[int] = []
    for run in range(RUNS):
        elapsed, accepted, collector = _verify_run(nodes, epochs)
        runs.append(count / elapsed)
        accepted_counts.append(accepted)
        recover_runs.append(_recover_rate(signed))
        say(f"  run {run + 1}: {runs[-1]:,.0f} verified/s (signature recovery alone "
            f"{recover_runs[-1]:,.0f}/s)")
    # the last collector has seen everything: replays are duplicates, forgeries refused
    last = epochs[-1]
    now = (len(epochs) + 1) * EPOCH_NS - NS
    replayed = sum(collector.submit(att, now).reason is Reason.DUPLICATE for att in last)
    fresh = _collector(nodes)
    now = _open(fresh, len(epochs))
    forged = [msgspec.structs.replace(att, signature=last[(i + 1) % len(last)].signature)
              for i, att in enumerate(last)] if len(last) > 1 else []
    refused = sum(fresh.submit(att, now).reason is Reason.BAD_SIGNATURE for att in forged)

    say(f"solving {solves} times at difficulty {difficulty:,} ...")
    times: list[float] = []
    tried = 0
    for i in range(solves):
        node = nodes[i % len(nodes)][1]
        started = time.perf_counter()
        solution = solve(CHAIN_ID, REGISTRY, node, 10**6 + i, _beacon(10**6 + i),
                         target_of(difficulty))
        times.append(time.perf_counter() - started)
        assert solution is not None
        tried += solution[0] + 1
        say(f"  solve {i + 1}: {times[-1]:.3f} s ({solution[0] + 1:,} hashes)")
    hashes_per_s = tried / sum(times)
    eth_hash_per_s = _eth_hash_rate(digest_prefix(digest_head(CHAIN_ID, REGISTRY),
                                                  address_bytes(nodes[0][1]), 1, _beacon(1)))
    quantiles = statistics.quantiles(times, n=100, method="inclusive") if solves > 1 \
        else [times[0]] * 99
    verified = statistics.median(runs)
    correct = (all(n == count for n in accepted_counts) and replayed == len(last)
               and refused == len(forged))
    return AttestBenchResult(
        count=count, nodes=len(nodes), epochs=len(epochs), verified_per_s=verified,
        verified_per_s_runs=runs, recover_per_s=statistics.median(recover_runs),
        collector_share_of_recover=verified / statistics.median(recover_runs),
        accepted=min(accepted_counts),
        replayed_duplicates=replayed, forged_refused=refused,
        meets_verified_per_s=verified >= TARGET_VERIFIED_PER_S, difficulty=difficulty,
        solves=solves, solve_p50_s=quantiles[49], solve_p90_s=quantiles[89],
        solve_p99_s=quantiles[98], solve_mean_s=statistics.fmean(times),
        solve_max_s=max(times), hashes_per_s=hashes_per_s, eth_hash_per_s=eth_hash_per_s,
        expected_solve_s=difficulty / hashes_per_s, correct=correct)


def report(r: AttestBenchResult) -> str:
    """The table and the comparison with BENCHMARKS.md."""
    rows = [
        (f"verified/s ({r.count:,} attestations, {r.nodes:,} nodes, median of {RUNS})",
         f"{r.verified_per_s:,.0f}"),
        ("  signature recovery alone, same runs (collector's share)",
         f"{r.recover_per_s:,.0f} ({100 * r.collector_share_of_recover:.0f}%)"),
        ("accepted / replays refused / forgeries refused",
         f"{r.accepted:,} / {r.replayed_duplicates:,} / {r.forged_refused:,}"),
        (f"solve time at difficulty {r.difficulty:,}, p50 / p90 / p99",
         f"{r.solve_p50_s:.2f} / {r.solve_p90_s:.2f} / {r.solve_p99_s:.2f} s"),
        (f"  mean over {r.solves} solves (expected from the hash rate)",
         f"{r.solve_mean_s:.2f} s ({r.expected_solve_s:.2f} s)"),
        ("hashes/s, solve (eth_hash one by one)",
         f"{r.hashes_per_s:,.0f} ({r.eth_hash_per_s:,.0f})"),
    ]
    lines = aligned(rows, 26)
    verdict = "met" if r.meets_verified_per_s else "MISSED"
    lines.append("")
    lines.append(f"BENCHMARKS.md, attestations verified by the collector >= "
                 f"{TARGET_VERIFIED_PER_S:,}/s: {verdict} ({r.verified_per_s:,.0f}/s, median "
                 f"of {RUNS} runs on one thread)")
    lines.append(f"correctness: {'ok' if r.correct else 'FAILED'}")
    return "\n".join(lines)


def main_attest(count: int, difficulty: int | None, solves: int, json_path: str | None) -> int:
    """CLI body: run, print, optionally write JSON; 1 unless every verdict was right.
    ``difficulty`` None: `DEFAULT_DIFFICULTY`."""
    difficulty = DEFAULT_DIFFICULTY if difficulty is None else difficulty
    if count < 2 or difficulty < 1 or solves < 1:
        print("cmx bench attest: --count must be at least 2, --difficulty and --solves "
              "positive", file=sys.stderr)
        return 2
    result = run_attest_bench(count, difficulty, solves)
    print(report(result))
    if json_path:
        with open(json_path, "wb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(result)) + b"\n")
    return 0 if result.correct else 1
