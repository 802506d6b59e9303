"""Partitions are pure functions of labels and a generator: coverage, determinism, skew."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl import partition
from p2pfl.errors import ConfigError, DataError


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))
    for p in parts:
        assert p.dtype == np.int64
        assert np.array_equal(p, np.sort(p))


labels_strategy = st.lists(st.integers(0, 4), min_size=8, max_size=200).map(
    lambda xs: np.array(xs, dtype=np.int64)
)


@settings(max_examples=60, deadline=None)
@given(labels=labels_strategy, nodes=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_iid_covers_every_sample_once_with_balanced_sizes(labels, nodes, seed):
    parts = partition.iid(labels, nodes, rng(seed))
    assert len(parts) == nodes
    assert_exact_cover(parts, len(labels))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=60, deadline=None)
@given(
    labels=labels_strategy,
    nodes=st.integers(1, 8),
    alpha=st.floats(0.05, 50.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_covers_every_sample_once(labels, nodes, alpha, seed):
    parts = partition.dirichlet(labels, nodes, alpha, rng(seed), min_samples=0)
    assert len(parts) == nodes
    assert_exact_cover(parts, len(labels))


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    labels=labels_strategy,
    seed=st.integers(0, 2**32 - 1),
)
def test_classes_gives_each_node_exactly_k_classes(data, labels, seed):
    present, counts = np.unique(labels, return_counts=True)
    k = data.draw(st.integers(1, len(present)))
    min_nodes = -(-len(present) // k)
    nodes = data.draw(st.integers(min_nodes, max(min_nodes, 8)))
    holders_per_class = -(-nodes * k // len(present))
    try:
        parts = partition.classes(labels, nodes, k, rng(seed))
    except DataError as exc:
        # Only possible when some class has fewer samples than nodes holding it.
        assert counts.min() < holders_per_class, exc
        return
    assert_exact_cover(parts, len(labels))
    for p in parts:
        assert len(np.unique(labels[p])) == k


@pytest.mark.parametrize(
    "split",
    [
        lambda y, g: partition.iid(y, 5, g),
        lambda y, g: partition.dirichlet(y, 5, 0.3, g),
        lambda y, g: partition.classes(y, 5, 2, g),
    ],
    ids=["iid", "dirichlet", "classes"],
)
def test_partitions_are_deterministic_for_a_seed(split):
    labels = rng(99).integers(0, 10, size=2000)
    first, again, other = split(labels, rng(7)), split(labels, rng(7)), split(labels, rng(8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between a node's label mix and the global mix."""
    global_mix = np.bincount(labels, minlength=10) / len(labels)
    distances = [
        0.5 * np.abs(np.bincount(labels[p], minlength=10) / len(p) - global_mix).sum()
        for p in parts
    ]
    return float(np.mean(distances))


def test_dirichlet_small_alpha_is_skewed_and_large_alpha_is_not():
    labels = np.repeat(np.arange(10), 500)
    skewed = partition.dirichlet(labels, 10, 0.1, rng(1), min_samples=10)
    mixed = partition.dirichlet(labels, 10, 1000.0, rng(1), min_samples=10)
    assert label_skew(labels, skewed) > 0.5
    assert label_skew(labels, mixed) < 0.05
    assert min(len(p) for p in skewed) >= 10


def test_dirichlet_guarantees_min_samples_by_resampling():
    labels = np.repeat(np.arange(2), 100)
    parts = partition.dirichlet(labels, 4, 0.2, rng(3), min_samples=20)
    assert min(len(p) for p in parts) >= 20
    assert_exact_cover(parts, 200)


def test_dirichlet_gives_up_with_a_clear_error():
    labels = np.repeat(np.arange(2), 50)
    with pytest.raises(DataError, match="min_samples_per_node=30"):
        partition.dirichlet(labels, 3, 0.001, rng(0), min_samples=30)


def test_natural_is_one_node_per_site():
    sites = np.array([0, 1, 1, 2, 0, 2, 2])
    parts = partition.natural(sites, 3, ("a", "b", "c"))
    assert [p.tolist() for p in parts] == [[0, 4], [1, 2], [3, 5, 6]]


def test_natural_needs_as_many_nodes_as_sites():
    with pytest.raises(ConfigError, match=r"nodes=2.*3 sites"):
        partition.natural(np.array([0, 1, 2]), 2, ("a", "b", "c"))


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda y: partition.iid(y, 0, rng()), ConfigError, "nodes"),
        (lambda y: partition.iid(y, 11, rng()), DataError, r"nodes \(11\).*samples \(10\)"),
        (lambda y: partition.dirichlet(y, 2, 0.0, rng()), ConfigError, "alpha"),
        (lambda y: partition.dirichlet(y, 2, -1.0, rng()), ConfigError, "alpha"),
        (lambda y: partition.dirichlet(y, 2, float("nan"), rng()), ConfigError, "alpha"),
        (lambda y: partition.dirichlet(y, 4, 1.0, rng(), min_samples=3), DataError, "min_samples"),
        (lambda y: partition.classes(y, 2, 0, rng()), ConfigError, "classes_per_node"),
        (lambda y: partition.classes(y, 2, 3, rng()), ConfigError, "classes_per_node"),
        (lambda y: partition.classes(y, 1, 1, rng()), ConfigError, "classes_per_node"),
        (lambda y: partition.classes(y, 10, 2, rng()), DataError, "class"),
    ],
)
def test_bad_parameters_are_named(call, error, pattern):
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    with pytest.raises(error, match=pattern):
        call(labels)


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 3), min_size=2, max_size=300).map(np.array),
    fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**32 - 1),
)
def test_train_test_split_is_a_stratified_partition(labels, fraction, seed):
    train, test = partition.train_test_split(labels, fraction, rng(seed))
    n = len(labels)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n))
    assert len(test) == min(max(round(n * fraction), 1), n - 1)
    for c, count in zip(*np.unique(labels, return_counts=True), strict=True):
        in_test = int((labels[test] == c).sum())
        assert abs(in_test - count * len(test) / n) < 1.0 + 1e-9


def test_train_test_split_validates():
    with pytest.raises(ConfigError, match="test_fraction"):
        partition.train_test_split(np.array([0, 1, 0]), 1.0, rng())
    with pytest.raises(DataError, match="at least 2"):
        partition.train_test_split(np.array([0]), 0.5, rng())
