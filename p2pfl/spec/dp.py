"""A node's differential privacy set-up, the same in a simulator and in a daemon.

``make_trainer`` gives the trainer of a stack of nodes (one row for a daemon):
plain ``StackedTrainer``, or opacus DP-SGD when the budget says so. ``DeltaNoise``
is the delta mechanism: each round's delta clipped to ``privacy.clip`` and noised
with the node's standard deviation, from a generator of its own. Seeds come from
the caller's randomness (``p2pfl.spec.derive``): derived in a rehearsal, the
operating system's in a daemon.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from p2pfl.privacy.budget import Budget
from p2pfl.privacy.noise import privatize_
from p2pfl.spec.derive import Randomness
from p2pfl.spec.run import RunSpec
from p2pfl.training import StackedTrainer, schedule_from


def make_trainer(
    spec: RunSpec,
    model: nn.Module,
    data: Sequence[tuple[Tensor, Tensor]],
    node_ids: Sequence[int],
    budget: Budget | None,
    randomness: Randomness,
    *,
    device: torch.device | None = None,
) -> Any:
    """The trainer of these nodes (in this stack order): plain, or DP-SGD when asked.

    A plain trainer's batches are seeded by (spec seed, node, round) in both places,
    so a daemon draws the batches node ``i`` of a simulation draws.
    """
    schedule = schedule_from(spec.training)
    device = device or torch.device("cpu")
    if budget is not None and budget.mechanism == "dp-sgd":
        from p2pfl.privacy.dpsgd import DpSgdTrainer

        assert spec.privacy.clip is not None
        return DpSgdTrainer(
            model,
            list(data),
            list(node_ids),
            schedule,
            seed=randomness.dp_sgd_seed(node_ids[0]),
            noise_multipliers=[budget.nodes[i].noise_multiplier for i in node_ids],
            clip=spec.privacy.clip,
            device=device,
        )
    return StackedTrainer(
        model, list(data), list(node_ids), schedule, seed=spec.seed, device=device
    )


class DeltaNoise:
    """The delta mechanism for a stack of nodes: one generator and one noise std per node."""

    def __init__(
        self,
        clip: float,
        std: Sequence[float],
        seeds: Sequence[int],
        device: torch.device | None = None,
    ) -> None:
        self.clip = clip
        self.std = list(std)
        device = device or torch.device("cpu")
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.norms: list[list[float]] = []

    def apply_(self, after: Tensor, before: Tensor) -> None:
        """Clip ``after - before`` row by row and add the noise, in place."""
        self.norms.append(privatize_(after, before, self.clip, self.std, self.generators))


def delta_noise(
    spec: RunSpec,
    budget: Budget | None,
    node_ids: Sequence[int],
    randomness: Randomness,
    device: torch.device | None = None,
) -> DeltaNoise | None:
    """The delta mechanism of these nodes, or None when the budget asks for none."""
    if budget is None or budget.mechanism != "delta":
        return None
    assert spec.privacy.clip is not None
    return DeltaNoise(
        spec.privacy.clip,
        [budget.nodes[i].noise_std for i in node_ids],
        [randomness.noise_seed(i) for i in node_ids],
        device,
    )


def norm_summary(noises: Sequence[DeltaNoise | None]) -> dict[str, float]:
    """The median L2 norm of the deltas before clipping (to tune ``privacy.clip`` by)."""
    norms = [v for noise in noises if noise is not None for row in noise.norms for v in row]
    return {"delta_norm_median": float(np.median(norms))} if norms else {}
