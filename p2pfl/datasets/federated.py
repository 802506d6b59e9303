"""``load_federated``: one call that turns a dataset name into per-node data for a simulation.

The steps, each with its own random stream derived from ``seed``:

1. Global test set. Fashion-MNIST: the official t10k set. Heart: each hospital
   is split into train/test (stratified, ``test_fraction``) and the global test
   set is the union of the four hospitals' test splits. scikit-learn sets: a
   stratified ``test_fraction`` of all rows. The rest is the training pool.
2. ``max_train_samples`` / ``max_test_samples`` subsample the pool and the
   global test set uniformly at random.
3. The pool is partitioned among the nodes (``p2pfl.partition``).
4. Each node splits its share into its own train and test sets (stratified,
   ``test_fraction``). Under ``natural``, a hospital's test set is exactly its
   part of the global test set, so the global test set is their union.
5. Preprocessing statistics are learnt from the union of the nodes' training
   rows only, then applied to every set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from p2pfl import partition as part
from p2pfl.datasets.base import Source
from p2pfl.datasets.fashion_mnist import fashion_mnist_source
from p2pfl.datasets.heart import heart_source
from p2pfl.datasets.sklearn_sets import breast_cancer_source, digits_source
from p2pfl.errors import ConfigError, DataError

DATASETS: dict[str, str] = {
    "heart": "UCI Heart Disease, 920 patients at four real hospitals, binary (vendored CSV)",
    "fashion-mnist": "Fashion-MNIST 28x28 clothing images, 10 classes (Debian package)",
    "digits": "scikit-learn 8x8 handwritten digits, 1,797 images, 10 classes",
    "breast-cancer": "scikit-learn Wisconsin breast cancer, 569 biopsies, binary",
}


@dataclass(frozen=True, eq=False)
class NodeData:
    """One node's private data: features float32, labels int64."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


@dataclass(frozen=True, eq=False)
class FederatedData:
    """Everything a simulation needs: the nodes' data and a global test set for the federation.

    ``site_names`` are the dataset's real sites (empty for datasets without sites);
    under the ``natural`` partition the nodes are named after them.
    """

    nodes: tuple[NodeData, ...]
    x_global_test: Tensor
    y_global_test: Tensor
    num_features: int
    input_shape: tuple[int, ...]
    num_classes: int
    site_names: tuple[str, ...]


def load_source(dataset: str, data_dir: str | os.PathLike[str] | None = None) -> Source:
    """The named dataset's rows; ``data_dir`` only applies to fashion-mnist."""
    if dataset not in DATASETS:
        raise ConfigError(
            f"unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)}, "
            "or name your own loader as 'module:function'"
        )
    if dataset == "fashion-mnist":
        return fashion_mnist_source(data_dir)
    if data_dir is not None:
        raise ConfigError(f"data_dir applies to fashion-mnist only, not to dataset {dataset!r}")
    loaders: dict[str, Callable[[], Source]] = {
        "heart": heart_source,
        "digits": digits_source,
        "breast-cancer": breast_cancer_source,
    }
    return loaders[dataset]()


def load_federated(
    dataset: str | Source,
    nodes: int,
    partition: str = "iid",
    *,
    alpha: float = 0.5,
    classes_per_node: int = 2,
    test_fraction: float = 0.2,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    min_samples_per_node: int = 2,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
) -> FederatedData:
    """Load ``dataset``, partition it among ``nodes`` nodes, and split every node's share.

    ``dataset`` is a name of ``DATASETS`` or the ``Source`` of one (a scenario's own
    dataset, ``p2pfl.datasets.user``). Deterministic for a ``seed``. ``alpha`` is used
    by ``dirichlet``, ``classes_per_node`` by ``classes``, ``min_samples_per_node`` (the fewest
    samples a node may get before its own train/test split) by ``dirichlet``.
    Raises ``ConfigError`` for bad arguments and ``DataError`` when the data is
    missing or cannot be split as asked.
    """
    _check_arguments(partition, test_fraction, max_train_samples, max_test_samples)
    source = dataset if isinstance(dataset, Source) else load_source(dataset, data_dir)
    if partition == "natural" and source.sites is None:
        raise ConfigError(
            f"partition 'natural' needs a dataset with real sites (heart); {dataset!r} has none"
        )
    holdout_rng, sample_rng, partition_rng, split_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    pool, global_test = _hold_out(source, test_fraction, holdout_rng)
    pool = _subsample(pool, max_train_samples, sample_rng)
    global_test = _subsample(global_test, max_test_samples, sample_rng)

    if partition == "natural":
        assert source.sites is not None
        train_parts = [pool[p] for p in part.natural(source.sites[pool], nodes, source.site_names)]
        test_parts = part.natural(source.sites[global_test], nodes, source.site_names)
        splits = [
            (name, train, global_test[test])
            for name, train, test in zip(source.site_names, train_parts, test_parts, strict=True)
        ]
    else:
        shares = _partition(
            partition,
            source.labels[pool],
            nodes,
            alpha,
            classes_per_node,
            min_samples_per_node,
            partition_rng,
        )
        splits = []
        for i, share in enumerate(shares):
            rows = pool[share]
            train, test = _node_split(f"node-{i}", source.labels[rows], test_fraction, split_rng)
            splits.append((f"node-{i}", rows[train], rows[test]))

    for name, train, test in splits:
        if len(train) == 0 or len(test) == 0:
            raise DataError(
                f"node {name} got {len(train)} training and {len(test)} test samples; "
                "each needs at least one (raise max_train_samples or use fewer nodes)"
            )
    transform = source.fit(np.concatenate([train for _, train, _ in splits]))

    def tensors(rows: np.ndarray) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(transform(rows), dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(source.labels[rows], dtype=np.int64))
        return x, y

    node_data = tuple(
        NodeData(name, *tensors(train), *tensors(test)) for name, train, test in splits
    )
    x_global, y_global = tensors(global_test)
    return FederatedData(
        nodes=node_data,
        x_global_test=x_global,
        y_global_test=y_global,
        num_features=int(np.prod(source.input_shape)),
        input_shape=source.input_shape,
        num_classes=source.num_classes,
        site_names=source.site_names,
    )


def _check_arguments(
    partition: str,
    test_fraction: float,
    max_train_samples: int | None,
    max_test_samples: int | None,
) -> None:
    if partition not in part.PARTITIONS:
        raise ConfigError(
            f"unknown partition {partition!r}; valid names: {', '.join(part.PARTITIONS)}"
        )
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be strictly between 0 and 1; got {test_fraction}")
    for name, value in (
        ("max_train_samples", max_train_samples),
        ("max_test_samples", max_test_samples),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1 (or None for all); got {value}")


def _hold_out(
    source: Source, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(training pool, global test set) as sorted row indices."""
    rows = np.arange(len(source.labels), dtype=np.int64)
    if source.official_test is not None:
        return rows[~source.official_test], rows[source.official_test]
    if source.sites is not None:
        pools, tests = [], []
        for site, name in enumerate(source.site_names):
            members = rows[source.sites == site]
            train, test = _node_split(name, source.labels[members], test_fraction, rng)
            pools.append(members[train])
            tests.append(members[test])
        return np.sort(np.concatenate(pools)), np.sort(np.concatenate(tests))
    train, test = part.train_test_split(source.labels, test_fraction, rng)
    return train, test


def _subsample(rows: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or limit >= len(rows):
        return rows
    return np.sort(rng.choice(rows, size=limit, replace=False))


def _partition(
    name: str,
    labels: np.ndarray,
    nodes: int,
    alpha: float,
    classes_per_node: int,
    min_samples: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    if name == "iid":
        return part.iid(labels, nodes, rng)
    if name == "dirichlet":
        return part.dirichlet(labels, nodes, alpha, rng, min_samples=min_samples)
    return part.classes(labels, nodes, classes_per_node, rng)


def _node_split(
    name: str, labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    if len(labels) < 2:
        raise DataError(
            f"node {name} holds {len(labels)} sample(s); its own train/test split needs at "
            "least 2 (use fewer nodes, or raise min_samples_per_node for dirichlet)"
        )
    return part.train_test_split(labels, test_fraction, rng)
