"""The maths of gossip averaging as plain functions over flat vectors.

These are what the state machines in ``protocols.gossip`` call and what tests
check directly; they hold no state and know nothing of rounds or peers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from protocols.errors import LocalProtocolError

Vector = npt.NDArray[Any]


def mix(
    own: Vector,
    own_weight: float,
    received: Iterable[tuple[float, Vector]],
    out: Vector | None = None,
) -> Vector:
    """sum_j W_ij x_j over the node itself and the neighbours that arrived.

    The weights are renormalised by their sum, so with every neighbour present
    (weights summing to 1) this is exactly one D-PSGD mixing step, and with
    stragglers missing it is the same average over who arrived.
    """
    pairs = list(received)
    total = own_weight + sum(w for w, _ in pairs)
    if total <= 0:
        raise LocalProtocolError("mixing weights must have a positive sum")
    result = np.multiply(own, own_weight / total, out=out)
    scratch = np.empty_like(result) if pairs else None  # one temporary, however many neighbours
    for weight, vector in pairs:
        if vector.shape != own.shape:
            raise LocalProtocolError("a received vector does not match the model's length")
        np.multiply(vector, weight / total, out=scratch)
        result += scratch
    return result


def choco_mix(
    half_step: Vector,
    own_copy: Vector,
    neighbour_copies: Iterable[tuple[float, Vector]],
    gamma: float,
) -> Vector:
    """CHOCO-SGD's consensus step: x + gamma * sum_j W_ij (x_hat_j - x_hat_i).

    ``own_copy`` is x_hat_i, the public copy of this node that its neighbours
    hold; the self term of the sum is zero and is left out.
    """
    result = np.array(half_step, dtype=half_step.dtype, copy=True)
    for weight, copy in neighbour_copies:
        result += (gamma * weight) * (copy - own_copy)
    return result


def consensus_distance(models: npt.NDArray[Any]) -> float:
    """Root mean squared distance of the rows of ``models`` to their average."""
    centred = models - models.mean(axis=0, keepdims=True)
    return float(np.sqrt(np.mean(np.sum(centred.astype(np.float64) ** 2, axis=1))))
