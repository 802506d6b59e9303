"""What a node learns on: its own data, the plan's model as one flat vector, the trainer.

The model's parameters are views into the flat ``params`` vector (shape
``(1, D)``) that training updates in place and gossip sends, so the node
holds one copy of the model. Training is the simulator's ``StackedTrainer``
with a stack of one, seeded by (plan seed, node index, round): the same
batches as node ``index`` of a simulation. The batches need no state across
rounds; the optimizer's (momentum, Adam moments and steps) goes into each
checkpoint (``optimizer_state``) and back on resume (``restore_optimizer``),
so a restarted node trains on as if it had never stopped.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from p2pfl.models import build_model, flat_parameters
from p2pfl.node.data import LocalData, fit_plan
from p2pfl.node.errors import PlanError
from p2pfl.spec import Plan
from p2pfl.training import StackedTrainer, evaluate, param_views, schedule_from

log = logging.getLogger(__name__)


class Learner:
    """Local data, model and trainer of one node; build with ``await Learner.load(...)``."""

    def __init__(
        self, data: LocalData, model: nn.Module, params: torch.Tensor, trainer: StackedTrainer
    ) -> None:
        self.data = data
        self.model = model
        self.params = params
        self.trainer: Any = trainer  # or a DpSgdTrainer (``p2pfl.node.privacy``)
        self.noise: Callable[[torch.Tensor, torch.Tensor], None] | None = None

    @classmethod
    async def load(
        cls,
        data: LocalData,
        plan: Plan,
        index: int,
        resume: npt.NDArray[np.float32] | None = None,
        *,
        warm: bool = True,
    ) -> Learner:
        """Build the plan's model (or take ``resume``) over ``data``, and warm up.

        ``data`` are those the node loaded when it started (``p2pfl.node.preflight``),
        checked here once more against the shapes of the plan it trains on.
        ``warm=False`` skips the warm-up, for a caller that ran ``warm_up(plan)`` already.
        """
        data = fit_plan(data, plan.data.input_shape, plan.data.num_classes)
        # Models are built here, in the event loop's thread: ``build_model`` seeds torch's
        # global generator, which a worker thread must not touch at the same time.
        shape = tuple(plan.data.input_shape)
        hidden = tuple(plan.model.hidden) if plan.model.hidden is not None else None
        model = build_model(
            plan.model.name,
            shape,
            plan.data.num_classes,
            hidden=hidden,
            seed=plan.seed,
            kwargs=plan.model.kwargs,
        )
        initial = flat_parameters(model)  # a fresh vector, shared with nothing
        if resume is not None:
            if resume.shape != initial.shape:
                raise PlanError("the checkpoint's model does not fit the plan's model")
            initial = torch.from_numpy(resume)
        params = initial.unsqueeze(0)
        views = param_views(model, params)
        for name, parameter in model.named_parameters():
            parameter.data = views[name][0]  # one copy of the model: the flat vector
        trainer = StackedTrainer(
            model,
            [(data.x_train, data.y_train)],
            [index],
            schedule_from(plan.training),
            seed=plan.seed,
        )
        if warm:
            await asyncio.to_thread(warm_up(plan))
        return cls(data, model, params, trainer)

    @property
    def dim(self) -> int:
        return int(self.params.shape[1])

    def train(self, round: int) -> None:
        """One round of local steps, in place (run it in a worker thread).

        With the plan's delta mechanism, ``noise(after, before)`` clips the round's
        delta and adds this node's noise before anything is sent.
        """
        before = self.params.clone() if self.noise is not None else None
        self.trainer.train_round(self.params, round)
        if self.noise is not None:
            assert before is not None
            self.noise(self.params, before)

    def optimizer_state(self) -> dict[str, npt.NDArray[np.float32]]:
        """The trainer's state across rounds, for the checkpoint (views: write them out now)."""
        state: dict[str, npt.NDArray[np.float32]] = self.trainer.export_state()
        return state

    def restore_optimizer(
        self, state: Mapping[str, npt.NDArray[np.float32]] | None, source: Path
    ) -> None:
        """Continue with a checkpoint's optimizer state; ``None``: the checkpoint kept none.

        ``PlanError`` if the state does not fit the plan's optimizer and model. A
        checkpoint written before the state was kept loads all the same, with a
        warning where the optimizer has state to lose (momentum, Adam).
        """
        if state is None:
            schedule = self.trainer.schedule
            if schedule.optimizer == "adam" or schedule.momentum:
                log.warning(
                    "checkpoint %s holds no optimizer state (written by an older version): "
                    "the %s state starts again from zero, so the run departs from an "
                    "uninterrupted one",
                    source,
                    "Adam" if schedule.optimizer == "adam" else "momentum",
                )
            return
        try:
            self.trainer.import_state(state)
        except ValueError as exc:
            raise PlanError(
                f"the checkpoint's optimizer state does not fit the plan: {exc}"
            ) from None
        log.info("optimizer state restored from %s (%s)", source, ", ".join(state) or "none")

    def set(self, model: npt.NDArray[np.float32]) -> None:
        array = np.asarray(model, dtype=np.float32)
        own = self.params[0].numpy()
        if array.ctypes.data == own.ctypes.data and array.strides == own.strides:
            return  # mixed in place (``SyncGossip(mix_in_place=True)``): already there
        self.params[0].copy_(torch.from_numpy(array if array.flags.writeable else array.copy()))

    def evaluate(self) -> tuple[float | None, float | None]:
        """Accuracy and loss on the local test set (None, None without one)."""
        if self.data.x_test.shape[0] == 0:
            return None, None
        acc, loss = evaluate(self.model, self.params, self.data.x_test, self.data.y_test)
        return float(acc[0]), float(loss[0])

    def current_model(self) -> nn.Module:
        """An independent copy of the model with the current parameters."""
        return copy.deepcopy(self.model)


def warm_up(plan: Plan) -> Callable[[], None]:
    """One throwaway step of a small model, to run in a worker thread (call it there).

    torch's first training step costs more than the next ones (the first dispatch
    of each kernel and autograd's set-up: 18 ms against 5 ms for the Fashion-MNIST
    MLP, 47 against 27 ms for the CNN, measured on one core), not round 1. (A node
    trains one model, without ``vmap``, ``StackedTrainer._one_loss``: under vmap the
    first step also imported sympy for its decompositions, a second or more, enough
    for a neighbour's masked-input deadline to pass.) It needs
    the plan's shapes and batch size only, not the data, so a node runs it while it
    waits for approvals and links. The small model is built here, in the caller's
    thread (``build_model`` forks torch's global generator); the step draws nothing
    from it.
    """
    schedule = dataclasses.replace(schedule_from(plan.training), local_epochs=0, local_steps=1)
    shape = tuple(plan.data.input_shape)
    small = build_model("logreg", shape, plan.data.num_classes)
    batch = plan.training.batch_size

    def step() -> None:
        x = torch.zeros((batch, *shape))
        y = torch.arange(batch) % plan.data.num_classes
        params = flat_parameters(small).unsqueeze(0)
        StackedTrainer(small, [(x, y)], [0], schedule, seed=0).train_round(params, 0)
        evaluate(small, params, x, y)

    return step
