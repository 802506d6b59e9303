"""What a run spec yields besides its graph, built here once for the simulators and the daemon.

- the 32 bytes a federation's secure rounds and private metrics are bound to;
- the privacy budget (noise and epsilon per node) for the spec's schedule;
- where randomness comes from: a rehearsal derives every key and seed from the
  scenario seed, so a simulation is reproducible (``Rehearsal``); a daemon draws
  them from the operating system (``System``), since a neighbour must not be able
  to predict its self-mask seeds or its DP noise;
- a node's key ring for masking: its X25519 private key and the members' public keys.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from p2pfl.privacy.budget import Budget, plan_budget
from p2pfl.spec.graph import Graph
from p2pfl.spec.run import RunSpec
from p2pfl.training import derived_seed, schedule_from
from protocols.secagg import box_public_key
from protocols.secagg.config import threshold_for


def federation_bytes(federation_id: str) -> bytes:
    """A federation id as the 32 bytes secure aggregation binds its masks to."""
    return hashlib.sha256(f"p2pfl federation/{federation_id}".encode()).digest()


def rehearsal_federation(name: str) -> str:
    """The federation id a simulation of scenario ``name`` stands in for."""
    return f"rehearsal/{name}"


def privacy_budget(spec: RunSpec, graph: Graph, train_sizes: Sequence[int]) -> Budget | None:
    """The run's privacy budget (None without DP), node by node in roster order.

    A simulator knows every node's training set size; a daemon knows only its own and
    passes it for every node (the budget of a node depends on its own size alone, and
    distributed noise on the graph).
    """
    p = spec.privacy
    if not p.active:
        return None
    schedule = schedule_from(spec.training)
    secure = None
    if spec.secure.enabled and p.mechanism == "delta":
        secure = secure_noise_graph(spec, graph)
    return plan_budget(
        p,
        rounds=spec.training.rounds,
        steps_per_round=[schedule.steps_for(s) for s in train_sizes],
        batch_size=schedule.batch_size,
        train_sizes=list(train_sizes),
        secure_matrices=None if secure is None else secure[0],
        threshold_of=None if secure is None else secure[1],
    )


def secure_noise_graph(spec: RunSpec, graph: Graph) -> tuple[list[object], Callable[[int], int]]:
    """What distributed noise is sized by: the mixing matrices of the steps the run reaches,
    and each receiver's secure-round threshold for its number of in-neighbours."""
    cfg = spec.secagg_config()

    def threshold_of(degree: int) -> int:
        return threshold_for(cfg, degree)

    return [graph.topo.mixing(s) for s in graph.steps], threshold_of


class Rehearsal:
    """A simulation's randomness: every key and seed derived from the scenario seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def box_key(self, name: str) -> bytes:
        return hashlib.sha256(f"p2pfl simulated X25519 key/{self.seed}/{name}".encode()).digest()

    def self_mask_seed(self, name: str, round: int, receiver: str) -> bytes:
        """Fresh per (node, round, receiver): two receivers given one seed could pool shares."""
        text = f"p2pfl simulated self-mask seed/{self.seed}/{name}/{round}/{receiver}"
        return hashlib.sha256(text.encode()).digest()

    def noise_seed(self, index: int) -> int:
        """The seed of node ``index``'s delta-mechanism noise."""
        return derived_seed(self.seed, index, 7)

    def dp_sgd_seed(self, index: int) -> int:
        """DP-SGD's samplers and noise (the trainer derives per node and round from it)."""
        return self.seed

    def key_ring(self, name: str, roster: Sequence[str]) -> KeyRing:
        public = {m: box_public_key(self.box_key(m)) for m in roster}
        return KeyRing(self.box_key(name), public)


class System:
    """A daemon's randomness: the operating system's, unpredictable to the neighbours."""

    def self_mask_seed(self, name: str, round: int, receiver: str) -> bytes:
        return os.urandom(32)

    def noise_seed(self, index: int) -> int:
        return _os_seed()

    def dp_sgd_seed(self, index: int) -> int:
        return _os_seed()


Randomness = Rehearsal | System


def _os_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1


@dataclass(frozen=True)
class KeyRing:
    """A node's X25519 private key and every member's public key (from the ledger)."""

    box_private: bytes
    public_keys: Mapping[str, bytes]
