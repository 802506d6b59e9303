"""Drift detectors: silent on stationary data, firing once at an injected onset."""

from __future__ import annotations

import math
import tomllib

import numpy as np
import pytest
import torch
from scipy import stats

from p2pfl.drift import DriftEvent, DriftMonitor, DriftSection, Injection, inject_drift
from p2pfl.errors import ConfigError
from p2pfl.tables import build

N, D, ROUNDS = 300, 20, 20
WEIGHTS = torch.linspace(-1.0, 1.0, D)


def heart_like(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Heart-disease-like rows: 12 continuous and 8 binary features, ~35% positive labels."""
    gen = torch.Generator().manual_seed(seed)
    continuous = torch.randn(n, 12, generator=gen)
    binary = (torch.rand(n, 8, generator=gen) < 0.3).float()
    x = torch.cat([continuous, binary], dim=1)
    logits = x @ WEIGHTS - 0.8 + 0.5 * torch.randn(n, generator=gen)
    return x, (logits > 0).long()


def monitor(
    x: torch.Tensor, y: torch.Tensor, seed: int = 0, rounds: int = ROUNDS, **config: object
) -> DriftMonitor:
    return DriftMonitor(
        DriftSection(enabled=True, **config),  # type: ignore[arg-type]
        x,
        y,
        rounds=rounds,
        generator=np.random.default_rng(seed),
    )


def stationary_loss(round_: int, rng: np.random.Generator) -> float:
    """A training curve: decaying towards 0.45 with a little noise."""
    return 0.45 + 0.4 * math.exp(-round_ / 4) + float(rng.normal(0.0, 0.01))


# -- stationary runs ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_unchanged_data_and_a_training_loss_never_fire(seed: int) -> None:
    x, y = heart_like(N, seed)
    node = monitor(x, y, seed)
    rng = np.random.default_rng(seed)
    events = [e for r in range(ROUNDS) for e in node.observe(r, x, y, stationary_loss(r, rng))]
    assert events == []


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_fresh_draws_from_the_same_distribution_never_fire(seed: int) -> None:
    rounds = 12
    x, y = heart_like(N, seed)
    node = monitor(x, y, seed, rounds)
    rng = np.random.default_rng(seed)
    events = []
    for r in range(rounds):
        x_now, y_now = heart_like(N, 1000 * seed + r)
        events += node.observe(r, x_now, y_now, stationary_loss(r, rng))
    assert events == []


def test_the_correction_bounds_false_alarms_over_a_run() -> None:
    """At alpha = 0.3 about 30% of stationary runs may alarm at most; uncorrected, all would."""
    runs, rounds, alpha = 16, 4, 0.3
    alarmed = 0
    for run in range(runs):
        x, y = heart_like(200, 10_000 + run)
        node = DriftMonitor(
            DriftSection(alpha=alpha),
            x[:, :10],
            y,
            rounds=rounds,
            generator=np.random.default_rng(run),
        )
        for r in range(rounds):
            x_now, y_now = heart_like(200, 20_000 + 100 * run + r)
            events = node.observe(r, x_now[:, :10], y_now, None)
            if any(e.detector == "data" for e in events):
                alarmed += 1
                break
    assert alarmed <= stats.binom.ppf(0.999, runs, alpha)


# -- injected drift -----------------------------------------------------------------------------


def run_with_injection(kind: str, magnitude: float, onset: int) -> list[DriftEvent]:
    """A node training logistic regression by gradient descent; its data drift at ``onset``."""
    x, y = heart_like(N, 0)
    node = monitor(x, y)
    model = torch.zeros(D)
    gen = torch.Generator().manual_seed(0)
    events: list[DriftEvent] = []
    for r in range(ROUNDS):
        if r == onset:
            x, y = inject_drift(x, y, kind, magnitude, gen)
        for _ in range(2):
            model -= 0.5 * x.T @ (torch.sigmoid(x @ model) - y.float()) / len(y)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ model, y.float())
        events += node.observe(r, x, y, float(loss))
    return events


def test_a_shift_fires_the_data_detector_once_at_its_onset() -> None:
    events = run_with_injection("shift", 1.0, onset=12)
    data = [e for e in events if e.detector == "data"]
    assert [(e.round, e.statistic) for e in data] == [(12, "ks")]
    assert data[0].feature is not None and 0 <= data[0].feature < D
    assert data[0].p_value < data[0].threshold == pytest.approx(0.01 / (ROUNDS * D))
    assert {e.round for e in events} == {12}


def test_a_label_flip_fires_the_label_and_loss_detectors_once_at_its_onset() -> None:
    events = run_with_injection("label-flip", 1.0, onset=15)
    found = sorted((e.detector, e.statistic, e.round) for e in events)
    assert found == [("labels", "chi2", 15), ("loss", "t", 15)]


def test_the_data_detector_rearms_once_the_data_is_back_to_normal() -> None:
    x, y = heart_like(N, 0)
    node = monitor(x, y)
    shifted, _ = inject_drift(x, y, "shift", 1.0, torch.Generator().manual_seed(0))
    schedule = [x] * 5 + [shifted] * 5 + [x] * 5 + [shifted] * 5
    events = [e for r, x_now in enumerate(schedule) for e in node.observe(r, x_now, y, None)]
    assert [(e.round, e.detector) for e in events] == [(5, "data"), (15, "data")]


def test_images_are_summarised_and_a_brightness_shift_fires() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(400, 1, 28, 28, generator=gen)
    labels = torch.randint(0, 10, (400,), generator=gen)
    node = monitor(images, labels, max_features=8)
    assert node.n_features == 8
    assert node.observe(0, images, labels, None) == []
    brighter, _ = inject_drift(images, labels, "shift", 0.5, gen)
    (event,) = node.observe(1, brighter, labels, None)
    assert (event.detector, event.statistic) == ("data", "ks")
    assert event.feature is not None and 0 <= event.feature < 8


def test_large_data_is_subsampled_and_unchanged_data_still_never_fires() -> None:
    x, y = heart_like(3000, 0)
    node = monitor(x, y, reference_size=200, min_samples=30)
    assert all(node.observe(r, x, y, None) == [] for r in range(10))


def test_small_batches_skip_the_data_tests() -> None:
    x, y = heart_like(N, 0)
    node = monitor(x, y, min_samples=50)
    shifted, _ = inject_drift(x[:20], y[:20], "shift", 5.0, torch.Generator().manual_seed(0))
    assert node.observe(0, shifted, y[:20], None) == []
    tiny = monitor(x[:10], y[:10], min_samples=50)
    assert not tiny.tests_data
    assert tiny.observe(0, shifted, y[:20], None) == []


# -- loss detector ------------------------------------------------------------------------------


def test_a_loss_jump_fires_once_per_onset_and_rearms_after_warmup() -> None:
    x, y = heart_like(N, 0)
    node = monitor(x, y, warmup=5, loss_window=10)
    rng = np.random.default_rng(0)
    levels = [0.4] * 8 + [0.8] * 6 + [1.6] * 6
    losses = [level + float(rng.normal(0.0, 0.01)) for level in levels]
    events = [e for r, loss in enumerate(losses) for e in node.observe(r, x, y, loss)]
    assert [(e.round, e.detector, e.statistic) for e in events] == [
        (8, "loss", "t"),
        (14, "loss", "t"),
    ]
    assert all(e.value > 0 and e.p_value < e.threshold for e in events)


def test_a_small_relative_uptick_of_a_flat_loss_does_not_fire() -> None:
    x, y = heart_like(N, 0)
    node = monitor(x, y)
    losses = [0.3] * 8 + [0.31, 0.3, 0.3]
    assert [e for r, loss in enumerate(losses) for e in node.observe(r, x, y, loss)] == []


def test_a_jump_above_a_constant_loss_fires_with_an_infinite_t() -> None:
    x, y = heart_like(N, 0)
    node = monitor(x, y)
    events = [e for r, loss in enumerate([0.3] * 6 + [0.9]) for e in node.observe(r, x, y, loss)]
    assert [(e.round, e.value, e.p_value) for e in events] == [(6, math.inf, 0.0)]
    assert events[0].to_record()["value"] == "inf"


def test_missing_and_non_finite_losses_are_skipped() -> None:
    x, y = heart_like(N, 0)
    node = monitor(x, y)
    losses = [0.3, None, math.nan, 0.31, math.inf, 0.29, 0.3, 0.3]
    assert [e for r, loss in enumerate(losses) for e in node.observe(r, x, y, loss)] == []


# -- inject_drift -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["shift", "noise", "label-flip"])
def test_inject_drift_returns_new_tensors_and_is_reproducible(kind: str) -> None:
    x, y = heart_like(N, 0)
    x_before, y_before = x.clone(), y.clone()
    first = inject_drift(x, y, kind, 0.5, torch.Generator().manual_seed(3))
    again = inject_drift(x, y, kind, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert first[0] is not x and first[1] is not y
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_inject_drift_moves_what_its_kind_says() -> None:
    x, y = heart_like(N, 0)
    gen = torch.Generator().manual_seed(0)
    shifted, _ = inject_drift(x, y, "shift", 2.0, gen)
    assert torch.allclose(shifted - x, 2.0 * x.std(0, unbiased=False).expand_as(x), atol=1e-5)
    noisy, _ = inject_drift(x, y, "noise", 1.0, gen)
    assert torch.all(noisy.std(0) > x.std(0))
    _, flipped = inject_drift(x, y, "label-flip", 0.5, gen)
    assert (flipped != y).sum() == N // 2
    _, classes = inject_drift(x, y * 3, "label-flip", 1.0, gen, n_classes=4)
    assert torch.all(classes != y * 3) and classes.max() < 4


@pytest.mark.parametrize(
    ("kind", "magnitude"), [("spin", 1.0), ("label-flip", 1.5), ("shift", -1.0), ("noise", 0.0)]
)
def test_inject_drift_rejects_bad_arguments(kind: str, magnitude: float) -> None:
    x, y = heart_like(10, 0)
    with pytest.raises(ValueError, match=r"kind|magnitude"):
        inject_drift(x, y, kind, magnitude, torch.Generator())


# -- configuration ------------------------------------------------------------------------------


def test_the_section_reads_from_toml() -> None:
    table = tomllib.loads(
        """
        enabled = true
        alpha = 0.05
        inject = [[1, 10, "shift"], [2, 12, "label-flip", 0.5]]
        """
    )
    section = build(DriftSection, table, "drift")
    assert section.injections() == (
        Injection(1, 10, "shift", 1.0),
        Injection(2, 12, "label-flip", 0.5),
    )
    assert section.injections_at(2, 12) == (Injection(2, 12, "label-flip", 0.5),)
    assert section.injections_at(2, 11) == ()


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"alpha": 0.0}, "drift.alpha"),
        ({"alpha": 1.0}, "drift.alpha"),
        ({"warmup": 1}, "drift.warmup"),
        ({"warmup": 6, "loss_window": 5}, "drift.loss_window"),
        ({"min_loss_increase": -0.1}, "drift.min_loss_increase"),
        ({"min_samples": 1}, "drift.min_samples"),
        ({"reference_size": 10}, "drift.reference_size"),
        ({"max_features": 0}, "drift.max_features"),
        ({"inject": [[0, 1]]}, "drift.inject"),
        ({"inject": [[0, 1, "melt"]]}, "drift.inject"),
        ({"inject": [[-1, 1, "shift"]]}, "drift.inject"),
        ({"inject": [[0, 1, "shift", "big"]]}, "drift.inject"),
        ({"inject": [[0, 1, "label-flip", 2.0]]}, "drift.inject"),
        ({"inject": [[0, True, "noise"]]}, "drift.inject"),
    ],
)
def test_bad_settings_are_errors_naming_the_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        DriftSection(**config)  # type: ignore[arg-type]


def test_injections_must_name_a_node_and_a_round_of_the_run() -> None:
    section = DriftSection(inject=[[3, 5, "shift"]])
    section.check_run(n_nodes=4, rounds=6)
    with pytest.raises(ConfigError, match=r"drift.inject.*0\.\.2"):
        section.check_run(n_nodes=3, rounds=6)
    with pytest.raises(ConfigError, match=r"no round \(0\.\.4\)"):
        section.check_run(n_nodes=4, rounds=5)


def test_rounds_must_increase_within_the_run_and_shapes_must_match() -> None:
    x, y = heart_like(N, 0)
    node = monitor(x, y)
    node.observe(3, x, y, None)
    with pytest.raises(ValueError, match="rounds must increase"):
        node.observe(3, x, y, None)
    with pytest.raises(ValueError, match="rounds must increase"):
        node.observe(ROUNDS, x, y, None)
    with pytest.raises(ValueError, match="values per sample"):
        node.observe(4, x[:, :5], y, None)
