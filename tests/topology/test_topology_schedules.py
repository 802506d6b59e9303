"""Time-varying schedules: exact finite-time averaging where the papers promise it."""

from __future__ import annotations

import numpy as np
import pytest

from topology import build, exact_averaging_steps
from topology.schedules import base_schedule, smooth_factors
from topology.weights import is_doubly_stochastic, is_symmetric


def product(topo, steps: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    p = np.eye(topo.n)
    for t in range(steps):
        p = topo.mixing(t) @ p
    return p


def test_one_peer_exponential_16_averages_exactly_after_4_steps() -> None:
    topo = build("one-peer-exponential", 16)
    assert exact_averaging_steps(topo) == 4
    assert np.abs(product(topo, 4) - 1 / 16).max() < 1e-12
    assert np.abs(product(topo, 3) - 1 / 16).max() > 0.01


@pytest.mark.parametrize("n", [2, 4, 8, 32, 64])
def test_one_peer_exponential_takes_log2_n_steps(n: int) -> None:
    assert exact_averaging_steps(build("one-peer-exponential", n)) == int(np.log2(n))


@pytest.mark.parametrize("n", [12, 24, 100])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_base_k_averages_exactly_in_finite_steps(n: int, k: int) -> None:
    topo = build("base-k", n, k=k)
    steps = exact_averaging_steps(topo)
    assert steps is not None and steps <= topo.period
    assert np.abs(product(topo, steps) - 1 / n).max() < 1e-9
    for t in range(topo.period):
        w = topo.mixing(t)
        assert is_symmetric(w) and is_doubly_stochastic(w)
        assert max(len(topo.in_neighbours(i, t)) for i in range(n)) <= k


def test_base_k_sweep_small_n() -> None:
    """Every n up to 70 and k up to 4: exact, doubly stochastic, at most k peers per step."""
    for k in range(1, 5):
        for n in range(k + 1, 71):
            p = np.eye(n)
            for w in base_schedule(n, k):
                assert (np.diff(w.indptr) - 1).max() <= k
                p = w @ p
            assert np.abs(p - 1 / n).max() < 1e-9, (n, k)


def test_base_k_lengths() -> None:
    """Powers of k+1 take log_{k+1}(n) steps, like the hypercube; 12 nodes with one peer take 5."""
    assert build("base-k", 64, k=1).period == 6
    assert build("base-k", 27, k=2).period == 3
    assert build("base-k", 12, k=1).period == 5
    assert build("base-k", 5, k=4).period == 1  # one clique: just the complete graph


def test_smooth_factors() -> None:
    assert smooth_factors(12, 4) == (4, 3)
    assert smooth_factors(1, 2) == ()
    assert smooth_factors(10, 4) is None
    assert smooth_factors(72, 8) is not None and len(smooth_factors(72, 8) or ()) == 3


def test_random_per_round_is_never_reported_exact() -> None:
    topo = build("random-regular-per-round", 64, degree=6, seed=1)
    assert exact_averaging_steps(topo, max_steps=60) is None


def test_static_graphs() -> None:
    assert exact_averaging_steps(build("complete", 9)) == 1
    assert exact_averaging_steps(build("ring", 9)) is None
    assert exact_averaging_steps(build("exponential-directed", 16)) is None
