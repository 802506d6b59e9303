"""How fast a topology averages: connectivity, degrees, diameter, spectral gap, exact steps.

The spectral gap of a mixing matrix is ``1 - |lambda_2|``, the largest
eigenvalue modulus once the consensus direction is removed: disagreement
shrinks by about ``1 - gap`` per gossip step. It is computed on
``(I - J) W`` (``J = 11^T / n``), which has the spectrum of ``W`` with its
eigenvalue 1 replaced by 0 whenever ``W`` is column-stochastic, so no
eigenvalue has to be singled out afterwards. Three ways, cheapest first:

- circulant matrices (ring, complete, exponential graphs): the eigenvalues
  are the FFT of the first row, exact in O(n log n) at any size;
- up to ``DENSE_LIMIT`` nodes: a dense eigensolver;
- beyond: ARPACK on a LinearOperator (Lanczos for symmetric ``W``), falling
  back to shift-invert just above 1 for slowly mixing graphs whose top
  eigenvalues are too crowded for plain Lanczos.

A time-varying schedule has no single matrix; its gap is the per-step rate of
the product of its matrices over one period (over ``WINDOW`` steps when it
never repeats): ``1 - rho^(1/T)``, with rho the spectral radius (periodic) or
the norm (never-repeating) of ``(I - J) W_{T-1} ... W_0``. A schedule that
averages exactly has gap 1. Gaps within 1e-12 of 0 or 1 are reported as 0 or
1: float64 eigensolvers cannot resolve them more finely.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import scipy.sparse.linalg as sla

from topology.catalog import FAMILIES
from topology.core import APERIODIC, Topology
from topology.distances import diameter, is_connected, union_adjacency
from topology.weights import is_doubly_stochastic, is_symmetric

DENSE_LIMIT = 300
EXACT_TOL = 1e-9
SHRINK = 1000.0
WINDOW = 16
"""Steps of a never-repeating schedule that the analysis looks at."""

_IDENTITY_PROBES = 512
_COLLAPSE = 1e6
_NOISE = 1e-12
_SHIFT = 1e-9
_ARPACK_TOL = 1e-8
_ARPACK_RESTARTS = 100

FloatArray = npt.NDArray[np.float64]
Apply = Callable[[FloatArray], FloatArray]


def _clip(gap: float) -> float:
    """Clamp to [0, 1], snapping to the ends within ``_NOISE`` (float64 cannot tell closer)."""
    if gap < _NOISE:
        return 0.0
    return 1.0 if gap > 1.0 - _NOISE else gap


def spectral_gap(w: sp.csr_array | sp.csr_matrix) -> float:
    """``1 - |lambda_2|`` of one column-stochastic (or doubly stochastic) mixing matrix."""
    w = sp.csr_array(w)
    n = w.shape[0]
    if n < 2:
        return 1.0
    lam = _circulant_modulus(w)
    if lam is None:
        symmetric = is_symmetric(w)
        try:
            lam = _second_modulus(lambda x: w @ x, n, symmetric=symmetric)
        except sla.ArpackNoConvergence:
            if not symmetric:
                raise
            lam = _shift_invert_modulus(w)
    return _clip(1.0 - lam)


def _circulant_modulus(w: sp.csr_array) -> float | None:
    """|lambda_2| from the FFT of the first row when ``W[i, j]`` depends only on ``j - i``."""
    n = w.shape[0]
    first = w[[0], :].toarray().ravel()
    if w.nnz != n * np.count_nonzero(first):
        return None
    coo = w.tocoo()
    if not np.allclose(coo.data, first[(coo.col - coo.row) % n], rtol=0.0, atol=1e-15):
        return None
    return float(np.abs(np.fft.fft(first)[1:]).max())


def _second_modulus(apply: Apply, n: int, *, symmetric: bool) -> float:
    """Largest eigenvalue modulus of ``(I - J) A`` for the linear map ``apply``."""
    if n <= DENSE_LIMIT:
        m = apply(np.eye(n))
        m = m - m.mean(axis=0, keepdims=True)
        values = np.linalg.eigvalsh((m + m.T) / 2) if symmetric else np.linalg.eigvals(m)
        return float(np.abs(values).max())

    def projected(x: FloatArray) -> FloatArray:
        y = apply(np.asarray(x, dtype=np.float64).ravel())
        out: FloatArray = y - y.mean()
        return out

    op = sla.LinearOperator((n, n), matvec=projected, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    solver = sla.eigsh if symmetric else sla.eigs
    values = solver(
        op,
        k=1,
        which="LM",
        tol=_ARPACK_TOL,
        v0=v0,
        maxiter=_ARPACK_RESTARTS,
        return_eigenvectors=False,
    )
    return float(np.abs(values).max())


def _shift_invert_modulus(w: sp.csr_array) -> float:
    """|lambda_2| of a symmetric stochastic ``W`` whose top eigenvalues crowd near 1.

    Shift-invert just above 1 spreads them apart: ``1 / (lambda - sigma)`` is
    huge for lambda = 1 and still far from the rest for lambda_2. The most
    negative eigenvalue rarely matters for a lazy ``W``: Gershgorin bounds it
    by ``min_i (2 W_ii - 1)``, and only if that bound could beat lambda_2 is it
    computed (by plain Lanczos, which converges there for these graphs).
    """
    m = sp.csc_matrix(w)
    top = sla.eigsh(m, k=2, sigma=1.0 + _SHIFT, which="LM", return_eigenvectors=False)
    second = float(np.sort(top)[0])
    floor = float(2.0 * w.diagonal().min() - 1.0)
    if -floor <= second:
        return second
    bottom = sla.eigsh(m, k=1, which="SA", tol=_ARPACK_TOL, return_eigenvectors=False)
    return max(second, -float(bottom[0]))


def _product(mats: list[sp.csr_array]) -> Apply:
    def apply(x: FloatArray) -> FloatArray:
        for w in mats:
            x = w @ x
        return x

    return apply


def _norm_of_projected_product(mats: list[sp.csr_array], n: int) -> float:
    """``||(I - J) W_{T-1} ... W_0||_2``."""
    forward = _product(mats)
    if n <= DENSE_LIMIT:
        m = forward(np.eye(n))
        return float(np.linalg.norm(m - m.mean(axis=0, keepdims=True), 2))
    backward = _product([sp.csr_array(w.T) for w in reversed(mats)])

    def gram(x: FloatArray) -> FloatArray:
        y = forward(np.asarray(x, dtype=np.float64).ravel())
        return backward(y - y.mean())

    op = sla.LinearOperator((n, n), matvec=gram, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    values = sla.eigsh(op, k=1, which="LA", tol=_ARPACK_TOL, v0=v0, return_eigenvectors=False)
    return math.sqrt(max(0.0, float(values[0])))


def analysed_steps(topo: Topology) -> int:
    """How many steps the analysis looks at: one period, or ``WINDOW`` if none."""
    return WINDOW if topo.period == APERIODIC else topo.period


def schedule_gap(topo: Topology) -> float:
    """Per-step spectral gap of a schedule's product over ``analysed_steps`` (see module doc)."""
    steps = analysed_steps(topo)
    if steps == 1:
        return spectral_gap(topo.mixing(0))
    if exact_averaging_steps(topo, max_steps=steps) is not None:
        return 1.0
    mats = [topo.mixing(t) for t in range(steps)]
    if topo.period == APERIODIC:
        rho = _norm_of_projected_product(mats, topo.n)
    else:
        rho = _second_modulus(_product(mats), topo.n, symmetric=False)
    return _clip(1.0 - rho ** (1.0 / steps))


def default_max_steps(topo: Topology) -> int:
    """Enough for every finite-time schedule here: they finish within O(log n) steps."""
    budget = 4 * math.ceil(math.log2(topo.n)) + 4
    return budget if topo.period == APERIODIC else max(budget, topo.period)


def exact_averaging_steps(
    topo: Topology, max_steps: int | None = None, tol: float = EXACT_TOL
) -> int | None:
    """The first t with ``W_{t-1} ... W_0 = J`` (within ``tol``, entrywise), or None.

    Exact means finite-time: the step that reaches ``tol`` must also have cut
    the remaining disagreement at least ``_COLLAPSE`` times. A finite-time
    schedule drops from ~1/n to rounding noise in its last step, whereas a
    geometrically mixing one (a fast random schedule) creeps below any
    tolerance eventually and must not be reported as exact.

    Up to ``_IDENTITY_PROBES`` nodes the product itself is formed; beyond, it
    is applied to random probe vectors, which a product other than ``J``
    leaves unaveraged with probability one. A static symmetric ``W`` averages
    exactly iff ``W = J``, so it is checked at one step only.
    """
    limit = default_max_steps(topo) if max_steps is None else max_steps
    n = topo.n
    if not topo.time_varying and not topo.directed:
        limit = min(limit, 1)
    if n <= _IDENTITY_PROBES:
        x = np.eye(n)
    else:
        x = np.random.default_rng(0).standard_normal((n, 8))
        tol = tol * float(np.abs(x).max())
    before = float(np.abs(x - x.mean(axis=0, keepdims=True)).max())
    for t in range(limit):
        x = topo.mixing(t) @ x
        after = float(np.abs(x - x.mean(axis=0, keepdims=True)).max())
        if after <= tol and after * _COLLAPSE <= before:
            return t + 1
        before = after
    return None


def steps_to_shrink(gap: float, factor: float = SHRINK) -> int | None:
    """Gossip steps for disagreement to shrink ``factor`` times at rate ``1 - gap`` per step.

    ``ln(factor) / -ln(1 - gap)``, which is about ``ln(factor) / gap`` for small
    gaps; None when the gap is 0 (never).
    """
    if gap <= 0.0:
        return None
    if gap >= 1.0:
        return 1
    return max(1, math.ceil(math.log(factor) / -math.log1p(-gap) - 1e-9))


def _step_degrees(w: sp.csr_array) -> tuple[int, int, int]:
    """(min in-degree, max in-degree, number of links) of one step's matrix."""
    diagonal = (w.diagonal() != 0).astype(np.int64)
    indegree = np.diff(w.indptr) - diagonal
    links = int(indegree.sum())
    return int(indegree.min()), int(indegree.max()), links


def summary(topo: Topology) -> dict[str, Any]:
    """The figures ``p2pfl topology show --json`` prints, as JSON-ready Python values.

    For a schedule, ``edges`` and the degrees are per step (the most a node
    handles in one round: in-degree when directed), while ``connected`` and
    ``diameter`` describe the union of the graphs over ``analysed_steps``.
    """
    steps = analysed_steps(topo)
    mats = [topo.mixing(t) for t in range(steps)]
    per_step = [_step_degrees(w) for w in mats]
    links = max(p[2] for p in per_step)
    adj = union_adjacency(mats)
    exact = exact_averaging_steps(topo)
    gap = (
        1.0
        if exact is not None
        else (schedule_gap(topo) if topo.time_varying else spectral_gap(mats[0]))
    )
    params = {k: v for k, v in topo.params.items() if k != "labels"}
    info = FAMILIES.get(topo.kind)
    transitive = info is not None and info.vertex_transitive and not topo.time_varying
    return {
        "kind": topo.kind,
        "nodes": topo.n,
        "directed": topo.directed,
        "time_varying": topo.time_varying,
        "period": None if topo.period == APERIODIC else topo.period,
        "analysed_steps": steps,
        "weights": topo.weights,
        "parameters": params,
        "edges": links if topo.directed else links // 2,
        "connected": is_connected(adj, topo.directed),
        "degree_min": min(p[0] for p in per_step),
        "degree_max": max(p[1] for p in per_step),
        "diameter": diameter(adj, topo.directed, transitive=transitive),
        "spectral_gap": gap,
        "doubly_stochastic": all(is_doubly_stochastic(w) for w in mats),
        "symmetric": all(is_symmetric(w) for w in mats),
        "exact_averaging_steps": exact,
        "steps_to_1000x": exact if exact is not None else steps_to_shrink(gap),
    }
