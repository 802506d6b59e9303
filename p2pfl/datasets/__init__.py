"""Datasets for simulated decentralized training, all offline.

``load_federated(dataset, nodes, partition, ...)`` is the entry point; ``DATASETS``
names the datasets with a one-line description. Each dataset lives in its own
module, which documents its preprocessing.
"""

from __future__ import annotations

from p2pfl.datasets.fashion_mnist import FashionMNIST, read_fashion_mnist
from p2pfl.datasets.federated import (
    DATASETS,
    FederatedData,
    NodeData,
    load_federated,
    load_source,
)

__all__ = [
    "DATASETS",
    "FashionMNIST",
    "FederatedData",
    "NodeData",
    "load_federated",
    "load_source",
    "read_fashion_mnist",
]
