"""The delta mechanism as plain functions: clip a round's delta, add Gaussian noise.

``privatize_`` works on the rows of a ``(k, D)`` parameter buffer in place (each row a
node), one row at a time so that no ``(k, D)`` temporary is allocated. The noise comes
from the ``torch.Generator`` of each node: a simulation seeds them from the scenario
(reproducible), a node daemon from the operating system (unpredictable).

``share_ratio`` sizes the distributed noise of secure mode. Receiver ``i`` learns
``S_i = sum_k W_ik x_k`` over its in-neighbours ``k`` (and itself, whose term it knows).
A sender ``j``'s clipped delta moves ``S_i`` by at most ``W_ij * 2 * clip``; the noise
``S_i`` carries from the others is ``sqrt(sum_k W_ik^2 s_k^2)``. With every node adding
the same share ``s``, the noise multiplier that protects ``j`` from ``i`` is
``s * sqrt(sum_{k in K} W_ik^2) / (2 * clip * W_ij)``, where ``K`` is the worst set of
survivors a round still completes with: ``j`` and the ``t - 1`` in-neighbours of smallest
weight (``t`` the round's threshold). ``share_ratio`` returns the largest
``W_ij / sqrt(sum_{k in K} W_ik^2)`` over receivers, senders and the topology's steps, so
that ``s = z * 2 * clip * ratio`` gives every node at least noise multiplier ``z``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor


@torch.no_grad()
def privatize_(
    after: Tensor,
    before: Tensor,
    clip: float,
    std: Sequence[float],
    generators: Sequence[torch.Generator],
) -> list[float]:
    """``after <- before + clip(after - before) + N(0, std^2)``, row by row; the deltas' norms.

    Row ``i`` gets standard deviation ``std[i]`` (zero adds no noise) drawn from
    ``generators[i]``: each node has its own stream, so a node's noise does not depend
    on how the engine stacks the nodes. Returns the L2 norms of the deltas before
    clipping (what a user tunes ``clip`` by).
    """
    norms = []
    for i in range(after.shape[0]):
        row = after[i]
        row.sub_(before[i])
        norm = float(torch.linalg.vector_norm(row))
        norms.append(norm)
        if norm > clip:
            row.mul_(clip / norm)
        if std[i] > 0:
            noise = torch.randn(row.shape, generator=generators[i], device=row.device)
            row.add_(noise, alpha=float(std[i]))
        row.add_(before[i])
    return norms


def worst_survivor_norm(weights: Iterable[float], sender_weight: float, threshold: int) -> float:
    """``sqrt(sum W_ik^2)`` over the worst survivors: the sender and the ``t - 1`` lightest others.

    ``weights`` are the receiver's in-weights of every neighbour but the sender.
    """
    others = sorted(float(w) ** 2 for w in weights)
    kept = others[: max(0, threshold - 1)]
    return math.sqrt(sender_weight**2 + sum(kept))


def share_ratio(
    matrices: Iterable[object], threshold_of: Callable[[int], int]
) -> tuple[float, list[float]]:
    """The share ratio (see the module docstring) and, per sender, its own worst ratio.

    ``matrices`` are the mixing matrices of the steps to consider (scipy sparse,
    ``W[i, j]`` the weight receiver ``i`` gives sender ``j``); ``threshold_of(d)`` is the
    secure round's threshold for a receiver with ``d`` in-neighbours.
    """
    worst_overall = 0.0
    per_sender: dict[int, float] = {}
    for matrix in matrices:
        csr = matrix.tocsr()  # type: ignore[attr-defined]
        for i in range(csr.shape[0]):
            start, stop = csr.indptr[i], csr.indptr[i + 1]
            nbrs = [
                (int(j), float(w))
                for j, w in zip(csr.indices[start:stop], csr.data[start:stop], strict=True)
                if j != i and w != 0
            ]
            t = threshold_of(len(nbrs))
            for j, w in nbrs:
                others = [v for k, v in nbrs if k != j]
                ratio = w / worst_survivor_norm(others, w, t)
                worst_overall = max(worst_overall, ratio)
                per_sender[j] = max(per_sender.get(j, 0.0), ratio)
    n = 1 + max(per_sender, default=-1)
    return worst_overall, [per_sender.get(j, 0.0) for j in range(n)]
