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


BLOCK = 1 << 16
"""Elements ``mix`` handles at a time: its one temporary is a block, never a whole model."""


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

    The result goes into ``out`` when it is given, and ``out`` may be ``own``
    itself: the vectors are mixed ``BLOCK`` elements at a time, so a mix of
    model-sized vectors allocates nothing model-sized beyond its result (none
    with ``out``). Each element is computed as over whole vectors (own times its
    weight, then plus each neighbour's times its weight, in order), so the
    result does not depend on the block size.
    """
    pairs = list(received)
    total = own_weight + sum(w for w, _ in pairs)
    if total <= 0:
        raise LocalProtocolError("mixing weights must have a positive sum")
    if any(vector.shape != own.shape for _, vector in pairs):
        raise LocalProtocolError("a received vector does not match the model's length")
    scale = own_weight / total
    if out is None:
        out = np.empty(own.shape, dtype=np.result_type(own, scale))
    elif out.shape != own.shape:
        raise LocalProtocolError("the output does not match the model's length")
    own_1d, out_1d = np.atleast_1d(own), np.atleast_1d(out)
    scratch = np.empty_like(out_1d[:BLOCK])
    for start in range(0, out_1d.shape[0], BLOCK):
        block = slice(start, start + BLOCK)
        target = out_1d[block]
        np.multiply(own_1d[block], scale, out=target)
        part = scratch[: target.shape[0]]
        for weight, vector in pairs:
            np.multiply(np.atleast_1d(vector)[block], weight / total, out=part)
            target += part
    return out


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
