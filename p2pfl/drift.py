"""Drift detection: each node watches its own data and loss, round after round.

A node builds one ``DriftMonitor`` from its training data at the start of the run (the
reference) and calls ``observe`` once per round with its current local data and the loss of
the averaged model on that data. Three detectors may fire, each a ``DriftEvent`` naming the
statistic that fired:

- ``data`` (``ks``): a two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``) per
  feature between the reference and the current features. Inputs with more than
  ``max_features`` values per sample (images) are summarised first: feature 0 is each
  sample's mean value (mean intensity) and features 1.. are projections on random unit
  directions drawn once, at construction, from the generator given. The event names the
  feature with the smallest p-value (an index into the raw features, or into that summary).
- ``labels`` (``chi2``): a chi-square test of homogeneity (``scipy.stats.chi2_contingency``)
  between the reference's and the current label counts: label shift.
- ``loss`` (``t``): the current loss against the last ``loss_window`` losses, by the one-sided
  pooled two-sample t-test (``scipy.stats.ttest_ind``) of the one new value against that
  history, which is the Student prediction-interval test for a new observation. It is tested
  only once ``warmup`` losses are held, and only when the loss also exceeds the history's
  mean by ``min_loss_increase`` (relative): a converged loss varies so little that a
  meaningless uptick would otherwise be "significant".

Significance (Bonferroni): ``alpha`` bounds, for each detector and node, the probability of
any false event during a whole stationary run of ``rounds`` rounds. A p-value is compared
with ``alpha / (rounds * features)`` for ``data`` and ``alpha / rounds`` for ``labels`` and
``loss``; the event carries that ``threshold``. (The loss guarantee assumes roughly
independent, normal losses; the relative floor above guards the rest.)

Once per onset: ``data`` and ``labels`` compare with the fixed reference, so a lasting drift
stays significant; they fire when the test turns significant and re-arm after a round where
it is not. ``loss`` compares with its recent history, so after an event that history
restarts from the loss that fired, and the detector re-arms after ``warmup`` more losses:
the drifted level becomes the new normal, and a further jump is a new onset.

Cost is bounded: at most ``reference_size`` rows (a pseudo-random subset that depends only on
the row count and a seed drawn at construction, so unchanged data is compared with exactly
itself and never fires) and at most ``max_features`` features are tested. Rounds with fewer
than ``min_samples`` rows skip the data and label tests; a missing or non-finite loss skips
the loss test.

Simulations inject drift with ``[drift] inject``: ``[node, round, kind]`` or
``[node, round, kind, magnitude]`` entries. From that round on, the engine replaces the
node's local training data with ``inject_drift(x, y, kind, magnitude, generator)``, applied
once, so the drift persists.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from p2pfl.errors import ConfigError

if TYPE_CHECKING:  # torch and scipy.stats load on first use: a config only reads the section
    import torch
    from torch import Tensor

KINDS = ("shift", "noise", "label-flip")
DETECTORS = ("data", "labels", "loss")


@dataclass(frozen=True)
class Injection:
    """One drift injected into one node's data from one round on.

    ``magnitude`` is in standard deviations of each feature for ``shift`` (added) and
    ``noise`` (Gaussian noise's scale), and the fraction of labels changed for ``label-flip``.
    """

    node: int
    round: int
    kind: str
    magnitude: float = 1.0

    @classmethod
    def from_entry(cls, entry: Sequence[Any]) -> Injection:
        """Parse a TOML ``[node, round, kind(, magnitude)]`` entry, or ``ConfigError``."""
        bad = ConfigError(
            f"drift.inject entries are [node, round, kind] or [node, round, kind, magnitude]"
            f" with kind in {', '.join(KINDS)}; got {entry!r}"
        )
        if not isinstance(entry, list | tuple) or len(entry) not in (3, 4):
            raise bad
        node, round_, kind, *rest = entry
        if not all(_is_int(v) and v >= 0 for v in (node, round_)) or kind not in KINDS:
            raise bad
        magnitude = rest[0] if rest else 1.0
        if not _is_number(magnitude):
            raise bad
        _check_magnitude(kind, float(magnitude), f"drift.inject {entry!r}: magnitude", ConfigError)
        return cls(int(node), int(round_), str(kind), float(magnitude))


@dataclass(frozen=True)
class DriftSection:
    """The ``[drift]`` configuration; see the module docstring for what each key controls."""

    enabled: bool = False
    alpha: float = 0.01
    warmup: int = 5
    loss_window: int = 10
    min_loss_increase: float = 0.05
    min_samples: int = 30
    reference_size: int = 1000
    max_features: int = 64
    inject: list[list[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"drift.alpha must be strictly between 0 and 1, not {self.alpha}")
        if self.warmup < 2:
            raise ConfigError(f"drift.warmup must be at least 2 losses, not {self.warmup}")
        if self.loss_window < self.warmup:
            raise ConfigError(
                f"drift.loss_window ({self.loss_window}) must be at least drift.warmup"
                f" ({self.warmup})"
            )
        if not (math.isfinite(self.min_loss_increase) and self.min_loss_increase >= 0.0):
            raise ConfigError(
                "drift.min_loss_increase must be a finite number >= 0,"
                f" not {self.min_loss_increase}"
            )
        if self.min_samples < 2:
            raise ConfigError(f"drift.min_samples must be at least 2, not {self.min_samples}")
        if self.reference_size < self.min_samples:
            raise ConfigError(
                f"drift.reference_size ({self.reference_size}) must be at least"
                f" drift.min_samples ({self.min_samples})"
            )
        if self.max_features < 1:
            raise ConfigError(f"drift.max_features must be at least 1, not {self.max_features}")
        self.injections()

    def injections(self) -> tuple[Injection, ...]:
        """The parsed ``inject`` entries, in file order."""
        return tuple(Injection.from_entry(entry) for entry in self.inject)

    def injections_at(self, node: int, round_: int) -> tuple[Injection, ...]:
        """The injections an engine applies to ``node``'s data when round ``round_`` starts."""
        return tuple(i for i in self.injections() if i.node == node and i.round == round_)

    def check_run(self, n_nodes: int, rounds: int) -> None:
        """``ConfigError`` unless every injection names a node and a round of this run."""
        for i in self.injections():
            if not (0 <= i.node < n_nodes and 0 <= i.round < rounds):
                raise ConfigError(
                    f"drift.inject: [{i.node}, {i.round}, {i.kind!r}] names no node"
                    f" (0..{n_nodes - 1}) or no round (0..{rounds - 1})"
                )


@dataclass(frozen=True)
class DriftEvent:
    """A detector fired: ``p_value < threshold`` for ``statistic`` at ``round``.

    ``value`` is the statistic (KS distance, chi-square, or t of the loss above its
    history); ``feature`` is the most significant feature for ``data``, else None.
    """

    round: int
    detector: str
    statistic: str
    value: float
    p_value: float
    threshold: float
    feature: int | None = None

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict (an infinite t becomes the string ``"inf"``)."""
        record = asdict(self)
        if not math.isfinite(self.value):
            record["value"] = str(self.value)
        return record


class DriftMonitor:
    """One node's drift detectors; build it at round 0, call ``observe`` every round.

    ``x_ref`` (shape ``(n, *features)``) and ``y_ref`` (int64, ``(n,)``) are the node's
    training data at the start; only a bounded summary of them is kept. ``rounds`` is the
    run's planned number of rounds (the Bonferroni horizon); ``generator`` draws the
    subsampling seed and the random projections, so a run is reproducible for a seed.
    """

    def __init__(
        self,
        config: DriftSection,
        x_ref: Tensor,
        y_ref: Tensor,
        *,
        rounds: int,
        generator: np.random.Generator,
    ) -> None:
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, not {rounds}")
        if x_ref.shape[0] != y_ref.shape[0]:
            raise ValueError(f"x_ref has {x_ref.shape[0]} rows but y_ref {y_ref.shape[0]}")
        self.config = config
        self.rounds = rounds
        self.n_values = math.prod(x_ref.shape[1:])
        if self.n_values < 1:
            raise ValueError(f"x_ref of shape {tuple(x_ref.shape)} has no feature values")
        self._seed = int(generator.integers(2**63))
        self._projection = _projection(self.n_values, config.max_features, generator)
        self._last_round = -1
        self.tests_data = x_ref.shape[0] >= config.min_samples
        self._data = _DataDetector(self._features(x_ref), config.alpha / (rounds * self.n_features))
        self._labels = _LabelDetector(_counts(y_ref), config.alpha / rounds)
        self._loss = _LossDetector(config, config.alpha / rounds)

    @property
    def n_features(self) -> int:
        """How many features the data detector tests (raw ones, or the image summary)."""
        return self.n_values if self._projection is None else self._projection.shape[1]

    def observe(
        self, round_: int, x_now: Tensor, y_now: Tensor, loss: float | None
    ) -> list[DriftEvent]:
        """The events of round ``round_`` (rounds strictly increase, within ``0..rounds-1``).

        ``loss`` is the averaged model's loss on ``(x_now, y_now)``, or None if not evaluated.
        """
        if math.prod(x_now.shape[1:]) != self.n_values:
            raise ValueError(
                f"x_now has {math.prod(x_now.shape[1:])} values per sample, the reference"
                f" {self.n_values}"
            )
        self._check_round(round_)
        events: list[DriftEvent | None] = []
        if self.tests_data and x_now.shape[0] >= self.config.min_samples:
            events.append(self._data.observe(round_, self._features(x_now)))
            events.append(self._labels.observe(round_, _counts(y_now)))
        events.append(self._loss.observe(round_, loss))
        return [e for e in events if e is not None]

    def _check_round(self, round_: int) -> None:
        if not self._last_round < round_ < self.rounds:
            raise ValueError(
                f"round {round_} observed after round {self._last_round} in a run of"
                f" {self.rounds} rounds: rounds must increase within 0..{self.rounds - 1}"
            )
        self._last_round = round_

    def _features(self, x: Tensor) -> np.ndarray:
        """The tested features of a bounded, seed-determined subset of the rows of ``x``."""
        import torch

        rows = _rows(x.shape[0], self.config.reference_size, self._seed)
        with torch.no_grad():
            flat = x.detach()[torch.as_tensor(rows, device=x.device)].reshape(len(rows), -1)
            if self._projection is not None:
                flat = flat.float() @ torch.as_tensor(self._projection, device=x.device).float()
            return flat.cpu().numpy().astype(np.float64)


class _DataDetector:
    """Per-feature KS tests against the reference features; once per onset.

    The asymptotic p-value is used: the exact one fails on the ties of discrete features.
    Features equal to the last ones tested reuse that result, so the usual case of a node
    whose data did not change costs no test at all.
    """

    def __init__(self, reference: np.ndarray, threshold: float) -> None:
        self._reference = reference
        self._threshold = threshold
        self._armed = True
        zeros = np.zeros(reference.shape[1])
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray] = (reference, zeros, zeros + 1.0)

    def observe(self, round_: int, features: np.ndarray) -> DriftEvent | None:
        statistics, p_values = self._test(features)
        best = int(np.argmin(p_values))
        fired = bool(p_values[best] < self._threshold)
        emit, self._armed = fired and self._armed, not fired
        if not emit:
            return None
        return DriftEvent(
            round_,
            "data",
            "ks",
            float(statistics[best]),
            float(p_values[best]),
            self._threshold,
            best,
        )

    def _test(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        last, statistics, p_values = self._last
        if not np.array_equal(features, last, equal_nan=True):
            from scipy import stats

            result = stats.ks_2samp(self._reference, features, axis=0, method="asymp")
            statistics = np.atleast_1d(result.statistic)
            p_values = np.nan_to_num(np.atleast_1d(result.pvalue), nan=1.0)
            self._last = (features, statistics, p_values)
        return statistics, p_values


class _LabelDetector:
    """Chi-square homogeneity test of label counts against the reference; once per onset."""

    def __init__(self, reference: np.ndarray, threshold: float) -> None:
        self._reference = reference
        self._threshold = threshold
        self._armed = True

    def observe(self, round_: int, counts: np.ndarray) -> DriftEvent | None:
        width = max(len(counts), len(self._reference))
        table = np.stack(
            [
                np.pad(self._reference, (0, width - len(self._reference))),
                np.pad(counts, (0, width - len(counts))),
            ]
        )
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] < 2:  # a single class on both sides: nothing to compare
            return None
        from scipy import stats

        result = stats.chi2_contingency(table)
        fired = bool(result.pvalue < self._threshold)
        emit, self._armed = fired and self._armed, not fired
        if not emit:
            return None
        return DriftEvent(
            round_,
            "labels",
            "chi2",
            float(result.statistic),
            float(result.pvalue),
            self._threshold,
        )


class _LossDetector:
    """The new loss against its recent history; the history restarts after an event."""

    def __init__(self, config: DriftSection, threshold: float) -> None:
        self._history: deque[float] = deque(maxlen=config.loss_window)
        self._warmup = config.warmup
        self._min_increase = config.min_loss_increase
        self._threshold = threshold

    def observe(self, round_: int, loss: float | None) -> DriftEvent | None:
        if loss is None or not math.isfinite(loss):
            return None
        event = self._test(round_, loss) if len(self._history) >= self._warmup else None
        if event is not None:
            self._history.clear()
        self._history.append(float(loss))
        return event

    def _test(self, round_: int, loss: float) -> DriftEvent | None:
        history = np.asarray(self._history)
        mean = float(history.mean())
        if loss <= mean + self._min_increase * abs(mean):
            return None
        centred = history - mean  # t is shift-invariant; centring avoids precision warnings
        if not np.any(centred):
            value, p_value = math.inf, 0.0
        else:
            from scipy import stats

            result = stats.ttest_ind([loss - mean], centred, alternative="greater")
            value, p_value = float(result.statistic), float(result.pvalue)
        if not p_value < self._threshold:
            return None
        return DriftEvent(round_, "loss", "t", value, p_value, self._threshold)


def inject_drift(
    x: Tensor,
    y: Tensor,
    kind: str,
    magnitude: float,
    generator: torch.Generator,
    *,
    n_classes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """New ``(x, y)`` drifted as ``kind`` says; the inputs are never modified.

    ``shift`` adds ``magnitude`` standard deviations to every feature (1 where a feature is
    constant); ``noise`` adds Gaussian noise of ``magnitude`` standard deviations;
    ``label-flip`` moves a ``magnitude`` fraction of the labels, chosen at random, to another
    class (of ``n_classes``, by default ``max(y) + 1``, at least 2).
    """
    if kind not in KINDS:
        raise ValueError(f"drift kind must be one of {', '.join(KINDS)}, not {kind!r}")
    _check_magnitude(kind, magnitude, "magnitude", ValueError)
    import torch

    if kind == "label-flip":
        return x.clone(), _flip(y, magnitude, generator, n_classes)
    spread = x.std(dim=0, unbiased=False) if x.shape[0] > 1 else torch.zeros_like(x[0])
    spread = torch.where(spread > 0, spread, torch.ones_like(spread))
    if kind == "shift":
        return x + magnitude * spread, y.clone()
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return x + magnitude * spread * noise.to(x.device), y.clone()


def _flip(y: Tensor, fraction: float, generator: torch.Generator, n_classes: int | None) -> Tensor:
    import torch

    classes = max(2, n_classes or (int(y.max()) + 1 if y.numel() else 2))
    n = y.shape[0]
    chosen = torch.randperm(n, generator=generator, device=generator.device)[: round(fraction * n)]
    offsets = torch.randint(
        1, classes, (len(chosen),), generator=generator, device=generator.device
    )
    flipped = y.clone()
    chosen, offsets = chosen.to(y.device), offsets.to(y.device)
    flipped[chosen] = (y[chosen] + offsets.to(y.dtype)) % classes
    return flipped


def _check_magnitude(kind: str, magnitude: float, where: str, error: type[Exception]) -> None:
    if kind == "label-flip" and not 0.0 < magnitude <= 1.0:
        raise error(f"{where} of a label-flip is a fraction in (0, 1], not {magnitude}")
    if kind != "label-flip" and not (math.isfinite(magnitude) and magnitude > 0.0):
        raise error(f"{where} of a {kind} is a finite number of standard deviations > 0")


def _projection(
    n_values: int, max_features: int, generator: np.random.Generator
) -> np.ndarray | None:
    """None when the raw values are few enough to test; else the ``(n_values, m)`` summary map.

    Column 0 averages the values (mean intensity); the others are random unit directions.
    """
    if n_values <= max_features:
        return None
    directions = generator.standard_normal((n_values, max_features - 1))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    return np.concatenate([np.full((n_values, 1), 1.0 / n_values), directions], axis=1)


def _rows(n: int, limit: int, seed: int) -> np.ndarray:
    """All rows if ``n <= limit``, else ``limit`` of them chosen by ``(seed, n)`` alone."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, n]).choice(n, size=limit, replace=False))


def _counts(y: Tensor) -> np.ndarray:
    labels = y.detach().cpu().numpy().astype(np.int64).ravel()
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative class indices")
    return np.bincount(labels)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
