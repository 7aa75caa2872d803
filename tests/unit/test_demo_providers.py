"""The demo's providers: their fleet, their node keys and the faulty node's conduct."""

from __future__ import annotations

import stat
from collections import Counter
from pathlib import Path

from chain_bridge.attestation import address_of
from chain_bridge.demo_providers import (
    FAULTS,
    FAULTS_IN,
    HOUR_NS,
    PROVIDERS,
    demo_fleet,
    ensure_node_keys,
    misbehaviour,
)
from chain_bridge.node_agent import Conduct, read_key_file
from gateway.demo_market import LEVELS, max_lots
from tests.exchange_helpers import new_exchange

SPOT_UNDERLYINGS = ["GPU.B200", "GPU.H100", "GPU.H200", "RACK.KW"]


def test_each_provider_has_a_node_per_spot_underlying_that_fits_its_ladders() -> None:
    markets = new_exchange().markets
    spots = {m.instrument.underlying: m for m in markets.values() if m.spot}
    assert sorted(spots) == SPOT_UNDERLYINGS
    fleet = demo_fleet(markets.values())
    honest = [n for n in fleet if not n.misbehaving]
    assert sorted((n.provider, n.underlying) for n in honest) == \
        [(p, u) for p in PROVIDERS for u in SPOT_UNDERLYINGS]
    for node in honest:
        market = spots[node.underlying]
        # a window of selling: many full sell ladders, more for a day than for an hour
        ladder = LEVELS * max_lots(market)
        assert node.units >= 50 * ladder * (market.window_ns // HOUR_NS)
    (faulty,) = [n for n in fleet if n.misbehaving]
    assert (faulty.provider, faulty.underlying) == (1, "GPU.H100")
    assert faulty.units == LEVELS * max_lots(spots["GPU.H100"])
    assert len({n.name for n in fleet}) == len(fleet)
    assert demo_fleet(m for m in markets.values() if not m.spot) == []


def test_node_keys_are_made_once_private_and_read_again(tmp_path: Path) -> None:
    fleet = demo_fleet(new_exchange().markets.values())
    directory = tmp_path / "demo-nodes"
    keys = ensure_node_keys(directory, fleet)
    assert [k.node for k in keys] == fleet
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for key in keys:
        assert key.path == directory / f"{key.node.name}.key"
        assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
        assert address_of(read_key_file(key.path)) == key.address
    assert len({k.address for k in keys}) == len(keys)
    # the faulty node sorts first among its provider's nodes of its underlying
    (faulty,) = [k for k in keys if k.node.misbehaving]
    (sibling,) = [k for k in keys if not k.node.misbehaving and
                  (k.node.provider, k.node.underlying) ==
                  (faulty.node.provider, faulty.node.underlying)]
    assert faulty.address < sibling.address
    # a restart finds them: the same keys, the files untouched
    contents = {k.path: k.path.read_text() for k in keys}
    assert ensure_node_keys(directory, fleet) == keys
    assert {k.path: k.path.read_text() for k in keys} == contents
    # a key file gone is made again, alone
    keys[0].path.unlink()
    again = ensure_node_keys(directory, fleet)
    assert again[0].address != keys[0].address
    assert again[1:] == keys[1:]


def test_the_faulty_conduct_is_seeded_and_attests_about_half_the_epochs() -> None:
    node = "0x" + "ab" * 20
    conduct = misbehaviour(node)
    epochs = range(1_000, 5_000)
    seen = [conduct(e) for e in epochs]
    assert seen == [misbehaviour(node)(e) for e in epochs]  # the same every time it is asked
    assert seen != [misbehaviour(node, seed=2)(e) for e in epochs]
    counts = Counter(seen)
    for fault, odds in FAULTS:
        assert abs(counts[fault] / len(seen) - odds / FAULTS_IN) < 0.03, (fault, counts)
    attesting = 1 - sum(odds for _, odds in FAULTS) / FAULTS_IN
    assert abs(counts[Conduct.ATTEST] / len(seen) - attesting) < 0.03
