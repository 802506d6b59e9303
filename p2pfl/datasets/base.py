"""What every dataset loader hands to ``load_federated``.

A loader returns the raw rows of its dataset and a ``fit`` function: the
federation decides which rows are for training, ``fit`` learns whatever
preprocessing statistics it needs from those rows only, and the transform it
returns turns any rows (training, node test, global test) into float32 features.
Keeping raw rows until the split is known is what makes the preprocessing free
of test-set leakage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]
"""Row indices -> float32 features of shape ``(len(rows), *input_shape)``."""


@dataclass(frozen=True, eq=False)
class Source:
    """A dataset before it is split: labels of every row plus a way to featurize rows.

    ``official_test`` marks the rows of a published test set (Fashion-MNIST's
    t10k), which then serves as the global test set. ``sites`` gives each row's
    site code (0..len(site_names)-1) for datasets that come from real sites.
    """

    labels: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    fit: Callable[[np.ndarray], Transform]
    official_test: np.ndarray | None = None
    sites: np.ndarray | None = None
    site_names: tuple[str, ...] = ()


def standardizer(features: np.ndarray) -> Callable[[np.ndarray], Transform]:
    """``fit`` for a plain feature matrix: z-scores with mean and std of the fit rows.

    Columns that are constant on the fit rows are centred but not scaled.
    """

    def fit(rows: np.ndarray) -> Transform:
        train = features[rows].astype(np.float64)
        mean = train.mean(axis=0)
        std = train.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)

        def transform(which: np.ndarray) -> np.ndarray:
            z: np.ndarray = ((features[which] - mean) / std).astype(np.float32)
            return z

        return transform

    return fit
