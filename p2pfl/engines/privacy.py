"""What the simulation engines do for ``[privacy]``: the budget, the trainer, the noise, metrics.

All three engines call these, so a node is trained, noised and measured the same way
whichever engine runs it: per node generators seeded by (seed, node), DP-SGD through
one trainer class, private metrics from each site's own test split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from p2pfl.privacy.budget import Budget, plan_budget
from p2pfl.privacy.metrics import fixed_point_sum, site_figures, summary
from p2pfl.privacy.noise import privatize_
from p2pfl.training import LocalSchedule, StackedTrainer, derived_seed
from protocols.secagg.config import SecAggConfig, threshold_for

if TYPE_CHECKING:
    import topology
    from p2pfl.datasets import FederatedData
    from p2pfl.engines.common import Setup
    from p2pfl.scenario import Scenario


def budget_for(
    scenario: Scenario, data: FederatedData, topo: topology.Topology, schedule: LocalSchedule
) -> Budget | None:
    """The run's privacy budget (None without DP); refuses settings that cannot work."""
    p = scenario.privacy
    if not p.active:
        return None
    sizes = [int(nd.x_train.shape[0]) for nd in data.nodes]
    secure = None
    if scenario.secure.enabled and p.mechanism == "delta":
        from p2pfl.engines.secure import secagg_config_of

        secure = secure_graph(topo, secagg_config_of(scenario))
    return plan_budget(
        p,
        rounds=scenario.training.rounds,
        steps_per_round=[schedule.steps_for(s) for s in sizes],
        batch_size=schedule.batch_size,
        train_sizes=sizes,
        secure_matrices=None if secure is None else secure[0],
        threshold_of=None if secure is None else secure[1],
    )


def secure_graph(
    topo: topology.Topology, cfg: SecAggConfig
) -> tuple[list[object], Callable[[int], int]]:
    """What distributed noise is sized by: the mixing matrices of the topology's steps,
    and each receiver's secure-round threshold for its number of in-neighbours."""
    from p2pfl.engines.common import steps_to_check

    def threshold_of(degree: int) -> int:
        return threshold_for(cfg, degree)

    return [topo.mixing(s) for s in steps_to_check(topo)], threshold_of


def make_trainer(setup: Setup, node_ids: Sequence[int]) -> Any:
    """The trainer of these nodes (in this stack order): plain, or DP-SGD when asked."""
    nodes = setup.data.nodes
    data = [(nodes[i].x_train, nodes[i].y_train) for i in node_ids]
    sc = setup.scenario
    if setup.budget is not None and setup.budget.mechanism == "dp-sgd":
        from p2pfl.privacy.dpsgd import DpSgdTrainer

        assert sc.privacy.clip is not None
        return DpSgdTrainer(
            setup.model,
            data,
            list(node_ids),
            setup.schedule,
            seed=sc.seed,
            noise_multipliers=[setup.budget.nodes[i].noise_multiplier for i in node_ids],
            clip=sc.privacy.clip,
            device=setup.device,
        )
    return StackedTrainer(
        setup.model, data, list(node_ids), setup.schedule, seed=sc.seed, device=setup.device
    )


class DeltaNoise:
    """The delta mechanism for a stack of nodes: one generator and one noise std per node."""

    def __init__(self, setup: Setup, node_ids: Sequence[int]) -> None:
        assert setup.budget is not None and setup.scenario.privacy.clip is not None
        self.clip = setup.scenario.privacy.clip
        self.std = [setup.budget.nodes[i].noise_std for i in node_ids]
        device = setup.device
        self.generators = [
            torch.Generator(device=device).manual_seed(derived_seed(setup.scenario.seed, i, 7))
            for i in node_ids
        ]
        self.norms: list[list[float]] = []

    def apply_(self, after: Tensor, before: Tensor) -> None:
        self.norms.append(privatize_(after, before, self.clip, self.std, self.generators))


def norm_summary(noises: Sequence[DeltaNoise | None]) -> dict[str, float]:
    """The median L2 norm of the deltas before clipping (to tune ``privacy.clip`` by)."""
    norms = [v for noise in noises if noise is not None for row in noise.norms for v in row]
    return {"delta_norm_median": float(np.median(norms))} if norms else {}


def delta_noise(setup: Setup, node_ids: Sequence[int]) -> DeltaNoise | None:
    if setup.budget is None or setup.budget.mechanism != "delta":
        return None
    return DeltaNoise(setup, node_ids)


def site_metrics(setup: Setup, params: Tensor, node_ids: Sequence[int]) -> list[dict[str, float]]:
    """Each listed node's figures for its row of ``params`` on its own test split."""
    nodes = setup.data.nodes
    return [
        site_figures(setup.model, params[row], nodes[i].x_test, nodes[i].y_test)
        for row, i in enumerate(node_ids)
    ]


def private_summary(figures: Sequence[dict[str, float]]) -> tuple[float | None, float | None]:
    """(accuracy, loss) of the federation, from the securely summed figures."""
    return summary(fixed_point_sum(figures))


def masked_summary(
    setup: Setup, round: int, figures: Sequence[dict[str, float]]
) -> tuple[float | None, float | None]:
    """The same sum through the real masks: each site masks its figures with its simulated key.

    What the node daemon publishes to the ledger; the sum of the masked records is the
    only figure it yields (tests check it equals ``private_summary``).
    """
    from p2pfl.engines.secure import federation_id, simulated_box_key
    from protocols.secagg.keys import box_public_key
    from protocols.secagg.metrics import mask_metrics, sum_metrics

    names = setup.names()
    private = {name: simulated_box_key(setup.scenario.seed, name) for name in names}
    public = {name: box_public_key(key) for name, key in private.items()}
    fed = federation_id(setup)
    masked = {
        name: mask_metrics(
            f,
            me=name,
            roster=names,
            my_box_private=private[name],
            public_keys=public,
            federation_id=fed,
            round=round,
        )
        for name, f in zip(names, figures, strict=True)
    }
    total = sum_metrics(masked, names)
    assert total is not None
    return summary(total)
