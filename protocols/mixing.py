"""The maths of gossip averaging as plain functions.

These are what the state machines in ``protocols.gossip`` call on one node's
flat numpy vector, what the vectorized engine calls on a stack of torch rows
(one row per node, weights as columns of shape (n, 1), the neighbour sums from
its own sparse matrix product), and what tests check directly. Each formula is
written once, in ``combine``, ``choco_step``, ``push_sum_absorb`` and
``push_sum_model``, over arrays of the array API standard; they hold no state
and know nothing of rounds or peers.

Byzantine-robust mixing (``RobustRule``) replaces the plain average where a
neighbour may be malicious or broken; its maths (``clip_factor``, ``clip``,
``adaptive_radius``, ``clipped_mix``, ``trimmed_mix``) is array-API too, so
the sync core runs it on numpy vectors and the vectorized engine on torch rows:

- clipped gossip (He, Karimireddy and Jaggi, "Byzantine-robust decentralized
  learning via ClippedGossip", ICLR 2023, Algorithm 1):
  x_i <- x_i + sum_j W_ij clip(x_j - x_i, tau_i), clip(z, tau) = z min(1, tau / ||z||).
  ``tau_i`` is fixed (``radius``) or adaptive: the distance of the
  (b + 1)-th farthest neighbour, so that exactly the b farthest are clipped
  (the weight of the expected Byzantine neighbours); for b = 1 this is the
  authors' own experiments' rule, the second largest distance
  (epfml/byzantine-robust-decentralized-optimizer, ``SelfCenteredClipping``).
  The paper's guarantee needs the Byzantine weight at each honest node small
  against the honest graph's spectral gap (delta = O(gamma^2)); with b
  attackers among d equally weighted neighbours that is a fraction b / d of
  them, each of whose pull is at most W_ij tau_i.
- coordinate-wise trimmed mean (BRIDGE-T of Yang and Bajwa 2019): per
  coordinate, drop the b largest and b smallest neighbour values and average
  the rest with the node's own, x_i <- (x_i + sum kept) / (d - 2b + 1). It
  tolerates up to b Byzantine neighbours per node and needs d >= 2b + 1.

A neighbour value that is not finite is treated as maximally distant: clipping
gives it no contribution, trimming replaces it by the node's own value. NaN
from a neighbour never reaches the result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from array_api_compat import array_namespace

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


ROBUST_RULES = ("none", "clipped", "trimmed")
"""``none``: plain mixing; ``clipped``: ClippedGossip; ``trimmed``: coordinate-wise trimmed mean."""


@dataclass(frozen=True)
class RobustRule:
    """How a node mixes when a neighbour may be Byzantine (module docstring).

    ``byzantine`` is b, the Byzantine neighbours a node expects: clipped gossip
    clips the b farthest (unless ``radius`` fixes tau), trimming drops b values
    at each end of every coordinate.
    """

    kind: str = "none"
    byzantine: int = 1
    radius: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ROBUST_RULES:
            raise LocalProtocolError(
                f"robust rule must be one of {ROBUST_RULES}, not {self.kind!r}"
            )
        if self.byzantine < 0:
            raise LocalProtocolError("the expected number of Byzantine neighbours must be >= 0")
        if self.radius is not None and not self.radius > 0:
            raise LocalProtocolError(f"the clipping radius must be positive, not {self.radius}")

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def fits(self, degree: int) -> bool:
        """Whether a node of ``degree`` in-neighbours keeps one after the rule (trimming)."""
        return self.kind != "trimmed" or degree >= 2 * self.byzantine + 1


def clip_factor(norm: Any, tau: Any) -> Any:
    """min(1, tau / ||z||) given ``norm`` = ||z||; 0 where the norm is not finite.

    ``norm`` and ``tau`` broadcast (scalars, or one per row). A zero norm gives 1.
    """
    xp = array_namespace(norm)
    finite = xp.isfinite(norm)
    safe = xp.where(finite & (norm > 0), norm, xp.ones_like(norm))
    factor = xp.where(safe > tau, tau / safe, xp.ones_like(safe))
    return xp.where(finite, factor, xp.zeros_like(factor))


def row_norms(z: Any) -> Any:
    """The Euclidean norm of each row of ``z`` (last axis, kept), without overflow.

    Rows are scaled by their largest magnitude first, so a row of 1e30s has a finite
    norm in float32. Non-finite entries give a non-finite norm.
    """
    xp = array_namespace(z)
    peak = xp.max(xp.abs(z), axis=-1, keepdims=True)
    unit = xp.where((peak > 0) & xp.isfinite(peak), peak, xp.ones_like(peak))
    return unit * xp.linalg.vector_norm(z / unit, axis=-1, keepdims=True)


def clip(z: Any, tau: Any) -> Any:
    """clip(z, tau) = z min(1, tau / ||z||) for each row of ``z`` (norm over the last axis).

    A row holding any non-finite value becomes zero. ``tau``: a scalar or a column.
    """
    xp = array_namespace(z)
    finite = xp.all(xp.isfinite(z), axis=-1, keepdims=True)
    safe = xp.where(finite, z, xp.zeros_like(z))
    none = xp.zeros_like(finite, dtype=z.dtype)
    factor = xp.where(finite, clip_factor(row_norms(safe), tau), none)
    return safe * factor


def adaptive_radius(distances: Any, byzantine: int) -> float:
    """ClippedGossip's adaptive tau_i: the (b + 1)-th largest of the neighbours' distances.

    The b farthest neighbours (non-finite distances count as farthest) are then
    clipped to the distance of the next one, and nobody closer is touched. With
    b at least the number of neighbours there is nobody to trust: tau is 0.
    """
    xp = array_namespace(distances)
    count = int(distances.shape[0])
    if byzantine >= count:
        return 0.0
    finite = xp.isfinite(distances)
    ordered = xp.sort(xp.where(finite, distances, xp.full_like(distances, float("inf"))))
    return float(ordered[count - 1 - byzantine])


def clipped_mix(own: Any, neighbours: Any, weights: Any, tau: Any) -> Any:
    """x_i + sum_j W_ij clip(x_j - x_i, tau): ClippedGossip's mixing step.

    ``own`` is x_i (D,), ``neighbours`` the arrived x_j stacked (k, D), ``weights``
    their W_ij (k,). A neighbour that did not arrive contributes nothing, as if it
    held x_i. With no neighbour past ``tau`` and every weight present this is
    exactly W_ii x_i + sum_j W_ij x_j.
    """
    xp = array_namespace(own, neighbours)
    clipped = clip(neighbours - own[None, :], tau)
    w = xp.asarray(weights, dtype=own.dtype)
    return own + xp.sum(w[:, None] * clipped, axis=0)


def trimmed_mix(own: Any, neighbours: Any, trim: int) -> Any:
    """(x_i + sum of the kept neighbour values) / (k - 2 trim + 1), per coordinate.

    Per coordinate the ``trim`` largest and ``trim`` smallest of the k neighbours'
    values are dropped. Non-finite neighbour values are replaced by the node's own
    first (no pull). ``LocalProtocolError`` when k <= 2 trim: nobody would be left.
    """
    xp = array_namespace(own, neighbours)
    count = int(neighbours.shape[0])
    if count <= 2 * trim:
        raise LocalProtocolError(f"trimming {trim} at each end of {count} neighbours leaves none")
    values = xp.where(xp.isfinite(neighbours), neighbours, own[None, :])
    kept = xp.sort(values, axis=0)[trim : count - trim]
    return (own + xp.sum(kept, axis=0)) / (count - 2 * trim + 1)


def robust_mix(own: Any, neighbours: Any, weights: Any, rule: RobustRule) -> Any:
    """One node's mix under ``rule`` (clipped or trimmed) over its arrived neighbours."""
    if rule.kind == "trimmed":
        return trimmed_mix(own, neighbours, rule.byzantine)
    if rule.kind != "clipped":
        raise LocalProtocolError(f"robust_mix needs a robust rule, not {rule.kind!r}")
    if int(neighbours.shape[0]) == 0:
        return own
    tau: Any = rule.radius
    if tau is None:
        distances = row_norms(neighbours - own[None, :])[:, 0]
        tau = adaptive_radius(distances, rule.byzantine)
    return clipped_mix(own, neighbours, weights, tau)


def bound_deviation(own: Any, mixed: Any, radius: Any) -> Any:
    """own + clip(mixed - own, radius): the mix moves a node by at most ``radius``.

    What a secure receiver can apply without seeing one contribution: the
    unmasked neighbourhood average is pulled back to within ``radius`` of the
    node's own model (rows: ``radius`` a scalar or a column). A non-finite mix
    leaves the node where it was.
    """
    return own + clip(mixed - own, radius)
