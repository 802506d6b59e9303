"""Properties over random families and sizes: every matrix mixes, every graph connects."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from topology import TopologyError, build, schedule_gap, spectral_gap
from topology.analysis import analysed_steps
from topology.distances import is_connected, union_adjacency
from topology.weights import is_column_stochastic, is_doubly_stochastic, is_symmetric

SETTINGS = settings(max_examples=40, deadline=None)

ANY_N = ["ring", "path", "star", "complete", "exponential", "exponential-directed"]
RANDOM = ["erdos-renyi", "barabasi-albert"]


@st.composite
def family(draw: st.DrawFn) -> tuple[str, int, dict[str, object]]:
    kind = draw(
        st.sampled_from(
            [
                *ANY_N,
                *RANDOM,
                "torus",
                "hypercube",
                "regular",
                "watts-strogatz",
                "base-k",
                "one-peer-exponential",
                "random-regular-per-round",
            ]
        )
    )
    params: dict[str, object] = {"seed": draw(st.integers(0, 10_000))}
    if kind in ("torus",):
        n = draw(st.integers(2, 7)) ** 2
    elif kind in ("hypercube", "one-peer-exponential"):
        n = 2 ** draw(st.integers(1, 6))
    elif kind in ("regular", "random-regular-per-round"):
        n = draw(st.integers(4, 60))
        low = 3 if kind == "regular" else 1
        d = draw(st.integers(low, n - 1).filter(lambda d: n * d % 2 == 0))
        params["degree"] = d
    elif kind == "watts-strogatz":
        n = draw(st.integers(5, 60))
        params["degree"] = 2 * draw(st.integers(1, (n - 1) // 2))
        params["p"] = draw(st.floats(0.0, 1.0))
    elif kind == "base-k":
        n = draw(st.integers(2, 80))
        params["k"] = draw(st.integers(1, min(5, n - 1)))
    else:
        n = draw(st.integers(2, 60))
    return kind, n, params


@SETTINGS
@given(family(), st.sampled_from(["metropolis", "max-degree", "uniform"]))
def test_matrices_mix_and_graphs_connect(
    case: tuple[str, int, dict[str, object]], weights: str
) -> None:
    kind, n, params = case
    try:
        topo = build(kind, n, weights=weights, **params)  # type: ignore[arg-type]
    except TopologyError as exc:
        # Only one refusal is legitimate here: uniform weights on an irregular graph.
        assert weights == "uniform" and exc.parameter == "weights", exc
        return
    steps = min(analysed_steps(topo), 6)
    mats = [topo.mixing(t) for t in range(steps)]
    for w in mats:
        assert w.data.min() >= 0
        assert is_doubly_stochastic(w, tol=1e-12)
        assert is_column_stochastic(w, tol=1e-12)
        if not topo.directed:
            assert is_symmetric(w)
    full = [topo.mixing(t) for t in range(analysed_steps(topo))]
    assert is_connected(union_adjacency(full), topo.directed)
    gap = schedule_gap(topo) if topo.time_varying else spectral_gap(mats[0])
    assert 0 < gap <= 1
    assert math.isfinite(gap)


@SETTINGS
@given(st.integers(2, 40), st.integers(0, 10_000))
def test_static_gap_is_positive_and_at_most_one(n: int, seed: int) -> None:
    for kind in ("ring", "path", "star", "erdos-renyi", "barabasi-albert"):
        assert 0 < spectral_gap(build(kind, n, seed=seed).mixing()) <= 1
