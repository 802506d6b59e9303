"""Per node: the noise it adds and the (epsilon, delta) it spends over a run.

``plan_budget`` is called once before a run (by every engine and by the node
daemon, with the same inputs, so they agree) and fails early, with the reason,
when the settings cannot work: a target epsilon the schedule cannot meet, or a
fixed noise that spends more than the target.

- ``delta`` mechanism: one Gaussian mechanism per round on the whole delta
  (sample rate 1), sensitivity ``2 * clip``. In plain mode every node adds noise of
  standard deviation ``z * 2 * clip``; in secure mode each adds the share
  ``z * 2 * clip * ratio`` (see ``p2pfl.privacy.noise``) and the noise multiplier
  protecting node ``j`` is ``z * ratio / ratio_j`` (at least ``z``).
- ``dp-sgd``: opacus's sampled Gaussian mechanism per local step; node ``i``'s
  sample rate is ``batch / n_i`` and it takes ``rounds * steps_i`` steps, so the noise
  is calibrated per node and sites of different sizes spend differently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from p2pfl.privacy import accountant
from p2pfl.privacy.config import PrivacySection
from p2pfl.privacy.noise import share_ratio


@dataclass(frozen=True)
class NodeBudget:
    noise_multiplier: float
    """What protects this node's data: noise std over sensitivity (per DP-SGD step for dp-sgd)."""
    noise_std: float
    """Standard deviation this node adds to each coordinate of its delta (0 for dp-sgd)."""
    sample_rate: float
    steps: int
    epsilon: float


@dataclass(frozen=True)
class Budget:
    mechanism: str
    delta: float
    accountant: str
    nodes: list[NodeBudget]
    share_of_full: float | None = None
    """Secure delta mechanism: one node's noise share over the noise a receiver's sum carries."""

    @property
    def epsilon_max(self) -> float:
        return max((b.epsilon for b in self.nodes), default=0.0)

    def as_report(self, names: Sequence[str]) -> dict[str, object]:
        return {
            "mechanism": self.mechanism,
            "delta": self.delta,
            "accountant": self.accountant,
            "epsilon_max": self.epsilon_max,
            "share_of_full_noise": self.share_of_full,
            "nodes": [
                {
                    "node": name,
                    "epsilon": b.epsilon,
                    "noise_multiplier": b.noise_multiplier,
                    "noise_std": b.noise_std,
                    "sample_rate": b.sample_rate,
                    "steps": b.steps,
                }
                for name, b in zip(names, self.nodes, strict=True)
            ],
        }


def plan_budget(
    privacy: PrivacySection,
    *,
    rounds: int,
    steps_per_round: Sequence[int],
    batch_size: int,
    train_sizes: Sequence[int],
    secure_matrices: Iterable[object] | None = None,
    threshold_of: Callable[[int], int] | None = None,
) -> Budget | None:
    """The run's budget, or None when no noise is added.

    ``secure_matrices`` (with ``threshold_of``) are the mixing matrices of the
    topology's steps when secure aggregation sums each neighbourhood.
    """
    if not privacy.active:
        return None
    if privacy.mechanism == "dp-sgd":
        return _dpsgd(privacy, rounds, steps_per_round, batch_size, train_sizes)
    return _delta(privacy, rounds, len(train_sizes), secure_matrices, threshold_of)


def _target_noise(privacy: PrivacySection, sample_rate: float, steps: int) -> float:
    """The noise multiplier the settings ask for, checked against the target if both are set."""
    if privacy.noise_multiplier is not None:
        if privacy.epsilon is not None:
            accountant.check_meets(
                privacy.noise_multiplier,
                privacy.epsilon,
                privacy.delta,
                sample_rate,
                steps,
                privacy.accountant,
            )
        return privacy.noise_multiplier
    assert privacy.epsilon is not None
    return accountant.calibrate(
        privacy.epsilon,
        privacy.delta,
        sample_rate,
        steps,
        accountant=privacy.accountant,
        max_noise_multiplier=privacy.max_noise_multiplier,
    )


def _delta(
    privacy: PrivacySection,
    rounds: int,
    n: int,
    secure_matrices: Iterable[object] | None,
    threshold_of: Callable[[int], int] | None,
) -> Budget:
    assert privacy.clip is not None
    z = _target_noise(privacy, 1.0, rounds)
    sensitivity = 2 * privacy.clip
    if secure_matrices is None:
        spent = accountant.epsilon([(z, 1.0, rounds)], privacy.delta, privacy.accountant)
        nodes = [NodeBudget(z, z * sensitivity, 1.0, rounds, spent) for _ in range(n)]
        return Budget("delta", privacy.delta, privacy.accountant, nodes)
    assert threshold_of is not None
    ratio, per_sender = share_ratio(secure_matrices, threshold_of)
    share = z * sensitivity * ratio
    nodes = []
    for j in range(n):
        mine = per_sender[j] if j < len(per_sender) else 0.0
        zj = math.inf if mine == 0 else z * ratio / mine
        spent = (
            0.0
            if math.isinf(zj)
            else accountant.epsilon([(zj, 1.0, rounds)], privacy.delta, privacy.accountant)
        )
        nodes.append(NodeBudget(zj, share, 1.0, rounds, spent))
    return Budget("delta", privacy.delta, privacy.accountant, nodes, share_of_full=ratio)


def _dpsgd(
    privacy: PrivacySection,
    rounds: int,
    steps_per_round: Sequence[int],
    batch_size: int,
    train_sizes: Sequence[int],
) -> Budget:
    nodes = []
    for steps_i, size in zip(steps_per_round, train_sizes, strict=True):
        q = min(1.0, batch_size / size)
        total = rounds * steps_i
        z = _target_noise(privacy, q, total)
        spent = accountant.epsilon([(z, q, total)], privacy.delta, privacy.accountant)
        nodes.append(NodeBudget(z, 0.0, q, total, spent))
    return Budget("dp-sgd", privacy.delta, privacy.accountant, nodes)
