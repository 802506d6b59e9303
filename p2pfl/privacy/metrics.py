"""Private metrics in the engines: each site's figures on its own test split, summed securely.

A site evaluates its current model on its own test split: correct predictions, test
samples and summed loss. Only the sum over the federation leaves the sites: the
protocol engine and the node daemon mask each site's figures with
``protocols.secagg.metrics`` (pairwise masks over the roster); the vectorized engine
adds the same fixed-point codes directly, which is what the masks cancel to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import Tensor, nn

from p2pfl.training import evaluate
from protocols.secagg.metrics import decode_values, encode_values

NAMES = ("correct", "loss_sum", "samples")


def site_figures(model: nn.Module, params: Tensor, x: Tensor, y: Tensor) -> dict[str, float]:
    """One site's figures for the model ``params`` (D,) on its test split (x, y)."""
    n = int(x.shape[0])
    if n == 0:
        return figures_of(None, None, 0)
    acc, loss = evaluate(model, params.reshape(1, -1), x, y)
    return figures_of(float(acc[0]), float(loss[0]), n)


def figures_of(accuracy: float | None, loss: float | None, samples: int) -> dict[str, float]:
    """The summable figures of an accuracy and mean loss over ``samples`` test samples."""
    if samples == 0 or accuracy is None or loss is None:
        return {"correct": 0.0, "loss_sum": 0.0, "samples": 0.0}
    return {
        "correct": float(round(accuracy * samples)),
        "loss_sum": loss * samples,
        "samples": float(samples),
    }


def fixed_point_sum(figures: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The federation's sum exactly as the masked protocol decodes it (codes mod 2^64)."""
    total = np.zeros(len(NAMES), dtype=np.uint64)
    for f in figures:
        total += encode_values([f[k] for k in NAMES])
    return dict(zip(NAMES, decode_values(total), strict=True))


def summary(total: Mapping[str, float]) -> tuple[float | None, float | None]:
    """(accuracy, mean loss) of a summed record; None when no site had test data."""
    samples = total["samples"]
    if samples <= 0:
        return None, None
    return total["correct"] / samples, total["loss_sum"] / samples
