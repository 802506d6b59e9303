"""The node's side of ``[privacy]`` (from the plan) and ``[drift]`` (from its own config).

- DP: the plan's mechanism, with the noise the run's budget gives this node (computed as the
  simulators compute it, from the plan, the roster's graph and this node's data size). Noise
  and Poisson sampling draw from generators seeded by the operating system, never from the
  plan: a neighbour must not be able to predict them.
- Private metrics: after each round the node masks its figures on its own test split
  (``protocols.secagg.metrics``: pairwise masks with every roster member) and publishes only
  the masked values to the ledger's ``metrics`` map; once every member has published a
  round, anyone can sum it, and the sum is the only figure it yields. A node whose config
  says ``[privacy] share_metrics = true`` also publishes its own accuracy and loss.
- Drift: a ``DriftMonitor`` over the node's training data; events go to the audit log, the
  log and ``peer.events()``, and stay on the node.

Rounds come and go as numbers (1..R, ``p2pfl.node.numbering``): the ledger's metrics
records and the drift events are numbered so; the masks and the drift monitor get the
round's index, as in the simulators.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from p2pfl.drift import DriftEvent, DriftMonitor
from p2pfl.node.errors import PlanError
from p2pfl.node.events import DriftDetected
from p2pfl.node.host import RoundHost
from p2pfl.node.numbering import index, number
from p2pfl.privacy.budget import Budget, NodeBudget
from p2pfl.privacy.metrics import NAMES, figures_of, summary
from p2pfl.spec import Graph, Plan, System, federation_bytes, privacy_budget
from p2pfl.spec.dp import delta_noise, make_trainer
from p2pfl.training import evaluate
from protocols.secagg.metrics import mask_metrics, sum_metrics

if TYPE_CHECKING:
    from p2pfl.node.local import Learner

log = logging.getLogger(__name__)

MASKED = "m:"
"""Prefix of the masked figures in a ledger metrics record (``m:correct`` ...)."""
OWN = "site:"
"""Prefix of a site's own figures, published only when its config opts in."""


class NodePrivacy:
    """DP, private metrics and drift for one node; built once its learner is loaded."""

    def __init__(
        self, node: RoundHost, plan: Plan, graph: Graph, learner: Learner, *, rounds: int
    ) -> None:
        self.node, self.plan, self.graph, self.learner = node, plan, graph, learner
        self.me = node.node_id
        self.index = graph.index(self.me)
        size = int(learner.data.x_train.shape[0])
        try:
            budget = privacy_budget(plan, graph, [size] * graph.n)
        except Exception as exc:  # the budget's ConfigError: the plan cannot be run
            raise PlanError(f"plan [privacy]: {exc}") from None
        self.budget: NodeBudget | None = None if budget is None else budget.nodes[self.index]
        if budget is not None and self.budget is not None:
            self._install(plan, learner, budget)
            log.info(
                "differential privacy: %s, epsilon %.3g at delta %g over the run "
                "(noise multiplier %.3g)",
                plan.privacy.mechanism,
                self.budget.epsilon,
                plan.privacy.delta,
                self.budget.noise_multiplier,
            )
        drift = node.config.drift
        self.monitor = (
            DriftMonitor(
                drift,
                learner.data.x_train,
                learner.data.y_train,
                rounds=rounds,
                generator=np.random.default_rng(System().noise_seed(self.index)),
            )
            if drift.enabled
            else None
        )
        self.federation: dict[int, dict[str, float]] = {}

    def _install(self, plan: Plan, learner: Learner, budget: Budget) -> None:
        """The plan's mechanism with this node's noise, seeded by the operating system."""
        randomness = System()
        if budget.mechanism == "dp-sgd":
            data = learner.data
            learner.trainer = make_trainer(
                plan, learner.model, [(data.x_train, data.y_train)], [self.index], budget,
                randomness,
            )  # fmt: skip
            return
        noise = delta_noise(plan, budget, [self.index], randomness)
        assert noise is not None
        learner.noise = noise.apply_

    # -- after each round ---------------------------------------------------------------

    def measure(
        self, r: int, accuracy: float | None, loss: float | None
    ) -> tuple[dict[str, float] | None, list[DriftEvent]]:
        """This round's own figures (if private metrics are on) and drift events.

        ``accuracy`` and ``loss`` are the learner's on its test split this round.
        Drift is computation on the node's data, safe in a worker thread; ``publish``
        then acts on the results in the event loop.
        """
        figures = None
        if self.plan.privacy.private_metrics:
            figures = figures_of(accuracy, loss, int(self.learner.data.x_test.shape[0]))
        return figures, self._watch(r) if self.monitor is not None else []

    def publish(
        self, r: int, figures: dict[str, float] | None, events: list[DriftEvent]
    ) -> dict[str, float]:
        """Masked figures to the ledger, drift events to the log; the federation's figures."""
        if figures is not None:
            self._publish(r, figures)
        for event in events:
            self._report_drift(event)
        return self.federation_metrics(r)

    def _publish(self, r: int, figures: dict[str, float]) -> None:
        node = self.node
        identity = node.identity
        ledger = node.ledger
        keys = {m: ledger.box_key(m) for m in self.graph.roster}
        masked = mask_metrics(
            figures,
            me=self.me,
            roster=self.graph.roster,
            my_box_private=bytes(identity.box_private),
            public_keys={m: k for m, k in keys.items() if k is not None},
            federation_id=federation_bytes(ledger.federation_id),
            round=index(r),
        )
        values: dict[str, int | float] = {MASKED + k: v for k, v in masked.items()}
        if node.config.privacy.share_metrics and figures["samples"] > 0:
            values[OWN + "accuracy"] = figures["correct"] / figures["samples"]
            values[OWN + "loss"] = figures["loss_sum"] / figures["samples"]
        node.write_ledger(
            ledger.publish_metrics(identity.signing_key, r, values, clock=ledger.next_clock())
        )

    def federation_metrics(self, upto: int) -> dict[str, float]:
        """The newest round up to ``upto`` that every member has published, summed.

        Neighbours finish a round at about the same time but the rest of the roster may
        lag: the newest complete round is reported, with its number.
        """
        if not self.plan.privacy.private_metrics:
            return {}
        known = max(self.federation, default=0)
        for r in range(upto, known, -1):
            total = federation_sum(self.node.ledger.metrics(r), self.graph.roster)
            if total is not None:
                self.federation[r] = total
                break
        if not self.federation:
            return {}
        r = max(self.federation)
        acc, loss = summary(self.federation[r])
        out = {"federation_round": float(r)}
        if acc is not None and loss is not None:
            out.update(federation_accuracy=acc, federation_loss=loss)
        return out

    def _watch(self, r: int) -> list[DriftEvent]:
        learner = self.learner
        x, y = learner.data.x_train, learner.data.y_train
        _, loss = evaluate(learner.model, learner.params, x, y)
        assert self.monitor is not None
        return self.monitor.observe(index(r), x, y, float(loss[0]))

    def _report_drift(self, event: DriftEvent) -> None:
        record = {**event.to_record(), "round": number(event.round)}
        log.warning(
            "drift at round %d: %s detector, %s = %s (p %.2e < %.2e)",
            record["round"],
            event.detector,
            event.statistic,
            record["value"],
            event.p_value,
            event.threshold,
        )
        self.node.record("drift", **record)
        self.node.emit(DriftDetected(**_drift_fields(record)))


def _drift_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("round", "detector", "statistic", "p_value", "threshold")} | {
        "value": float(record["value"]),
        "feature": record.get("feature"),
    }


def federation_sum(
    records: dict[str, dict[str, int | float]], roster: tuple[str, ...] | list[str]
) -> dict[str, float] | None:
    """The roster's summed figures from a round's ledger metrics records (None until all in)."""
    masked = {
        node: {k[len(MASKED) :]: int(v) for k, v in values.items() if k.startswith(MASKED)}
        for node, values in records.items()
    }
    masked = {node: v for node, v in masked.items() if set(v) == set(NAMES)}
    return sum_metrics(masked, list(roster))
