"""Differential privacy and private metrics: what leaves a node is bounded; aggregates only.

- ``config``: the ``[privacy]`` section (scenario and plan) and its checks.
- ``accountant``: (epsilon, delta) from opacus's accountants, and noise calibrated to a target.
- ``noise``: clip a round's delta and add Gaussian noise; per-node noise shares when
  secure aggregation sums a neighbourhood (distributed noise).
- ``budget``: the per-node noise and the epsilon spent, for a run's schedule and graph.
- ``dpsgd``: sample-level DP-SGD through opacus for the built-in models.
- ``metrics``: loss and accuracy summed over the federation under pairwise masks.
"""

from p2pfl.privacy.config import PrivacySection

__all__ = ["PrivacySection"]
