"""The maths of gossip averaging as plain functions.

These are what the state machines in ``protocols.gossip`` call on one node's
flat numpy vector, what the vectorized engine calls on a stack of torch rows
(one row per node, weights as columns of shape (n, 1), the neighbour sums from
its own sparse matrix product), and what tests check directly. Each formula is
written once, in ``combine``, ``choco_step``, ``push_sum_absorb`` and
``push_sum_model``, over arrays of the array API standard; they hold no state
and know nothing of rounds or peers.
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


def combine(own: Any, own_weight: Any, weighted_sum: Any, total: Any) -> Any:
    """D-PSGD's step renormalised over arrivals: (W_ii x_i + sum_j W_ij x_j) / sum of weights.

    ``weighted_sum`` is sum_j W_ij x_j over the neighbours that arrived and
    ``total`` is W_ii plus their weights: with every neighbour present (weights
    summing to 1) this is one row of W x. Scalars for one vector; (n, 1)
    columns for a stack of rows.
    """
    return (own * own_weight + weighted_sum) / total


def choco_step(x: Any, own_copy: Any, weighted_copies: Any, weight_sum: Any, gamma: float) -> Any:
    """CHOCO-SGD's consensus step, x + gamma * sum_j W_ij (x_hat_j - x_hat_i).

    Written as x + gamma * (sum_j W_ij x_hat_j - (sum_j W_ij) x_hat_i), so the sum
    may run over the neighbours only or include the node itself (its term is
    zero): ``weighted_copies`` is sum_j W_ij x_hat_j and ``weight_sum`` sum_j W_ij
    over the same j. Scalars for one vector; (n, 1) columns for rows.
    """
    return x + gamma * (weighted_copies - weight_sum * own_copy)


def push_sum_absorb(numerator: Any, weight: Any, model: Any, handed_out: Any) -> Any:
    """Stochastic gradient push: x <- x + w (model - handed_out).

    The node trained its de-biased model x / w (``handed_out``) into ``model``; the
    displacement enters the numerator scaled by the weight, so x / w moves by exactly
    what training moved it. With w = 1 (every share of a regular graph in, lock
    step) this is SGP's x <- x - lr g (Assran et al. 2019, Alg. 1); without a
    barrier a node that ran ahead of its in-neighbours holds a small w until their
    shares arrive, and an unscaled displacement would move its model by d / w.
    ``weight`` is a scalar, or a column for rows.
    """
    return numerator + weight * (model - handed_out)


def push_sum_model(numerator: Any, weight: Any) -> Any:
    """The de-biased model of push-sum, x / w (w a scalar, or a column for rows)."""
    return numerator / weight


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
    with ``out``). Each element is ``combine`` of the neighbours' weighted sum
    taken in order, as over whole vectors, so the result does not depend on
    the block size.
    """
    pairs = list(received)
    total = own_weight + sum(w for w, _ in pairs)
    if total <= 0:
        raise LocalProtocolError("mixing weights must have a positive sum")
    if any(vector.shape != own.shape for _, vector in pairs):
        raise LocalProtocolError("a received vector does not match the model's length")
    if out is None:
        out = np.empty(own.shape, dtype=np.result_type(own, own_weight / total))
    elif out.shape != own.shape:
        raise LocalProtocolError("the output does not match the model's length")
    own_1d, out_1d = np.atleast_1d(own), np.atleast_1d(out)
    scratch = np.empty_like(out_1d[:BLOCK])
    term = np.empty_like(scratch)
    for start in range(0, out_1d.shape[0], BLOCK):
        block = slice(start, start + BLOCK)
        target = out_1d[block]
        weighted = scratch[: target.shape[0]]
        weighted.fill(0)
        part = term[: target.shape[0]]
        for weight, vector in pairs:
            np.multiply(np.atleast_1d(vector)[block], weight, out=part)
            weighted += part
        target[...] = combine(own_1d[block], own_weight, weighted, total)
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
    weighted = np.zeros_like(half_step)
    weight_sum = 0.0
    for weight, copy in neighbour_copies:
        weighted += weight * copy
        weight_sum += weight
    result: Vector = choco_step(half_step, own_copy, weighted, weight_sum, gamma)
    return result


def consensus_distance(models: npt.NDArray[Any]) -> float:
    """Root mean squared distance of the rows of ``models`` to their average."""
    centred = models - models.mean(axis=0, keepdims=True)
    return float(np.sqrt(np.mean(np.sum(centred.astype(np.float64) ** 2, axis=1))))
