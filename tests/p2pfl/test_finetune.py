"""Fine-tuning with early stopping: the stopping rule, the split, and the parameters kept."""

from __future__ import annotations

import math

import pytest
import torch

from p2pfl.errors import ConfigError
from p2pfl.finetune import EarlyStopping, finetune, validation_split
from p2pfl.models import build_model, flat_parameters
from p2pfl.spec import PersonaliseSection
from p2pfl.training import LocalSchedule, evaluate


def test_early_stopping_keeps_the_best_and_stops_after_patience_checks_without_one() -> None:
    rule = EarlyStopping(patience=2)
    assert rule.update(0, 1.0) and rule.update(5, 0.5)
    assert not rule.update(10, 0.7) and not rule.stop
    assert rule.update(15, 0.4) and rule.bad == 0  # a new best resets the count
    assert not rule.update(20, 0.4)  # equal is no improvement
    assert not rule.update(25, math.nan) and rule.stop  # nor is a loss that is not finite
    assert (rule.best, rule.best_step) == (0.4, 15)
    strict = EarlyStopping(patience=1, min_delta=0.1)
    assert strict.update(0, 1.0) and not strict.update(1, 0.95) and strict.stop
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)


def test_the_validation_split_is_deterministic_disjoint_and_never_empty() -> None:
    fit, held = validation_split(10, 0.2, seed=3, site=1)
    again = validation_split(10, 0.2, seed=3, site=1)
    assert torch.equal(fit, again[0]) and torch.equal(held, again[1])
    assert len(held) == 2 and sorted([*fit.tolist(), *held.tolist()]) == list(range(10))
    other = validation_split(10, 0.2, seed=3, site=2)[1]
    assert not torch.equal(held, other)  # each site its own draw
    assert len(validation_split(2, 0.9, 0, 0)[0]) == 1  # one row left to fit
    assert len(validation_split(50, 0.001, 0, 0)[1]) == 1  # one row held
    with pytest.raises(ConfigError, match="site 4 has 1"):
        validation_split(1, 0.2, 0, 4)


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g) + 2.0 * (2 * y[:, None] - 1)
    return x, y


def test_finetuning_improves_on_its_validation_split_or_keeps_the_model_as_it_came() -> None:
    model = build_model("logreg", (2,), 2, seed=0)
    start = flat_parameters(model).unsqueeze(0)
    x, y = blobs(64, seed=1)
    schedule = LocalSchedule(local_epochs=0, local_steps=1, batch_size=8, lr=0.1)
    section = PersonaliseSection("finetune", max_steps=100, eval_every=5, patience=3)
    done = finetune(model, start, x, y, schedule, section, seed=0, site=0)
    assert 0 < done.steps <= 100 and done.steps % 5 == 0 and done.val_size == 13
    _, held = validation_split(64, 0.2, 0, 0)
    _, before = evaluate(model, start, x[held], y[held])
    _, after = evaluate(model, done.params, x[held], y[held])
    assert float(after[0]) == pytest.approx(done.val_loss) and done.val_loss < float(before[0])
    # labels that are noise, and steps so large that each one only makes it worse: no
    # step kept, the model as it came (zero logits: loss log 2 on any labels)
    noise = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(5))
    wild = LocalSchedule(local_epochs=0, local_steps=1, batch_size=8, lr=1e3)
    zero = torch.zeros_like(start)
    kept = finetune(model, zero, x, noise, wild, section, seed=0, site=0)
    assert kept.steps == 0 and torch.equal(kept.params, zero)
    assert kept.val_loss == pytest.approx(math.log(2))
