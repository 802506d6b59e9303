"""Small tabular sets bundled with scikit-learn (no download): digits and breast cancer.

Features are standardised with statistics of the training rows only (see
``base.standardizer``); the global test set is a stratified held-out fraction
drawn before partitioning.
"""

from __future__ import annotations

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


def digits_source() -> Source:
    """1,797 8x8 handwritten digits as 64 features, 10 classes."""
    path = _bundled("digits.csv.gz")
    if path is None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        return _source(x, y)
    rows = np.loadtxt(path, delimiter=",")
    return _source(rows[:, :-1], rows[:, -1].astype(np.int64))


def breast_cancer_source() -> Source:
    """569 Wisconsin breast-cancer biopsies, 30 features, 2 classes (0 malignant, 1 benign)."""
    path = _bundled("breast_cancer.csv")
    if path is None:
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        return _source(x, y)
    rows = np.loadtxt(path, delimiter=",", skiprows=1)  # first line: counts and class names
    return _source(rows[:, :-1], rows[:, -1].astype(np.int64))


def _bundled(name: str) -> Path | None:
    """scikit-learn's own copy of a data file, found without importing scikit-learn.

    Importing ``sklearn.datasets`` takes about a second (it pulls in scipy); the
    files it reads are plain CSV in its package folder, read here with numpy.
    ``None`` where the folder or file is not there (then scikit-learn loads it).
    """
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / name
        if path.is_file():
            return path
    return None
