"""How a pool of labelled samples is shared out among the nodes of a simulation.

Every function here is pure: it takes label (or site) arrays and an explicit
``numpy.random.Generator`` and returns index arrays; the same generator state
gives the same answer. The partitions (``natural``, ``iid``, ``dirichlet``,
``classes``) cover every sample exactly once: the index arrays they return are
disjoint and their union is ``range(len(labels))``. Each array is sorted, so the
order of samples inside a node does not depend on how the partition was drawn.

Errors name the parameter at fault: a value that can never work is a
``ConfigError``; a value that this particular data cannot satisfy is a
``DataError``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from p2pfl.errors import ConfigError, DataError

PARTITIONS: dict[str, str] = {
    "natural": "the dataset's own sites, one node per site (heart: its four hospitals)",
    "iid": "a uniformly random split into near-equal shares",
    "dirichlet": "per-class Dirichlet(alpha) proportions: small alpha gives skewed label mixes",
    "classes": "each node holds exactly classes_per_node classes",
}

DIRICHLET_MAX_ATTEMPTS = 1000


def _check_nodes(nodes: int, samples: int) -> None:
    if nodes < 1:
        raise ConfigError(f"nodes must be at least 1; got {nodes}")
    if nodes > samples:
        raise DataError(f"nodes ({nodes}) must not exceed the number of samples ({samples})")


def _finish(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def natural(sites: np.ndarray, nodes: int, site_names: Sequence[str]) -> list[np.ndarray]:
    """One node per site: ``sites[i]`` is the site code (0..len(site_names)-1) of sample i.

    The number of nodes must equal the number of sites: a natural split cannot be
    stretched or squeezed without inventing sites.
    """
    if nodes != len(site_names):
        raise ConfigError(
            f"partition 'natural' needs nodes equal to the number of sites: nodes={nodes}, "
            f"but the dataset has {len(site_names)} sites ({', '.join(site_names)})"
        )
    sites = np.asarray(sites)
    return _finish([np.flatnonzero(sites == s) for s in range(len(site_names))])


def iid(labels: np.ndarray, nodes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random split into ``nodes`` shares whose sizes differ by at most one."""
    n = len(labels)
    _check_nodes(nodes, n)
    return _finish(np.array_split(rng.permutation(n), nodes))


def dirichlet(
    labels: np.ndarray,
    nodes: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_samples: int = 2,
) -> list[np.ndarray]:
    """Per-class Dirichlet label skew, as in Hsu et al. (2019) and NIID-Bench (Li et al. 2022).

    For every class c a proportion vector p_c ~ Dir(alpha, ..., alpha) over the nodes
    is drawn and the class's samples are cut in those proportions. As in the
    NIID-Bench reference code, a node that already holds its fair share (n / nodes)
    gets no more of the later classes, which keeps sizes from running away. The
    whole draw is repeated until every node holds at least ``min_samples`` samples
    (at most ``DIRICHLET_MAX_ATTEMPTS`` times, then a ``DataError``).
    """
    if not alpha > 0 or not np.isfinite(alpha):
        raise ConfigError(f"alpha must be a finite number > 0; got {alpha}")
    labels = np.asarray(labels)
    n = len(labels)
    _check_nodes(nodes, n)
    if min_samples < 0:
        raise ConfigError(f"min_samples_per_node must be >= 0; got {min_samples}")
    if min_samples * nodes > n:
        raise DataError(
            f"min_samples_per_node ({min_samples}) times nodes ({nodes}) exceeds "
            f"the number of samples ({n})"
        )
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    fair_share = n / nodes
    for _ in range(DIRICHLET_MAX_ATTEMPTS):
        parts: list[list[np.ndarray]] = [[] for _ in range(nodes)]
        sizes = np.zeros(nodes, dtype=np.int64)
        for members in by_class:
            p = rng.dirichlet(np.full(nodes, float(alpha)))
            p = np.where(sizes < fair_share, p, 0.0)
            p = p / p.sum() if p.sum() > 0 else np.full(nodes, 1.0 / nodes)
            cuts = (np.cumsum(p)[:-1] * len(members)).astype(np.int64)
            for node, chunk in enumerate(np.split(members, cuts)):
                parts[node].append(chunk)
                sizes[node] += len(chunk)
        if sizes.min() >= min_samples:
            return _finish([np.concatenate(p) for p in parts])
    raise DataError(
        f"dirichlet partition: after {DIRICHLET_MAX_ATTEMPTS} draws some node still had fewer "
        f"than min_samples_per_node={min_samples} samples (alpha={alpha}, nodes={nodes}, "
        f"{n} samples, {len(by_class)} classes); raise alpha, use fewer nodes or lower "
        "min_samples_per_node"
    )


def classes(
    labels: np.ndarray, nodes: int, classes_per_node: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Each node holds exactly ``classes_per_node`` distinct classes (pathological non-IID).

    The classes are laid on a ring in a random order and node i takes the
    ``classes_per_node`` consecutive classes starting at slot ``i * classes_per_node``,
    so every class is held by floor or ceil(nodes * k / C) nodes and a class's
    samples are split evenly (at random) among its holders. Every sample must go
    somewhere, so ``nodes * classes_per_node`` must reach the number of classes.
    """
    labels = np.asarray(labels)
    n = len(labels)
    _check_nodes(nodes, n)
    present = np.unique(labels)
    num_classes = len(present)
    if not 1 <= classes_per_node <= num_classes:
        raise ConfigError(
            f"classes_per_node must be between 1 and the number of classes ({num_classes}); "
            f"got {classes_per_node}"
        )
    if nodes * classes_per_node < num_classes:
        raise ConfigError(
            f"classes_per_node ({classes_per_node}) times nodes ({nodes}) must be at least the "
            f"number of classes ({num_classes}), or some samples would belong to no node"
        )
    ring = rng.permutation(present)
    holders: dict[int, list[int]] = {int(c): [] for c in present}
    for node in range(nodes):
        for j in range(classes_per_node):
            holders[int(ring[(node * classes_per_node + j) % num_classes])].append(node)
    parts: list[list[np.ndarray]] = [[] for _ in range(nodes)]
    for c, owners in holders.items():
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < len(owners):
            raise DataError(
                f"classes partition: class {c} has {len(members)} samples but "
                f"{len(owners)} nodes hold it; use fewer nodes or a smaller classes_per_node"
            )
        for owner, chunk in zip(owners, np.array_split(members, len(owners)), strict=True):
            parts[owner].append(chunk)
    return _finish([np.concatenate(p) for p in parts])


def train_test_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of ``range(len(labels))`` into sorted (train, test) index arrays.

    The test set has ``round(n * test_fraction)`` samples, clipped to [1, n - 1] so
    neither side is empty; each class contributes in proportion to its size
    (largest-remainder rounding, ties broken at random).
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be strictly between 0 and 1; got {test_fraction}")
    labels = np.asarray(labels)
    n = len(labels)
    if n < 2:
        raise DataError(f"a train/test split needs at least 2 samples; got {n}")
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    present, counts = np.unique(labels, return_counts=True)
    quota = counts * (n_test / n)
    take = np.floor(quota).astype(np.int64)
    remainder = quota - take
    tiebreak = rng.random(len(present))
    order = np.lexsort((tiebreak, -remainder))
    take[order[: n_test - int(take.sum())]] += 1
    test = [
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(present, take, strict=True)
    ]
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(n, dtype=np.int64), test_idx)
    return train_idx, test_idx
