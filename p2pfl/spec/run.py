"""The run spec: what a federation trains and how, rehearsed and deployed from the same object.

A ``RunSpec`` holds the shared sections (``seed``, model, training, topology,
gossip, secure, privacy) with one set of defaults (``p2pfl.spec.sections``). A
scenario is a run spec plus the simulation-only sections; a plan is a run spec
plus the data it expects. ``check(n)`` validates the spec for a federation of
``n`` nodes at every step of its topology's schedule that the run reaches, and
returns the topology it built; the simulators and the daemons both call it, so
a plan that cannot run is refused before anyone trains, with the step and the
node that fail.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import topology
from p2pfl.errors import ConfigError
from p2pfl.privacy.config import PrivacySection
from p2pfl.spec.sections import (
    QGM_DEFAULTS,
    ROBUST_DEFAULTS,
    SECURE_MODES,
    GossipSection,
    ModelSection,
    PersonaliseSection,
    SecureSection,
    TopologySection,
    TrainingSection,
)
from protocols.errors import LocalProtocolError
from protocols.mixing import RobustRule
from protocols.partial import Selection, matching
from protocols.records import canonical
from protocols.secagg import SecAggConfig, Timeouts, dropout_tolerance

SPEC_FIELDS = (
    "seed",
    "model",
    "training",
    "topology",
    "gossip",
    "secure",
    "privacy",
    "personalise",
)
"""The keys of a run spec, in the order a plan file writes them."""


@dataclass(frozen=True)
class RunSpec:
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    topology: TopologySection = field(default_factory=TopologySection)
    gossip: GossipSection = field(default_factory=GossipSection)
    secure: SecureSection = field(default_factory=SecureSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    personalise: PersonaliseSection = field(default_factory=PersonaliseSection)

    def __post_init__(self) -> None:
        if self.secure.enabled and self.gossip.mode not in SECURE_MODES:
            raise ConfigError(
                f"secure.enabled needs gossip.mode {' or '.join(map(repr, SECURE_MODES))}, "
                f"not {self.gossip.mode!r}: secure aggregation sums a whole neighbourhood's "
                "round at once"
            )
        self._check_robust()
        if self.personalise.method == "partial" and self.gossip.mode != "sync":
            raise ConfigError(
                f"personalise.method = 'partial' needs gossip.mode = 'sync', not "
                f"{self.gossip.mode!r}: partial sharing mixes the shared layers as D-PSGD does"
            )
        if self.training.trainable and self.gossip.mode != "sync":
            raise ConfigError(
                f"training.trainable needs gossip.mode = 'sync', not {self.gossip.mode!r}: "
                "only the trainable parameters are mixed, as D-PSGD mixes them"
            )
        if self.training.trainable and self.privacy.mechanism != "none":
            raise ConfigError(
                f"training.trainable is not supported with privacy.mechanism = "
                f"{self.privacy.mechanism!r} yet (its noise and accounting cover the whole "
                "model): train the whole model under differential privacy"
            )

    def _check_robust(self) -> None:
        g = self.gossip
        if g.robust == "none":
            return
        if g.mode != "sync":
            raise ConfigError(
                f"gossip.robust = {g.robust!r} needs gossip.mode = 'sync', not {g.mode!r}: "
                "robust mixing runs over plain gossip rounds"
            )
        if self.secure.enabled and g.robust != "bounded":
            raise ConfigError(
                f"gossip.robust = {g.robust!r} needs every neighbour's model, which secure "
                "aggregation hides: with secure.enabled use gossip.robust = 'bounded' and "
                "gossip.clip_radius (docs/threat-model.md)"
            )
        if g.robust == "bounded" and not self.secure.enabled:
            raise ConfigError(
                "gossip.robust = 'bounded' is secure mode's bound on the unmasked average: "
                "without secure.enabled use 'clipped' or 'trimmed' (docs/threat-model.md)"
            )
        if g.robust == "bounded" and g.clip_radius is None:
            raise ConfigError("gossip.robust = 'bounded' needs gossip.clip_radius")

    def robust_rule(self) -> RobustRule:
        """The gossip section's rule for plain gossip (``none`` in secure mode)."""
        g = self.gossip
        if g.robust in ("none", "bounded"):
            return RobustRule()
        return RobustRule(g.robust, g.robust_byzantine, g.clip_radius)

    def secure_bound(self) -> float | None:
        """How far one secure mix may move a node (``gossip.robust = 'bounded'``), or ``None``."""
        return self.gossip.clip_radius if self.gossip.robust == "bounded" else None

    # -- what it is ---------------------------------------------------------------------

    @property
    def run_spec(self) -> RunSpec:
        """The shared sections alone (a scenario or a plan without its own sections)."""
        return RunSpec(**{name: getattr(self, name) for name in SPEC_FIELDS})

    def table(self) -> dict[str, Any]:
        """The shared sections as a TOML-ready table, every key explicit (None left out).

        ``privacy.opt_in`` is left out: whether a site shares its own figures is that
        site's choice (its node config), which a scenario only stands in for.
        """
        table = {name: _clean(_as_table(getattr(self, name))) for name in SPEC_FIELDS}
        table["privacy"].pop("opt_in", None)
        defaults = {**ROBUST_DEFAULTS, **QGM_DEFAULTS}
        for key, default in defaults.items():  # absent at the default: old hashes hold
            if table["gossip"].get(key) == default:
                table["gossip"].pop(key)
        if table["personalise"] == _as_table(PersonaliseSection()):
            table.pop("personalise")  # absent at the default: old hashes hold
        if not table["training"]["trainable"]:
            table["training"].pop("trainable")  # the whole model trains: old hashes hold
        if table["training"]["lr_schedule"] == "constant":
            table["training"].pop("lr_schedule")  # absent at the default: old hashes hold
        return table

    def digest(self) -> bytes:
        """SHA-256 of the shared sections' canonical encoding: equal specs, equal digests."""
        return hashlib.sha256(b"p2pfl run spec\0" + canonical(self.table())).digest()

    # -- what it derives --------------------------------------------------------------------

    def selection(self, parameters: Sequence[tuple[str, int]]) -> Selection | None:
        """What a node gossips of a model whose parameters are ``(name, size)`` in flat order.

        The trainable parameters (``training.trainable``; all when empty) less the
        personal layers (``personalise.method = 'partial'``). ``None`` when that is
        the whole model; a ``ConfigError`` names a layer the model does not have, or
        a choice that leaves nothing shared.
        """
        p, trainable = self.personalise, self.training.trainable
        if p.method != "partial" and not trainable:
            return None
        names = [name for name, _ in parameters]
        kept = [False] * len(names)
        try:
            if p.method == "partial":
                wanted = [_head(names) if w == "head" else w for w in p.layers]
                kept = matching(names, wanted, "personal layers")
        except LocalProtocolError as exc:
            raise ConfigError(f"[personalise]: {exc}") from None
        try:
            if trainable:
                trained = matching(names, trainable, "")
                kept = [k or not t for k, t in zip(kept, trained, strict=True)]
            blocks = [(size, k) for (_, size), k in zip(parameters, kept, strict=True)]
            return Selection.of_blocks(blocks)
        except LocalProtocolError as exc:
            section = "[training] trainable" if trainable else "[personalise]"
            raise ConfigError(f"{section}: {exc}") from None

    def build_topology(self, n: int) -> topology.Topology:
        """The topology of ``n`` nodes (``[topology]``; ``seed`` defaults to the spec's)."""
        t = self.topology
        params = {key: v for key, v in (("p", t.p), ("k", t.k), ("m", t.m)) if v is not None}
        try:
            return topology.build(
                t.kind,
                n,
                degree=t.degree,
                seed=self.seed if t.seed is None else t.seed,
                weights=t.weights,
                path=t.path,
                **params,
            )
        except topology.TopologyError as exc:
            raise ConfigError(f"[topology]: {exc}") from None

    def secagg_config(self) -> SecAggConfig:
        """Secure aggregation's parameters; the SecAgg+ partner graph is seeded by the digest."""
        s = self.secure
        try:
            return SecAggConfig(
                scale=float(s.scale),
                clip=float(s.clip),
                modulus_bits=s.modulus_bits,
                threshold=s.threshold,
                sparse_k=s.sparse_k,
                graph_seed=self.digest(),
            )
        except LocalProtocolError as exc:
            raise ConfigError(f"[secure]: {exc}") from None

    def secagg_timeouts(self) -> Timeouts:
        s = self.secure
        return Timeouts(s.share_timeout, s.masked_timeout, s.unmask_timeout)

    def steps(self, topo: topology.Topology) -> range:
        """Every distinct step of the schedule the run reaches: one for a static graph."""
        if not topo.time_varying:
            return range(1)
        return range(min(topo.period, self.training.rounds))

    def check(self, n: int, names: list[str] | None = None) -> topology.Topology:
        """Validate the spec for ``n`` nodes at every step the run reaches; the topology.

        ``names`` (the roster) name the nodes in the errors; positions otherwise.
        """
        if n < 2:
            raise ConfigError(f"a federation needs at least 2 nodes to train, not {n}")
        topo = self.build_topology(n)
        mode = self.gossip.mode
        if mode != "async" and topo.directed and not self.doubly_stochastic(topo):
            raise ConfigError(
                f"topology {topo.kind!r} is directed and its weights are only column-stochastic: "
                "use gossip.mode = 'async' (push-sum)"
            )
        if mode == "choco" and topo.time_varying:
            raise ConfigError(
                f"gossip.mode 'choco' keeps public copies of fixed neighbours; topology "
                f"{topo.kind!r} changes every round (use sync or async)"
            )
        if self.secure.enabled:
            self.secure_tolerance(topo, names)
        self.robust_fits(topo, names)
        return topo

    def robust_fits(self, topo: topology.Topology, names: list[str] | None = None) -> None:
        """Refuse a robust rule that would leave some node no neighbour at some step.

        Trimming b at each end needs 2b + 1 in-neighbours; clipped gossip's adaptive
        radius needs more than b of them (else it clips everybody to nothing).
        """
        rule = self.robust_rule()
        if not rule.active:
            return
        names = names or [f"node {i}" for i in range(topo.n)]
        for step in self.steps(topo):
            w = topo.mixing(step).tocsr()
            in_degree = np.diff(w.indptr) - (w.diagonal() != 0)
            for i, degree in enumerate(int(d) for d in in_degree):
                adaptive = rule.kind == "clipped" and rule.radius is None
                if rule.fits(degree) and not (adaptive and degree <= rule.byzantine):
                    continue
                where = f" at step {step} of its schedule" if topo.time_varying else ""
                need = 2 * rule.byzantine + 1 if rule.kind == "trimmed" else rule.byzantine + 1
                raise ConfigError(
                    f"gossip.robust = {rule.kind!r} with robust_byzantine = {rule.byzantine} "
                    f"needs {need} in-neighbours per node, but {names[i]} has {degree} on "
                    f"topology {topo.kind!r}{where}: lower robust_byzantine or use a denser graph"
                )

    def doubly_stochastic(self, topo: topology.Topology, tol: float = 1e-12) -> bool:
        """Whether every mixing matrix the run uses is doubly stochastic.

        A directed graph with such weights (one-peer exponential) mixes exactly under
        D-PSGD, so ``sync`` accepts it; plain column-stochastic weights need push-sum.
        """
        for step in self.steps(topo):
            w = topo.mixing(step)
            rows, cols = np.asarray(w.sum(axis=1)), np.asarray(w.sum(axis=0))
            if np.abs(rows - 1).max() > tol or np.abs(cols - 1).max() > tol:
                return False
        return True

    def secure_tolerance(
        self, topo: topology.Topology, names: list[str] | None = None
    ) -> dict[str, int]:
        """Per node, how many in-neighbours may drop out of a secure round, at worst over steps.

        Refuses, naming the step, the node and its degree, any node secure mode cannot
        serve at some step the run reaches: a single neighbour hides nothing, a
        neighbourhood smaller than the threshold cannot complete, one too large for the
        fixed-point range could overflow.
        """
        cfg = self.secagg_config()
        names = names or [f"node {i}" for i in range(topo.n)]
        tolerance: dict[str, int] = {}
        for step in self.steps(topo):
            w = topo.mixing(step).tocsr()
            in_degree = np.diff(w.indptr) - (w.diagonal() != 0)
            degrees = {names[i]: int(d) for i, d in enumerate(in_degree)}
            try:
                report = dropout_tolerance(cfg, degrees)
            except LocalProtocolError as exc:
                where = f" at step {step} of its schedule" if topo.time_varying else ""
                raise ConfigError(
                    f"secure aggregation cannot run on topology {topo.kind!r} of {topo.n} "
                    f"nodes{where}: {exc}"
                ) from None
            for node, value in report.items():
                tolerance[node] = min(value, tolerance.get(node, value))
        return tolerance


def _head(names: list[str]) -> str:
    """The module of the model's last parameter (``"3"`` of ``"3.bias"``): its head."""
    if not names:
        raise ConfigError("[personalise]: the model has no parameters, so no head")
    module, _, _ = names[-1].rpartition(".")
    return module or names[-1]


def _as_table(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if v is not None}
    return obj
