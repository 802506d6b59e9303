"""Small tabular sets bundled with scikit-learn (no download): digits and breast cancer.

Features are standardised with statistics of the training rows only (see
``base.standardizer``); the global test set is a stratified held-out fraction
drawn before partitioning.
"""

from __future__ import annotations

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
    from sklearn.datasets import load_digits  # deferred: importing sklearn takes a second

    x, y = load_digits(return_X_y=True)
    return _source(x, y)


def breast_cancer_source() -> Source:
    """569 Wisconsin breast-cancer biopsies, 30 features, 2 classes (0 malignant, 1 benign)."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return _source(x, y)
