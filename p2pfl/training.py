"""Local training of a stack of nodes at once, with one functional code path.

Both engines train through ``StackedTrainer``: the vectorized engine with every
node in one stack, the protocol engine with a stack of one per node. Sharing
the code is what makes the engines agree: a node sees the same batches in the
same order and applies the same update either way.

Layout: the nodes' parameters are the rows of one preallocated ``(k, D)``
float32 tensor (the flat vectors the nodes exchange); the per-tensor views
that ``torch.func.functional_call`` needs are strided views into it, so an
update writes straight into the buffer that mixing reads.

Batches: a node's round is ``local_epochs`` passes over its training data in a
fresh permutation (or ``local_steps`` batches), drawn from a generator seeded
by (seed, node, round), never from global state. Nodes with less data finish
earlier; the stack is ordered by step count, so the nodes still training at a
step are always a prefix of the stack and no parameters are copied to skip
the others. Each step's batch is gathered into buffers allocated once per
trainer (``index_select(..., out=)``), not into fresh memory.

Parameter-efficient training (``schedule.trainable``): gradients are taken with
respect to the trainable parameters alone (the frozen ones are inputs of the
loss, not variables of it), and only their columns are updated.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from p2pfl.errors import ConfigError
from protocols.errors import LocalProtocolError
from protocols.partial import matching

LR_SCHEDULES = ("constant", "cosine")
"""How the learning rate moves over a run's rounds (``LocalSchedule.lr_at``)."""


@dataclass(frozen=True)
class LocalSchedule:
    """How much a node trains per round and how."""

    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    trainable: tuple[str, ...] = ()  # names of parameters or modules; empty: all
    lr_schedule: str = "constant"  # or "cosine": decays over ``rounds`` rounds
    rounds: int = 0  # the run's rounds (what ``cosine`` decays over)

    def __post_init__(self) -> None:
        if self.local_epochs < 0 or self.local_steps < 0:
            raise ConfigError("training.local_epochs and training.local_steps must be >= 0")
        if (self.local_epochs == 0) == (self.local_steps == 0):
            raise ConfigError("set exactly one of training.local_epochs and training.local_steps")
        if self.batch_size < 1:
            raise ConfigError("training.batch_size must be at least 1")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"training.optimizer must be sgd or adam, not {self.optimizer!r}")
        if not self.lr > 0:
            raise ConfigError("training.lr must be positive")
        if not 0 <= self.momentum < 1:
            raise ConfigError("training.momentum must be in [0, 1)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"training.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                f"not {self.lr_schedule!r}"
            )
        if self.lr_schedule == "cosine" and self.rounds < 1:
            raise ConfigError("training.lr_schedule = 'cosine' needs the run's rounds")

    def lr_at(self, round: int) -> float:
        """The learning rate of round ``round`` (0-based).

        ``constant``: ``lr`` every round. ``cosine``: lr (1 + cos(pi r / R)) / 2 over
        the R rounds of the run (Loshchilov & Hutter, "SGDR", ICLR 2017, eq. 5 with
        one cycle and no restart), from ``lr`` at round 0 down towards 0 at the last;
        a round past the run (a joiner's or a resumed count never is) keeps the last.
        """
        if self.lr_schedule == "constant":
            return self.lr
        r = min(max(round, 0), self.rounds - 1)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * r / self.rounds))

    def lr_scale(self, round: int) -> float:
        """Round ``round``'s rate over the base rate (1 at a constant rate)."""
        return self.lr_at(round) / self.lr

    def steps_for(self, size: int) -> int:
        if self.local_steps:
            return self.local_steps
        return self.local_epochs * math.ceil(size / self.batch_size)


def schedule_from(training: Any) -> LocalSchedule:
    """The schedule of a ``[training]`` section (a scenario's or a plan's)."""
    return LocalSchedule(
        local_epochs=training.local_epochs if not training.local_steps else 0,
        local_steps=training.local_steps,
        batch_size=training.batch_size,
        optimizer=training.optimizer,
        lr=training.lr,
        momentum=training.momentum,
        weight_decay=training.weight_decay,
        trainable=tuple(training.trainable),
        lr_schedule=training.lr_schedule,
        rounds=training.rounds,
    )


def trained_names(model: nn.Module, trainable: Sequence[str]) -> list[str]:
    """The names of ``model``'s parameters that train (all when ``trainable`` is empty).

    ``trainable`` names parameters or modules (``"2"`` covers ``"2.weight"`` and
    ``"2.bias"``); a name that covers none is a ``ConfigError`` listing them.
    """
    names = [name for name, _ in model.named_parameters()]
    if not trainable:
        return names
    try:
        flags = matching(names, trainable, "training.trainable")
    except LocalProtocolError as exc:
        raise ConfigError(str(exc)) from None
    return [name for name, trains in zip(names, flags, strict=True) if trains]


def derived_seed(*parts: int) -> int:
    """A 63-bit torch seed drawn from ``parts`` (e.g. scenario seed, node, round, purpose)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def batch_plan(schedule: LocalSchedule, size: int, seed: int, node: int, round: int) -> np.ndarray:
    """Sample indices of one node's round, shape (steps, batch); -1 pads a short last batch."""
    rng = np.random.default_rng([seed, node, round])
    b = schedule.batch_size
    if schedule.local_steps:
        passes = math.ceil(schedule.local_steps * b / size)
        stream = np.concatenate([rng.permutation(size) for _ in range(passes)])
        return stream[: schedule.local_steps * b].reshape(schedule.local_steps, b)
    per_epoch = math.ceil(size / b)
    plan = np.full((schedule.local_epochs * per_epoch, b), -1, dtype=np.int64)
    for epoch in range(schedule.local_epochs):
        perm = np.full(per_epoch * b, -1, dtype=np.int64)
        perm[:size] = rng.permutation(size)
        plan[epoch * per_epoch : (epoch + 1) * per_epoch] = perm.reshape(per_epoch, b)
    return plan


def param_views(model: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    """Per-parameter views into the rows of ``flat`` (k, D), each of shape (k, *param.shape)."""
    views: dict[str, Tensor] = {}
    offset = 0
    for name, p in model.named_parameters():
        n = p.numel()
        views[name] = flat[:, offset : offset + n].unflatten(1, p.shape)
        offset += n
    if offset != flat.shape[1]:
        raise ValueError(f"parameter buffer has {flat.shape[1]} columns, model needs {offset}")
    return views


MOMENTUM_STATE = ("momentum",)
ADAM_STATE = ("adam_m", "adam_v")


class StackedTrainer:
    """Trains k nodes' copies of one model together, each on its own data.

    ``datasets`` are the nodes' (x, y) training tensors, in stack order;
    ``node_ids`` are their global indices (they seed the batch plans). The
    optimizer state is kept across rounds, one row per node.
    """

    def __init__(
        self,
        model: nn.Module,
        datasets: Sequence[tuple[Tensor, Tensor]],
        node_ids: Sequence[int],
        schedule: LocalSchedule,
        *,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model.to(device)
        self.schedule = schedule
        self.seed = seed
        self.device = torch.device(device)
        self.node_ids = list(node_ids)
        self.sizes = [int(x.shape[0]) for x, _ in datasets]
        if any(s == 0 for s in self.sizes):
            raise ConfigError("every node needs at least one training sample")
        self.x = torch.cat([x for x, _ in datasets]).to(self.device)
        self.y = torch.cat([y for _, y in datasets]).to(self.device)
        offsets = np.cumsum([0, *self.sizes])[:-1]
        self.offsets = torch.as_tensor(offsets, dtype=torch.int64, device=self.device)
        self.dim = sum(p.numel() for p in model.parameters())
        self.trained = trained_names(model, schedule.trainable)
        trained = set(self.trained)
        self._columns: list[tuple[str, slice]] = []  # the trained parameters' columns
        offset = 0
        for name, parameter in model.named_parameters():
            if name in trained:
                self._columns.append((name, slice(offset, offset + parameter.numel())))
            offset += parameter.numel()
        # One model (a node's own trainer): its loss without vmap, whose dispatch costs
        # more than a small model's step.
        self._losses = (
            self._one_loss if len(self.sizes) == 1 else vmap(self._loss, in_dims=(0, 0, 0, 0, 0))
        )
        self._state: list[Tensor] = []
        self._adam_steps = torch.zeros(len(self.sizes), device=self.device)
        self._batch: _BatchBuffers | None = None
        self._lr = schedule.lr  # this round's (``LocalSchedule.lr_at``)

    def _loss(
        self,
        params: dict[str, Tensor],
        frozen: dict[str, Tensor],
        x: Tensor,
        y: Tensor,
        mask: Tensor,
    ) -> Tensor:
        logits = functional_call(self.model, {**params, **frozen}, (x,))
        losses = F.cross_entropy(logits, y, reduction="none")
        return (losses * mask).sum() / mask.sum().clamp(min=1.0)

    def _one_loss(
        self, params: dict[str, Tensor], frozen: dict[str, Tensor], *batch: Tensor
    ) -> Tensor:
        """``_loss`` of a stack of one model (``batch``: x, y, mask), shaped as the vmapped
        losses are: (1,)."""
        rows = (t[0] for t in batch)
        return self._loss(first_rows(params), first_rows(frozen), *rows).unsqueeze(0)

    def steps_per_node(self) -> list[int]:
        return [self.schedule.steps_for(s) for s in self.sizes]

    def node_data(self, position: int) -> tuple[Tensor, Tensor]:
        """The training data of the node at ``position`` in the stack (views, not copies)."""
        a = int(self.offsets[position])
        b = a + self.sizes[position]
        return self.x[a:b], self.y[a:b]

    def replace_node_data(self, position: int, x: Tensor, y: Tensor) -> None:
        """Swap in new data of the same size for one node (a simulation's injected drift)."""
        old_x, old_y = self.node_data(position)
        if x.shape != old_x.shape or y.shape != old_y.shape:
            raise ValueError("replacement data must keep the node's shapes")
        old_x.copy_(x)
        old_y.copy_(y)

    def train_round(self, params: Tensor, round: int, chunk: int | None = None) -> int:
        """Run one round of local steps in place on ``params`` (k, D); returns sample-steps.

        The stack must be ordered by non-increasing step count (see ``stack_order``).
        ``chunk`` bounds how many nodes one vmapped call handles.
        """
        k = params.shape[0]
        steps = self.steps_per_node()
        if any(a < b for a, b in itertools.pairwise(steps)):
            raise ValueError("nodes must be stacked by non-increasing step count")
        plans = [
            batch_plan(self.schedule, self.sizes[i], self.seed, self.node_ids[i], round)
            for i in range(k)
        ]
        width = self.schedule.batch_size
        index = torch.full((k, max(steps), width), -1, dtype=torch.int64)
        for i, plan in enumerate(plans):
            index[i, : plan.shape[0]] = torch.from_numpy(plan)
        index = index.to(self.device)
        if not self._state:
            self._init_state(params)
        chunk = chunk or k
        rows = min(chunk, k) * width
        if self._batch is None or self._batch.rows < rows:
            self._batch = _BatchBuffers(self.x, self.y, rows)
        self._lr = self.schedule.lr_at(round)
        samples = 0
        for step in range(max(steps)):
            active = sum(1 for s in steps if s > step)
            for start in range(0, active, chunk):
                stop = min(active, start + chunk)
                samples += self._step(params, index[start:stop, step], start, stop)
        return samples

    def _init_state(self, params: Tensor) -> None:
        self._state = [torch.zeros_like(params) for _ in self._state_names()]

    def _state_names(self) -> tuple[str, ...]:
        if self.schedule.optimizer == "adam":
            return ADAM_STATE
        return MOMENTUM_STATE if self.schedule.momentum else ()

    def export_state(self) -> dict[str, np.ndarray]:
        """The optimizer state carried from round to round, for a checkpoint.

        Momentum SGD: ``momentum`` (k, D). Adam: ``adam_m``, ``adam_v`` (k, D) and
        ``adam_steps`` (k,). Plain SGD, and any trainer before its first round,
        carries none (empty). Arrays are float32 views of the live buffers: write
        them out before the next round changes them.
        """
        if not self._state:
            return {}
        state = {
            name: buffer.detach().cpu().numpy()
            for name, buffer in zip(self._state_names(), self._state, strict=True)
        }
        if self.schedule.optimizer == "adam":
            state["adam_steps"] = self._adam_steps.detach().cpu().numpy()
        return state

    def import_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from ``export_state``'s arrays (flat or shaped); empty: from scratch.

        ``ValueError`` names what does not fit this trainer's optimizer and stack.
        """
        if not state:
            self._state = []
            self._adam_steps.zero_()
            return
        k = len(self.sizes)
        names = self._state_names()
        expected = set(names) | ({"adam_steps"} if self.schedule.optimizer == "adam" else set())
        if set(state) != expected:
            raise ValueError(
                f"optimizer state holds {sorted(state)}, this trainer needs {sorted(expected)}"
            )
        shapes = {name: (k, self.dim) for name in names} | {"adam_steps": (k,)}
        tensors = {}
        for name in expected:
            array = np.asarray(state[name], dtype=np.float32)
            if array.size != math.prod(shapes[name]):
                raise ValueError(
                    f"optimizer state {name!r} has {array.size} values, not {shapes[name]}"
                )
            tensors[name] = torch.tensor(array.reshape(shapes[name]), device=self.device)
        self._state = [tensors[name] for name in names]
        if "adam_steps" in tensors:
            self._adam_steps = tensors["adam_steps"]

    def _step(self, params: Tensor, idx: Tensor, start: int, stop: int) -> int:
        assert self._batch is not None  # train_round sized it
        x, y, mask = self._batch.gather(idx, self.offsets[start:stop])
        block = params[start:stop]
        grads = self._gradients(block, x, y, mask)
        if self.schedule.optimizer == "adam":
            self._adam_steps[start:stop] += 1
        # Parameter by parameter, each gradient freed once applied: no model-sized
        # concatenation of them (the update is elementwise, so the same numbers).
        for name, cols in self._columns:
            g = grads.pop(name).flatten(1)
            self._apply(block[:, cols], g, start, stop, cols)
            del g
        return int(mask.sum().item())

    def _gradients(self, block: Tensor, x: Tensor, y: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Each row's gradient of its own loss, per trained parameter, each (k, *shape).

        The rows' models are independent, so the gradient of the sum of their losses
        with respect to row i is row i's gradient alone: one ordinary backward pass
        through the vmapped forward gives every row's. (``torch.func.grad`` under
        ``vmap`` gives the same numbers up to rounding, but imports ``torch._dynamo``
        on first use, a second of every process's first step.)
        """
        views = param_views(self.model, block)
        trained = {name: views.pop(name).detach().requires_grad_() for name, _ in self._columns}
        with torch.enable_grad():
            losses = self._losses(trained, views, x, y, mask)
            grads = torch.autograd.grad(losses.sum(), list(trained.values()))
        return dict(zip(trained, grads, strict=True))

    def _apply(self, p: Tensor, g: Tensor, start: int, stop: int, cols: slice) -> None:
        """One optimizer step on columns ``cols`` of rows ``start:stop`` (``p`` is that block)."""
        s = self.schedule
        if s.weight_decay:
            g.add_(p, alpha=s.weight_decay)
        if s.optimizer == "sgd":
            if s.momentum:
                buf = self._state[0][start:stop, cols]
                buf.mul_(s.momentum).add_(g)
                g = buf
            p.add_(g, alpha=-self._lr)
            return
        m, v = self._state[0][start:stop, cols], self._state[1][start:stop, cols]
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        t = self._adam_steps[start:stop, None]
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size = self._lr / (1 - beta1**t)
        denom = (v / (1 - beta2**t)).sqrt_().add_(eps)
        p.addcdiv_(m * step_size, denom, value=-1.0)


class _BatchBuffers:
    """One step's samples, labels and mask, gathered into memory allocated once.

    A fresh ``index_select`` per step would allocate (and page-fault) a batch of
    every node, each step, for memory that is the same size every time. The buffers
    hold ``rows`` samples (every node's full batch); a step uses a prefix.
    """

    def __init__(self, x: Tensor, y: Tensor, rows: int) -> None:
        self.x, self.y, self.rows = x, y, rows
        self._x = torch.empty((rows, *x.shape[1:]), dtype=x.dtype, device=x.device)
        self._y = torch.empty(rows, dtype=y.dtype, device=y.device)
        self._rows = torch.empty(rows, dtype=torch.int64, device=x.device)
        self._mask = torch.empty(rows, dtype=x.dtype, device=x.device)
        self._valid = torch.empty(rows, dtype=torch.bool, device=x.device)

    def gather(self, idx: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x, y, mask) of sample indices ``idx`` (k, batch; -1 pads), views into the buffers.

        ``offsets`` (k,) are the nodes' first rows in the pooled data. The views are
        overwritten by the next call.
        """
        k, width = idx.shape
        n = k * width
        rows = self._rows[:n].view(k, width)
        torch.clamp(idx, min=0, out=rows)
        rows.add_(offsets[:, None])
        flat = rows.view(-1)
        torch.index_select(self.x, 0, flat, out=self._x[:n])
        torch.index_select(self.y, 0, flat, out=self._y[:n])
        mask = self._mask[:n].view(k, width)
        valid = self._valid[:n].view(k, width)
        torch.ge(idx, 0, out=valid)
        mask.copy_(valid)
        x = self._x[:n].view(k, width, *self.x.shape[1:])
        return x, self._y[:n].view(k, width), mask


INDEX_LIMIT = (1 << 31) - 1
"""torch kernels (conv2d among them) refuse or mis-index tensors past 32-bit indexing."""


def largest_activation(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Elements of the largest tensor any module outputs for one sample (at least the input)."""
    sizes = [math.prod(input_shape)]

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, Tensor):
            sizes.append(output.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return max(sizes)


def nodes_per_call(model: nn.Module, input_shape: tuple[int, ...], batch: int) -> int:
    """How many nodes one vmapped call may stack so that no activation passes 2^31 elements."""
    per_node = batch * largest_activation(model, input_shape)
    return max(1, INDEX_LIMIT // max(1, per_node))


def stack_order(sizes: Sequence[int], schedule: LocalSchedule) -> list[int]:
    """Node indices ordered by non-increasing step count (stable, so ties keep their order)."""
    steps = [schedule.steps_for(s) for s in sizes]
    return sorted(range(len(sizes)), key=lambda i: -steps[i])


def first_rows(stacked: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each tensor's row 0: a stack of one model's parameters as the model's own."""
    return {name: t[0] for name, t in stacked.items()}


@torch.no_grad()
def evaluate(
    model: nn.Module, params: Tensor, x: Tensor, y: Tensor, *, chunk: int = 64, batch: int = 4096
) -> tuple[Tensor, Tensor]:
    """Accuracy and mean loss of each row of ``params`` (k, D) on (x, y): two (k,) tensors."""

    def one(p: dict[str, Tensor], xb: Tensor) -> Tensor:
        return functional_call(model, p, (xb,))

    def alone(p: dict[str, Tensor], xb: Tensor) -> Tensor:  # one row: no vmap dispatch
        return one(first_rows(p), xb).unsqueeze(0)

    k = params.shape[0]
    forward = alone if k == 1 else vmap(one, in_dims=(0, None))
    if x.shape[0]:
        per_sample = largest_activation(model, tuple(x.shape[1:]))
        batch = max(1, min(batch, INDEX_LIMIT // (min(chunk, k) * per_sample)))
    correct = torch.zeros(k, device=params.device)
    loss = torch.zeros(k, device=params.device)
    x, y = x.to(params.device), y.to(params.device)
    for a in range(0, k, chunk):
        views = param_views(model, params[a : a + chunk])
        for b in range(0, x.shape[0], batch):
            logits = forward(views, x[b : b + batch])
            yb = y[b : b + batch]
            correct[a : a + chunk] += (logits.argmax(-1) == yb).sum(-1)
            flat = logits.reshape(-1, logits.shape[-1])
            ce = F.cross_entropy(flat, yb.repeat(logits.shape[0]), reduction="none")
            loss[a : a + chunk] += ce.view(logits.shape[0], -1).sum(-1)
    n = max(1, x.shape[0])
    return correct / n, loss / n
