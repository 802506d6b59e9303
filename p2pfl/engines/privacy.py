"""What the simulation engines do for ``[privacy]``: the trainer, the noise, the metrics.

All three engines call these, so a node is trained, noised and measured the same way
whichever engine runs it; the trainer and the noise are the daemon's too
(``p2pfl.spec.dp``), with the rehearsal's derived seeds (per node generators seeded
by (seed, node)); private metrics come from each site's own test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from p2pfl.privacy.metrics import fixed_point_sum, site_figures, summary
from p2pfl.spec import dp
from p2pfl.spec.dp import DeltaNoise, norm_summary
from protocols.secagg.metrics import mask_metrics, sum_metrics

if TYPE_CHECKING:
    from p2pfl.engines.common import Setup

__all__ = [
    "delta_noise",
    "make_trainer",
    "masked_summary",
    "norm_summary",
    "private_summary",
    "site_metrics",
]


def make_trainer(setup: Setup, node_ids: Sequence[int]) -> Any:
    """The trainer of these nodes (in this stack order): plain, or DP-SGD when asked."""
    nodes = setup.data.nodes
    data = [(nodes[i].x_train, nodes[i].y_train) for i in node_ids]
    return dp.make_trainer(
        setup.scenario, setup.model, data, node_ids, setup.budget, setup.randomness,
        device=setup.device,
    )  # fmt: skip


def delta_noise(setup: Setup, node_ids: Sequence[int]) -> DeltaNoise | None:
    """The delta mechanism of these nodes (None unless the budget asks for it)."""
    return dp.delta_noise(setup.scenario, setup.budget, node_ids, setup.randomness, setup.device)


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
    names = setup.names()
    keys = {name: setup.randomness.key_ring(name, names) for name in names}
    masked = {
        name: mask_metrics(
            f,
            me=name,
            roster=names,
            my_box_private=keys[name].box_private,
            public_keys=keys[name].public_keys,
            federation_id=setup.federation,
            round=round,
        )
        for name, f in zip(names, figures, strict=True)
    }
    total = sum_metrics(masked, names)
    assert total is not None
    return summary(total)
