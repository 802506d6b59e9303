"""The ``[privacy]`` section of a scenario or a plan, and the checks that need no schedule.

Mechanisms:

- ``none``: models leave a node as trained (secure aggregation, if on, still hides them).
- ``delta``: each round the node's delta (its model after local training minus the model it
  started the round from) is clipped to L2 norm ``clip`` and Gaussian noise is added before
  it leaves. Two clipped deltas differ by at most ``2 * clip`` whatever changed in the
  site's data, so this bounds what the site's outputs reveal about *any* of its records
  (and about the site's data as a whole). With secure aggregation on, the noise is
  distributed: each node adds a share, sized so that what a receiver learns (the sum over
  its neighbourhood) carries the full noise even when as many neighbours drop out as the
  round tolerates, while no single share is enough.
- ``dp-sgd``: sample-level DP-SGD through opacus (per-sample gradients clipped to ``clip``,
  Gaussian noise, Poisson-sampled batches); protects each record.

Either ``epsilon`` (a target: the noise is calibrated with the accountant for the run's
schedule) or ``noise_multiplier`` (fixed noise: epsilon is what the accountant reports) or
both (the run is refused if that noise cannot meet the target). ``epsilon = inf`` turns the
mechanism off: a sweep ``"privacy.epsilon" = [inf, 8.0, 1.0]`` compares against no DP.

``private_metrics``: loss and accuracy per round are summed over the federation with
pairwise masks (the secure-aggregation key agreement), so only the federation's aggregate
reaches the ledger and the report; a site's own figures stay local unless it is named in
``opt_in`` (site names). Drift events name their site only for opted-in sites too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from p2pfl.errors import ConfigError

MECHANISMS = ("none", "delta", "dp-sgd")
ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class PrivacySection:
    mechanism: str = "none"
    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    clip: float | None = None
    accountant: str = "rdp"
    max_noise_multiplier: float = 100.0
    private_metrics: bool = False
    opt_in: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ConfigError(
                f"privacy.mechanism must be one of {', '.join(MECHANISMS)}, not {self.mechanism!r}"
            )
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"privacy.accountant must be one of {', '.join(ACCOUNTANTS)}, "
                f"not {self.accountant!r}"
            )
        if not 0 < self.delta < 1:
            raise ConfigError(f"privacy.delta must be in (0, 1), not {self.delta}")
        if not self.max_noise_multiplier > 0:
            raise ConfigError("privacy.max_noise_multiplier must be positive")
        if self.mechanism == "none":
            for key in ("epsilon", "noise_multiplier", "clip"):
                if getattr(self, key) is not None:
                    raise ConfigError(
                        f"privacy.{key} is set but privacy.mechanism is 'none' "
                        "(choose 'delta' or 'dp-sgd')"
                    )
            return
        self._check_numbers()

    def _check_numbers(self) -> None:
        if self.epsilon is None and self.noise_multiplier is None:
            raise ConfigError(
                f"privacy.mechanism = {self.mechanism!r} needs privacy.epsilon (a target) "
                "or privacy.noise_multiplier"
            )
        if self.epsilon is not None and not self.epsilon > 0:
            raise ConfigError(f"privacy.epsilon must be positive (inf: no DP), not {self.epsilon}")
        if self.noise_multiplier is not None and not (0 < self.noise_multiplier < math.inf):
            raise ConfigError(
                f"privacy.noise_multiplier must be positive, not {self.noise_multiplier}"
            )
        if self.clip is None or not (0 < self.clip < math.inf):
            raise ConfigError(
                "privacy: noise without clipping bounds nothing; set privacy.clip to a positive "
                f"L2 norm (the {'delta' if self.mechanism == 'delta' else 'per-sample gradient'} "
                "bound)"
            )

    @property
    def active(self) -> bool:
        """Whether any noise is added (``epsilon = inf`` is the no-DP comparison run)."""
        return self.mechanism != "none" and self.epsilon != math.inf
