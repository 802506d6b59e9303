"""Fine-tuning a site's copy of the federation's model, stopped early on its own validation split.

``personalise.method = 'finetune'`` (``p2pfl.spec.sections.PersonaliseSection``): after
the last round each site splits ``val_fraction`` of its training rows off
(``validation_split``: a permutation drawn from the seed and the site, so a
rehearsal and a deployment split alike, and the split never leaves the site),
trains the gossip model on the rest ``eval_every`` steps at a time with the
plan's optimizer and batch size, and keeps the parameters of lowest validation
loss; ``EarlyStopping`` ends it once ``patience`` checks in a row bring no
improvement, or at ``max_steps``. Zero steps is a valid outcome: a site whose
validation loss only rises keeps the gossip model as it came.

This is the classic recipe of personalisation by local adaptation (fine-tuning
a global model with early stopping; e.g. Wang et al., "Federated Evaluation of
On-device Personalization", 2019).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from p2pfl.errors import ConfigError
from p2pfl.spec.sections import PersonaliseSection
from p2pfl.training import LocalSchedule, StackedTrainer, evaluate

VALIDATION_STREAM = 0x7661  # "va": the split's own stream, apart from batches and masks


@dataclass
class EarlyStopping:
    """Keep the best checkpoint of a loss; stop after ``patience`` checks without a better one.

    ``update(step, loss)`` returns True when ``loss`` is a new best (lower by more
    than ``min_delta``); ``stop`` is True once ``patience`` checks in a row were not.
    A loss that is not finite never counts as better.
    """

    patience: int
    min_delta: float = 0.0
    best: float = math.inf
    best_step: int = 0
    bad: int = 0

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, not {self.patience}")

    def update(self, step: int, loss: float) -> bool:
        if math.isfinite(loss) and loss < self.best - self.min_delta:
            self.best, self.best_step, self.bad = loss, step, 0
            return True
        self.bad += 1
        return False

    @property
    def stop(self) -> bool:
        return self.bad >= self.patience


def validation_split(size: int, fraction: float, seed: int, site: int) -> tuple[Tensor, Tensor]:
    """Row indices (fit, validation) of a site's ``size`` training rows; deterministic.

    At least one row on each side; ``ConfigError`` for a site of fewer than 2 rows.
    """
    if size < 2:
        raise ConfigError(
            f"personalise.method = 'finetune' needs 2 training rows at a site to hold one out "
            f"for validation; site {site} has {size}"
        )
    held = min(size - 1, max(1, round(fraction * size)))
    order = np.random.default_rng([seed, site, VALIDATION_STREAM]).permutation(size)
    return torch.as_tensor(order[held:]), torch.as_tensor(order[:held])


@dataclass(frozen=True)
class Finetuned:
    params: Tensor  # (1, D)
    steps: int  # the steps of the parameters kept (0: the model as it came)
    val_loss: float
    val_size: int


def finetune(
    model: nn.Module,
    start: Tensor,
    x: Tensor,
    y: Tensor,
    schedule: LocalSchedule,
    section: PersonaliseSection,
    *,
    seed: int,
    site: int,
    device: torch.device | str = "cpu",
) -> Finetuned:
    """Site ``site``'s model ``start`` (1, D) fine-tuned on (x, y), stopped on validation."""
    fit, held = validation_split(int(x.shape[0]), section.val_fraction, seed, site)
    x_fit, y_fit, x_val, y_val = x[fit], y[fit], x[held].to(device), y[held].to(device)
    chunk = dataclasses.replace(
        schedule, local_epochs=0, local_steps=section.eval_every, lr_schedule="constant"
    )
    trainer = StackedTrainer(
        model, [(x_fit, y_fit)], [site], chunk, seed=seed + VALIDATION_STREAM, device=device
    )
    params = start.to(device).clone()
    best = params.clone()
    stopping = EarlyStopping(section.patience)
    stopping.update(0, _loss(model, params, x_val, y_val))
    checks = section.max_steps // section.eval_every
    for k in range(checks):
        trainer.train_round(params, k)
        step = (k + 1) * section.eval_every
        if stopping.update(step, _loss(model, params, x_val, y_val)):
            best.copy_(params)
        if stopping.stop:
            break
    return Finetuned(best, stopping.best_step, stopping.best, int(held.numel()))


def _loss(model: nn.Module, params: Tensor, x: Tensor, y: Tensor) -> float:
    _, loss = evaluate(model, params, x, y)
    return float(loss[0])
