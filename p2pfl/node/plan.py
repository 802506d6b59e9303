"""The training plan a node runs, read from the ledger, and who its neighbours are.

A plan is the TOML a founder passes to ``p2pfl federation create --plan``;
every member approves its hash. The node reads it into a ``Plan`` (unknown
keys are errors naming them, as in a config file)::

    seed = 0                      # model initialisation, batch order, random graphs
    [data]                        # the shapes every site's entrypoint must match
    input_shape = [37]
    num_classes = 2
    [data.schema]                 # optional: columns, units, ranges (``p2pfl.schema``)
    features = [{ name = "age", type = "float", unit = "years", min = 0.0, max = 120.0 }, ...]
    [model]                       # a built-in (logreg, mlp, cnn) or "module:factory"
    name = "logreg"
    [training]                    # rounds and local steps, as in a scenario file
    rounds = 20
    local_epochs = 1
    batch_size = 32
    lr = 0.02
    [topology]                    # any family of the topology lab, with its weights
    kind = "complete"
    [gossip]
    mode = "sync"                 # D-PSGD; the daemon runs sync only
    round_timeout = 120.0         # seconds to wait for neighbours before closing a round
    [secure]                      # secure aggregation over each neighbourhood
    enabled = true
    share_timeout = 120.0         # seconds (real time, unlike a scenario's virtual ones)
    masked_timeout = 60.0
    unmask_timeout = 60.0

Roster and neighbours are computed the same way on every node: the roster is
the valid members sorted by node id, a node's index is its position, and the
topology is ``topology.build(kind, n, seed=...)``; the mixing matrix of round
r gives each node's neighbourhood. The roster is fixed when training starts
and kept in the checkpoints, so a restart does not reshuffle the graph.

A plan without ``[data.schema]`` stays valid (only shapes and labels are
checked); with one, it must name one feature per input value and, if it names
classes, as many as ``num_classes``: each node checks its data against it
before training (``p2pfl.node.data.check_local_data``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import topology
from p2pfl.node.errors import PlanError
from p2pfl.privacy.config import PrivacySection
from p2pfl.scenario import ModelSection, TopologySection, TrainingSection
from p2pfl.schema import Schema, parse_schema
from p2pfl.tables import build
from protocols.gossip import Neighbourhood
from protocols.secagg import SecAggConfig, Timeouts


@dataclass(frozen=True)
class PlanData:
    input_shape: list[int] = field(default_factory=list)
    num_classes: int = 0
    schema: Schema | None = None  # parsed apart from the table (``plan_from_ledger``)


@dataclass(frozen=True)
class PlanGossip:
    mode: str = "sync"
    round_timeout: float = 300.0


@dataclass(frozen=True)
class PlanSecure:
    enabled: bool = False
    scale: float = 65536.0
    clip: float = 32.0
    modulus_bits: int = 32
    threshold: int | None = None
    sparse_k: int | None = None
    share_timeout: float = 300.0
    masked_timeout: float = 120.0
    unmask_timeout: float = 60.0


@dataclass(frozen=True)
class Plan:
    seed: int = 0
    data: PlanData = field(default_factory=PlanData)
    model: ModelSection = field(default_factory=ModelSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    topology: TopologySection = field(default_factory=TopologySection)
    gossip: PlanGossip = field(default_factory=PlanGossip)
    secure: PlanSecure = field(default_factory=PlanSecure)
    privacy: PrivacySection = field(default_factory=PrivacySection)

    def __post_init__(self) -> None:
        if self.privacy.opt_in:
            raise PlanError(
                "plan [privacy] opt_in: whether a site shares its own figures is its own "
                "choice (`share_metrics` in its node config), not the plan's"
            )
        if not self.data.input_shape or any(d < 1 for d in self.data.input_shape):
            raise PlanError("plan [data] input_shape must list the positive sizes of one sample")
        if self.data.num_classes < 2:
            raise PlanError("plan [data] num_classes must be at least 2")
        if self.data.schema is not None:
            _check_schema_fits(self.data.schema, self.data)
        if self.gossip.mode != "sync":
            raise PlanError(
                f"plan [gossip] mode {self.gossip.mode!r}: the node daemon runs 'sync' "
                "(D-PSGD) only; choco and async are simulation-only for now"
            )
        if not self.gossip.round_timeout > 0:
            raise PlanError("plan [gossip] round_timeout must be positive")
        if self.training.rounds < 1:
            raise PlanError("plan [training] rounds must be at least 1")
        if self.topology.path is not None:
            raise PlanError("plan [topology] path: a graph file is not shared by the ledger")

    def secagg_config(self, plan_hash: bytes) -> SecAggConfig:
        s = self.secure
        return SecAggConfig(
            scale=s.scale,
            clip=s.clip,
            modulus_bits=s.modulus_bits,
            threshold=s.threshold,
            sparse_k=s.sparse_k,
            graph_seed=plan_hash[:32],
        )

    def secagg_timeouts(self) -> Timeouts:
        s = self.secure
        return Timeouts(s.share_timeout, s.masked_timeout, s.unmask_timeout)


def _check_schema_fits(schema: Schema, data: PlanData) -> None:
    """A schema names one feature per input value, and the plan's classes if any."""
    size = math.prod(data.input_shape)
    if len(schema.features) != size:
        raise PlanError(
            f"plan [data.schema] features: {len(schema.features)} features, but input_shape "
            f"{data.input_shape} has {size} values per sample"
        )
    if schema.classes and len(schema.classes) != data.num_classes:
        raise PlanError(
            f"plan [data.schema] classes: {len(schema.classes)} names, "
            f"but num_classes is {data.num_classes}"
        )


def plan_from_ledger(table: Mapping[str, Any] | None) -> Plan:
    """The ``Plan`` of the ledger's plan record; ``PlanError`` if absent or not runnable."""
    if table is None:
        raise PlanError("the ledger holds no valid training plan yet")
    try:
        table = dict(table)
        schema_table = None
        if isinstance(table.get("data"), dict) and "schema" in table["data"]:
            table["data"] = dict(table["data"])
            schema_table = table["data"].pop("schema")
        plan = build(Plan, table, "plan")
        if schema_table is None:
            return plan
        schema = parse_schema(schema_table, "plan [data.schema]")
        return dataclasses.replace(plan, data=dataclasses.replace(plan.data, schema=schema))
    except PlanError:
        raise
    except Exception as exc:  # ConfigError and the sections' own checks
        raise PlanError(str(exc)) from None


def federation_bytes(federation_id: str) -> bytes:
    """The federation id as the 32 bytes secure aggregation binds its masks to."""
    return hashlib.sha256(f"p2pfl federation/{federation_id}".encode()).digest()


@dataclass(frozen=True)
class Graph:
    """The roster's topology: neighbourhoods per round, and the links a node needs."""

    roster: tuple[str, ...]
    topo: topology.Topology
    rounds: int
    _links: dict[str, frozenset[str]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, plan: Plan, roster: tuple[str, ...]) -> Graph:
        if len(roster) < 2:
            raise PlanError(f"a federation needs at least 2 members to train, it has {len(roster)}")
        if list(roster) != sorted(set(roster)):
            raise PlanError("the roster must be sorted node ids without repeats")
        t = plan.topology
        params: dict[str, Any] = {
            k: v for k, v in (("p", t.p), ("k", t.k), ("m", t.m)) if v is not None
        }
        try:
            topo = topology.build(
                t.kind,
                len(roster),
                degree=t.degree,
                seed=plan.seed if t.seed is None else t.seed,
                weights=t.weights,
                **params,
            )
        except topology.TopologyError as exc:
            raise PlanError(f"plan [topology]: {exc}") from None
        return cls(roster, topo, plan.training.rounds)

    def index(self, node: str) -> int:
        return self.roster.index(node)

    def neighbourhood(self, node: str, round: int) -> Neighbourhood:
        i = self.index(node)
        w = self.topo.mixing(round)
        row = w[[i], :].tocoo()
        col = w[:, [i]].tocoo()
        names = self.roster
        in_weights = {names[j]: float(v) for j, v in zip(row.col, row.data, strict=True) if j != i}
        out = {names[j]: float(v) for j, v in zip(col.row, col.data, strict=True) if j != i}
        return Neighbourhood(float(w[i, i]), in_weights, out)

    def hood_fn(self) -> Callable[[str, int], Neighbourhood]:
        cache: dict[tuple[str, int], Neighbourhood] = {}

        def hood_of(node: str, round: int) -> Neighbourhood:
            key = (node, round)
            if key not in cache:
                if len(cache) > 4096:
                    cache.clear()
                cache[key] = self.neighbourhood(node, round)
            return cache[key]

        return hood_of

    def links_of(self, node: str) -> set[str]:
        """Everyone ``node`` exchanges with in some round (all rounds of a time-varying graph)."""
        if node in self._links:
            return set(self._links[node])
        steps = self.rounds if self.topo.time_varying else 1
        if self.topo.time_varying and self.topo.period:
            steps = min(steps, self.topo.period)
        peers: set[str] = set()
        for step in range(steps):
            hood = self.neighbourhood(node, step)
            peers |= set(hood.in_weights) | set(hood.out_shares)
        self._links[node] = frozenset(peers)
        return peers
