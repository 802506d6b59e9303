"""Secure mixing in the protocol engine: the simulation's stand-ins and derivations.

The round core itself is ``protocols.rounds.SecureRoundCore``. What is here is
what a simulation gives it, stated plainly: X25519 keys and the per-round
self-mask seeds are derived from the scenario seed with SHA-256, so a run is
reproducible (a daemon draws them from the operating system instead); the
dropout declaration goes straight from receiver to holders (a daemon records
it in the ledger first, and its core holds a declaration until then).
"""

from __future__ import annotations

import hashlib
from typing import Any

from protocols import secagg
from protocols.gossip import Neighbourhood
from protocols.rounds import SecureRoundCore
from protocols.secagg import SecAggConfig, Timeouts


def simulated_box_key(seed: int, name: str) -> bytes:
    return hashlib.sha256(f"p2pfl simulated X25519 key/{seed}/{name}".encode()).digest()


def simulated_self_seed(seed: int, name: str, round: int, receiver: str) -> bytes:
    """Fresh per (node, round, receiver): two receivers given one seed could pool their shares."""
    text = f"p2pfl simulated self-mask seed/{seed}/{name}/{round}/{receiver}"
    return hashlib.sha256(text.encode()).digest()


def secagg_config(setup: Any) -> SecAggConfig:
    return secagg_config_of(setup.scenario)


def secagg_config_of(scenario: Any) -> SecAggConfig:
    s = scenario.secure
    return SecAggConfig(
        scale=float(s.scale),
        clip=float(s.clip),
        modulus_bits=s.modulus_bits,
        threshold=s.threshold,
        sparse_k=s.sparse_k,
        graph_seed=hashlib.sha256(scenario.name.encode()).digest()[:32],
    )


def federation_id(setup: Any) -> bytes:
    return hashlib.sha256(f"simulated federation/{setup.scenario.name}".encode()).digest()[:32]


def make_secure_node(setup: Any, i: int, names: list[str]) -> SecureRoundCore:
    """Node i of a simulated secure federation (keys and seeds derived from the scenario seed)."""
    from p2pfl.engines.common import neighbourhood_fn

    sc = setup.scenario
    if sc.gossip.mode != "sync":
        from p2pfl.errors import ConfigError

        raise ConfigError("secure aggregation runs with gossip.mode = 'sync'")
    hood_fns = [neighbourhood_fn(setup.topo, names)(j) for j in range(len(names))]
    index = {name: j for j, name in enumerate(names)}

    def hood_of(node: str, round: int) -> Neighbourhood:
        return hood_fns[index[node]](round)

    public = {name: secagg.box_public_key(simulated_box_key(sc.seed, name)) for name in names}
    drops = frozenset(r for node, r in sc.secure.dropouts if node == i)
    t = sc.secure
    return SecureRoundCore(
        names[i],
        hood_of,
        secagg_config(setup),
        federation_id=federation_id(setup),
        box_private=simulated_box_key(sc.seed, names[i]),
        public_keys=public,
        self_seed=lambda round, receiver: simulated_self_seed(sc.seed, names[i], round, receiver),
        timeouts=Timeouts(t.share_timeout, t.masked_timeout, t.unmask_timeout),
        dim=setup.dim,
        drop_rounds=drops,
    )
