"""Small tabular sets bundled with scikit-learn (no download): digits and breast cancer.

Features are standardised with statistics of the training rows only (see
``base.standardizer``); the global test set is a stratified held-out fraction
drawn before partitioning.

The rows are read straight from the CSV files scikit-learn ships (what its
``load_digits`` and ``load_breast_cancer`` read), without importing scikit-learn:
importing ``sklearn.datasets`` costs about a second (it pulls in scipy), reading
the files a few milliseconds. Where a scikit-learn release keeps them elsewhere,
its loaders are used.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from p2pfl.datasets.base import Source, standardizer


def _source(features: np.ndarray, labels: np.ndarray) -> Source:
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    return Source(
        labels=labels,
        num_classes=int(labels.max()) + 1,
        input_shape=(features.shape[1],),
        fit=standardizer(features),
    )


def _shipped(name: str) -> Path | None:
    """scikit-learn's bundled data file ``name``, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    return path if path.is_file() else None


def _rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of a table whose last column is the label."""
    return table[:, :-1], table[:, -1].astype(np.int64)


def digits_source() -> Source:
    """1,797 8x8 handwritten digits as 64 features, 10 classes."""
    path = _shipped("digits.csv.gz")
    if path is None:
        from sklearn.datasets import load_digits

        return _source(*load_digits(return_X_y=True))
    with gzip.open(path) as handle:
        return _source(*_rows(np.loadtxt(handle, delimiter=",")))


def breast_cancer_source() -> Source:
    """569 Wisconsin breast-cancer biopsies, 30 features, 2 classes (0 malignant, 1 benign)."""
    path = _shipped("breast_cancer.csv")
    if path is None:
        from sklearn.datasets import load_breast_cancer

        return _source(*load_breast_cancer(return_X_y=True))
    # The first line is a header: rows, features and the class names.
    return _source(*_rows(np.loadtxt(path, delimiter=",", skiprows=1)))
