"""(epsilon, delta) of a schedule of Gaussian mechanisms, from opacus's accountants.

Nothing here computes a bound itself: opacus's RDP or PRV accountant does, over a
history of ``(noise_multiplier, sample_rate, steps)`` entries (sample rate 1 for a
mechanism applied to the whole delta each round, a Poisson rate for DP-SGD).
``calibrate`` is opacus's binary search for the smallest noise that meets a target.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Sequence

from p2pfl.errors import ConfigError

log = logging.getLogger(__name__)

Step = tuple[float, float, int]
"""(noise multiplier, sample rate, number of steps)."""


def epsilon(history: Sequence[Step], delta: float, accountant: str = "rdp") -> float:
    """The epsilon spent by ``history`` at ``delta``, as opacus's accountant reports it."""
    entries = tuple((float(z), float(q), int(s)) for z, q, s in history if s > 0)
    return _epsilon(entries, float(delta), accountant) if entries else 0.0


@functools.lru_cache(maxsize=256)
def _epsilon(history: tuple[Step, ...], delta: float, accountant: str) -> float:
    # cached: opacus's RDP bound is pure Python (~0.1 s for a subsampled schedule)
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(acc.get_epsilon(delta=delta))
    _log_warnings(caught)
    return value


def calibrate(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    *,
    accountant: str = "rdp",
    max_noise_multiplier: float = math.inf,
) -> float:
    """The smallest noise multiplier (to opacus's tolerance) whose schedule spends <= target.

    Raises ``ConfigError`` when the schedule cannot meet the target within
    ``max_noise_multiplier`` (past it the noise drowns what is learnt).
    """
    z = _calibrate(float(target_epsilon), float(delta), float(sample_rate), int(steps), accountant)
    if z > max_noise_multiplier:
        shown = "more than 10^6" if math.isinf(z) else f"{z:.4g}"
        raise ConfigError(
            f"privacy: epsilon {target_epsilon} at delta {delta} over {steps} steps "
            f"(sample rate {sample_rate:.4g}) needs a noise multiplier of {shown}, past "
            f"privacy.max_noise_multiplier = {max_noise_multiplier}: the schedule cannot meet "
            "the target; raise epsilon, run fewer rounds or steps, or raise the limit"
        )
    return z


@functools.lru_cache(maxsize=256)
def _calibrate(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            z = float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                )
            )
        except ValueError:  # opacus gives up past a noise multiplier of 10^6
            z = math.inf
    _log_warnings(caught)
    return z


def check_meets(
    noise_multiplier: float,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
) -> float:
    """The epsilon a fixed noise multiplier spends; ``ConfigError`` if it passes the target."""
    spent = epsilon([(noise_multiplier, sample_rate, steps)], delta, accountant)
    if spent > target_epsilon:
        raise ConfigError(
            f"privacy: noise multiplier {noise_multiplier} over {steps} steps (sample rate "
            f"{sample_rate:.4g}) spends epsilon {spent:.3g} at delta {delta}, more than the "
            f"target {target_epsilon}: the schedule cannot meet it; raise the noise, lower "
            "the rounds, or drop one of privacy.epsilon / privacy.noise_multiplier"
        )
    return spent


def _log_warnings(caught: list[warnings.WarningMessage]) -> None:
    # opacus warns (for example) when the best RDP order is at the edge of its grid:
    # the bound is still valid, only looser than it could be.
    for item in caught:
        log.debug("opacus accountant: %s", item.message)
