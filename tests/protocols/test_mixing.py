"""The mixing maths as plain functions: mix == W @ X, renormalisation, CHOCO's step, distance."""

from __future__ import annotations

import numpy as np
import pytest
from gossip_harness import metropolis_weights, random_connected_graph
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError
from protocols.mixing import BLOCK, choco_mix, consensus_distance, mix

FAST = settings(max_examples=40, deadline=None)

seeds = st.integers(0, 2**32 - 1)
sizes = st.integers(2, 9)


def random_setup(n: int, seed: int, dim: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = metropolis_weights(random_connected_graph(n, rng, p=0.4))
    return w, rng.standard_normal((n, dim))


@FAST
@given(sizes, seeds)
def test_mix_with_every_neighbour_is_a_row_of_w_times_x(n: int, seed: int) -> None:
    w, x = random_setup(n, seed)
    for i in range(n):
        received = [(w[i, j], x[j]) for j in range(n) if j != i and w[i, j] > 0]
        assert np.allclose(mix(x[i], w[i, i], received), (w @ x)[i], rtol=0, atol=1e-12)


@FAST
@given(sizes, seeds, st.data())
def test_mix_renormalises_over_who_arrived(n: int, seed: int, data: st.DataObject) -> None:
    w, x = random_setup(n, seed)
    i = data.draw(st.integers(0, n - 1))
    neighbours = [j for j in range(n) if j != i and w[i, j] > 0]
    arrived = data.draw(st.lists(st.sampled_from(neighbours), unique=True))
    got = mix(x[i], w[i, i], [(w[i, j], x[j]) for j in arrived])
    total = w[i, i] + sum(w[i, j] for j in arrived)
    expected = w[i, i] * x[i] + sum((w[i, j] * x[j] for j in arrived), np.zeros_like(x[i]))
    assert np.allclose(got, expected / total, atol=1e-12)


def test_mix_alone_returns_own_model_and_leaves_inputs_alone() -> None:
    own = np.array([1.0, 2.0, 3.0])
    other = np.array([3.0, 2.0, 1.0])
    assert np.array_equal(mix(own, 0.3, []), own)
    out = mix(own, 0.5, [(0.5, other)])
    assert np.array_equal(out, [2.0, 2.0, 2.0])
    assert np.array_equal(own, [1.0, 2.0, 3.0]) and np.array_equal(other, [3.0, 2.0, 1.0])


def test_mix_writes_into_out() -> None:
    own, other = np.ones(4, np.float32), np.full(4, 3.0, np.float32)
    out = np.empty(4, np.float32)
    result = mix(own, 0.25, [(0.75, other)], out=out)
    assert result is out
    assert np.allclose(out, 2.5)


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, 2 * BLOCK + 5])
def test_mix_in_blocks_and_in_place_gives_the_whole_vector_numbers(size: int) -> None:
    rng = np.random.default_rng(size)
    own = rng.standard_normal(size).astype(np.float32)
    received = [(float(w), rng.standard_normal(size).astype(np.float32)) for w in rng.random(3)]
    total = 0.4 + sum(w for w, _ in received)
    weighted = np.zeros_like(own)
    for w, x in received:
        weighted += x * np.float32(w)
    whole = (own * np.float32(0.4) + weighted) / np.float32(total)
    assert np.array_equal(mix(own, 0.4, received), whole)
    in_place = own.copy()
    assert mix(in_place, 0.4, received, out=in_place) is in_place
    assert np.array_equal(in_place, whole)


def test_mix_refuses_bad_weights_and_shapes() -> None:
    with pytest.raises(LocalProtocolError):
        mix(np.ones(3), 0.0, [])
    with pytest.raises(LocalProtocolError):
        mix(np.ones(3), 0.5, [(-0.5, np.ones(3))])
    with pytest.raises(LocalProtocolError):
        mix(np.ones(3), 0.5, [(0.5, np.ones(4))])


def test_mix_accepts_a_generator_of_pairs() -> None:
    x = np.arange(6.0).reshape(3, 2)
    got = mix(x[0], 1 / 3, ((1 / 3, row) for row in x[1:]))
    assert np.allclose(got, x.mean(axis=0))


@FAST
@given(sizes, seeds, st.floats(0.01, 1.0))
def test_choco_mix_is_the_consensus_step(n: int, seed: int, gamma: float) -> None:
    w, x = random_setup(n, seed)
    copies = x + np.random.default_rng(seed + 1).standard_normal(x.shape)
    i = 0
    neighbours = [(w[i, j], copies[j]) for j in range(n) if j != i and w[i, j] > 0]
    got = choco_mix(x[i], copies[i], neighbours, gamma)
    expected = x[i] + gamma * sum(w[i, j] * (copies[j] - copies[i]) for j in range(n))
    assert np.allclose(got, expected, atol=1e-12)
    assert got is not x[i]


@FAST
@given(sizes, seeds)
def test_choco_mix_with_exact_copies_and_gamma_one_is_w_times_x(n: int, seed: int) -> None:
    w, x = random_setup(n, seed)
    for i in range(n):
        neighbours = [(w[i, j], x[j]) for j in range(n) if j != i and w[i, j] > 0]
        assert np.allclose(choco_mix(x[i], x[i], neighbours, 1.0), (w @ x)[i], atol=1e-12)


@FAST
@given(sizes, seeds)
def test_choco_mix_preserves_the_average_with_doubly_stochastic_weights(n: int, seed: int) -> None:
    w, x = random_setup(n, seed)
    copies = x + np.random.default_rng(seed + 1).standard_normal(x.shape)
    mixed = [
        choco_mix(x[i], copies[i], [(w[i, j], copies[j]) for j in range(n) if j != i], 0.4)
        for i in range(n)
    ]
    assert np.allclose(np.mean(mixed, axis=0), x.mean(axis=0), atol=1e-12)


@FAST
@given(st.integers(1, 6), st.integers(0, 5), seeds)
def test_consensus_distance_of_identical_rows_is_zero(n: int, dim: int, seed: int) -> None:
    row = np.random.default_rng(seed).standard_normal(dim)
    # zero up to the rounding of the mean (n * r / n need not be r exactly)
    assert consensus_distance(np.tile(row, (n, 1))) <= 1e-15 * (1 + np.abs(row).max(initial=0))
    assert consensus_distance(row[None, :]) == 0.0


def test_consensus_distance_known_value_and_translation_invariance() -> None:
    models = np.array([[0.0, 0.0], [2.0, 0.0]])
    assert consensus_distance(models) == pytest.approx(1.0)
    assert consensus_distance(models + 100.0) == pytest.approx(1.0)
    assert consensus_distance(models.astype(np.float32) * 3) == pytest.approx(3.0)


@FAST
@given(sizes, seeds)
def test_mixing_never_increases_consensus_distance(n: int, seed: int) -> None:
    w, x = random_setup(n, seed)
    assert consensus_distance(w @ x) <= consensus_distance(x) + 1e-12
