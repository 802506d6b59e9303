"""Reference points for a gossip run: pooled data, each node alone, and personalisation.

- pooled: one model trained on every node's training data together (what a
  central server with all the data would get) for the same total steps: the
  same rounds, each as many steps of the same batch size as the nodes take
  together (``local_epochs`` passes over the pooled data; with ``local_steps``,
  that many steps for every node);
- mini-batch: one model on the pooled data for as many sequential steps as one
  node takes, each step a batch as large as all the nodes' batches together
  (centralized mini-batch SGD, the reference of decentralized SGD's analyses,
  e.g. Lian et al., NeurIPS 2017, "C-PSGD"): the same samples as the gossip run,
  in the same number of steps in a row, so the distance to it is what the graph
  and the skew of the data cost, and the distance from it to pooled is what
  taking the steps in parallel costs;
- local-only: every node trains alone for the same rounds, with no mixing;
- personalised: as the run spec's ``[personalise]`` says. ``finetune``: each
  node's final gossip model fine-tuned on its own data, stopped early on its own
  validation split (``p2pfl.finetune``); ``partial``: the run's own models, whose
  personal layers never left their site, and the gossip column is then a
  full-sharing run of the same spec (``reference_gossip``, vectorized engine);
  ``none``: the final gossip model after ``baselines.personalised_steps`` local
  steps, as before, if set.

All three train through ``StackedTrainer``, like the engines, so that the only
difference from gossip is who talks to whom.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from p2pfl.engines.common import Setup
from p2pfl.training import LocalSchedule, StackedTrainer, evaluate, stack_order


@dataclass
class Baselines:
    pooled_global: float | None = None
    pooled_sites: list[float] | None = None
    minibatch_global: float | None = None
    local_global: list[float] | None = None
    local_sites: list[float] | None = None


def _site_accuracy(setup: Setup, params: Tensor, own: bool) -> list[float]:
    """Accuracy on each node's own test split: row i of params on node i (own) or row 0 on all."""
    result = []
    for i, node in enumerate(setup.data.nodes):
        row = params[i : i + 1] if own else params[:1]
        acc, _ = evaluate(setup.model, row.to(setup.device), node.x_test, node.y_test)
        result.append(float(acc[0]))
    return result


def pooled_schedule(schedule: LocalSchedule, nodes: int) -> LocalSchedule:
    """The pooled model's schedule: per round, the steps of all ``nodes`` together.

    Epochs over the pooled data already take the nodes' steps together (up to each
    node's short last batch); ``local_steps`` per node become ``nodes`` times as many.
    """
    if not schedule.local_steps:
        return schedule
    return replace(schedule, local_steps=schedule.local_steps * nodes)


def minibatch_schedule(schedule: LocalSchedule, nodes: int) -> LocalSchedule:
    """The mini-batch model's schedule: one node's steps, each ``nodes`` batches in one.

    With ``local_epochs`` the passes over the pooled data in batches ``nodes`` times
    larger take as many steps as a node of average size does.
    """
    return replace(schedule, batch_size=schedule.batch_size * nodes)


def pooled(setup: Setup) -> tuple[float, list[float]]:
    params = _train_pooled(setup, pooled_schedule(setup.schedule, len(setup.data.nodes)))
    acc, _ = evaluate(setup.model, params, setup.data.x_global_test, setup.data.y_global_test)
    return float(acc[0]), _site_accuracy(setup, params, own=False)


def minibatch(setup: Setup) -> float:
    """Centralized mini-batch SGD's accuracy on the global test set (module docstring)."""
    params = _train_pooled(setup, minibatch_schedule(setup.schedule, len(setup.data.nodes)))
    acc, _ = evaluate(setup.model, params, setup.data.x_global_test, setup.data.y_global_test)
    return float(acc[0])


def _train_pooled(setup: Setup, schedule: LocalSchedule) -> Tensor:
    """One model trained on every node's training data together, for the run's rounds."""
    nodes = setup.data.nodes
    x = torch.cat([nd.x_train for nd in nodes])
    y = torch.cat([nd.y_train for nd in nodes])
    trainer = StackedTrainer(
        setup.model, [(x, y)], [0], schedule, seed=setup.scenario.seed, device=setup.device
    )
    params = setup.initial.to(setup.device).unsqueeze(0).clone()
    for r in range(setup.scenario.training.rounds):
        trainer.train_round(params, r)
    return params


def local_only(setup: Setup) -> tuple[list[float], list[float]]:
    nodes = setup.data.nodes
    order = stack_order([int(nd.x_train.shape[0]) for nd in nodes], setup.schedule)
    trainer = StackedTrainer(
        setup.model,
        [(nodes[i].x_train, nodes[i].y_train) for i in order],
        order,
        setup.schedule,
        seed=setup.scenario.seed,
        device=setup.device,
    )
    params = setup.initial.to(setup.device).repeat(len(nodes), 1)
    for r in range(setup.scenario.training.rounds):
        trainer.train_round(params, r)
    params = params[torch.as_tensor(sorted(range(len(order)), key=order.__getitem__))]
    acc, _ = evaluate(setup.model, params, setup.data.x_global_test, setup.data.y_global_test)
    return [float(a) for a in acc], _site_accuracy(setup, params, own=True)


def personalised(setup: Setup, final: Tensor, steps: int) -> list[float]:
    """Each node's final model after ``steps`` more local steps, on its own test split."""
    schedule: LocalSchedule = replace(
        setup.schedule, local_epochs=0, local_steps=steps, lr_schedule="constant"
    )
    nodes = setup.data.nodes
    params = final.to(setup.device).clone()
    trainer = StackedTrainer(
        setup.model,
        [(nd.x_train, nd.y_train) for nd in nodes],
        list(range(len(nodes))),
        schedule,
        seed=setup.scenario.seed + 7919,
        device=setup.device,
    )
    trainer.train_round(params, 0)
    return _site_accuracy(setup, params, own=True)


@dataclass(frozen=True)
class Personalised:
    method: str
    sites: list[float]
    steps: list[int] | None = None  # finetune: the steps each site kept
    val_sizes: list[int] | None = None  # finetune: each site's validation rows


def personalise(setup: Setup, final: Tensor) -> Personalised | None:
    """Each site's personalised model on its own test split, per ``[personalise]``."""
    method = setup.scenario.personalise.method
    if method == "partial":
        return Personalised(method, site_accuracy(setup, final))
    if method == "finetune":
        return finetuned(setup, final)
    steps = setup.scenario.baselines.personalised_steps
    return Personalised("steps", personalised(setup, final, steps)) if steps else None


def finetuned(setup: Setup, final: Tensor) -> Personalised:
    """Every site's final model fine-tuned with early stopping (``p2pfl.finetune``)."""
    from p2pfl.finetune import finetune

    sc = setup.scenario
    rows, steps, held = [], [], []
    for i, node in enumerate(setup.data.nodes):
        done = finetune(
            setup.model,
            final[i : i + 1],
            node.x_train,
            node.y_train,
            setup.schedule,
            sc.personalise,
            seed=sc.seed,
            site=i,
            device=setup.device,
        )
        rows.append(done.params.cpu())
        steps.append(done.steps)
        held.append(done.val_size)
    return Personalised("finetune", _site_accuracy(setup, torch.cat(rows), own=True), steps, held)


def reference_gossip(setup: Setup) -> list[float]:
    """Each site's accuracy after gossip of the whole model: the same spec, nothing personal."""
    from p2pfl.engines import vectorized
    from p2pfl.spec import PersonaliseSection

    scenario = replace(setup.scenario, personalise=PersonaliseSection())
    result = vectorized.run(replace(setup, scenario=scenario), "reference")
    return site_accuracy(setup, result.final_params)


def site_accuracy(setup: Setup, final: Tensor) -> list[float]:
    """Each node's final gossip model on its own test split."""
    return _site_accuracy(setup, final, own=True)


def run_baselines(setup: Setup) -> Baselines:
    b = setup.scenario.baselines
    result = Baselines()
    if b.pooled:
        result.pooled_global, result.pooled_sites = pooled(setup)
    if b.minibatch:
        result.minibatch_global = minibatch(setup)
    if b.local:
        result.local_global, result.local_sites = local_only(setup)
    return result
