"""Sample-level DP-SGD through opacus, behind the trainer interface the engines drive.

Each node gets its own copy of the model wrapped in opacus's ``GradSampleModule`` and a
``DPOptimizer`` (per-sample gradients clipped to ``clip``, Gaussian noise of
``noise_multiplier * clip``), and draws its batches with opacus's Poisson sampler at rate
``batch_size / n_i``: the mechanism opacus's accountant assumes, so the epsilon reported
by ``p2pfl.privacy.budget`` is the one these steps spend. A round is the same number of
steps as without DP (``local_epochs`` passes in expectation, or ``local_steps``).

Samplers and noise draw from generators seeded by (seed, node, round) for a simulation,
so a run is reproducible and both simulation engines train a node identically; a node
daemon passes a seed from the operating system. The optimizer (momentum, Adam moments)
lives across rounds, as in ``p2pfl.training.StackedTrainer``, and is exported for a
checkpoint under the same names (``export_state``/``import_state``). The noise and
sampler generators are not: a restarted daemon draws fresh ones from the operating
system (a generator's state on disk would let anyone holding the file recompute the
noise of the rounds before it), so its later rounds differ from an uninterrupted run.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from p2pfl.errors import ConfigError
from p2pfl.models import flat_parameters, load_flat_parameters
from p2pfl.training import ADAM_STATE, MOMENTUM_STATE, LocalSchedule, derived_seed

_TORCH_NAMES = {"momentum": "momentum_buffer", "adam_m": "exp_avg", "adam_v": "exp_avg_sq"}


def check_model(model: nn.Module) -> None:
    """Refuse, with opacus's reasons, a model whose per-sample gradients opacus cannot compute."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        reasons = "; ".join(str(e) for e in errors[:3])
        raise ConfigError(f"privacy.mechanism = 'dp-sgd' cannot train this model: {reasons}")


class _NodeTrainer:
    def __init__(
        self,
        model: nn.Module,
        data: tuple[Tensor, Tensor],
        schedule: LocalSchedule,
        noise_multiplier: float,
        clip: float,
        seed: int,
    ) -> None:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        self.x, self.y = data
        self.size = int(self.x.shape[0])
        self.schedule = schedule
        self.sample_rate = min(1.0, schedule.batch_size / self.size)
        self.module = GradSampleModule(copy.deepcopy(model))
        self.noise = torch.Generator().manual_seed(derived_seed(seed, 1))
        self.seed = seed
        self.optimizer = DPOptimizer(
            _base_optimizer(self.module, schedule),
            noise_multiplier=noise_multiplier,
            max_grad_norm=clip,
            expected_batch_size=schedule.batch_size,
            generator=self.noise,
        )

    def train(self, row: Tensor, round: int) -> int:
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        load_flat_parameters(self.module._module, row)
        sampler = UniformWithReplacementSampler(
            num_samples=self.size,
            sample_rate=self.sample_rate,
            generator=torch.Generator().manual_seed(derived_seed(self.seed, 2, round)),
            steps=self.schedule.steps_for(self.size),
        )
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr_at(round)
        samples = 0
        self.module.train()
        with warnings.catch_warnings():
            # the hooks fire on the first layer, whose input needs no gradient: harmless
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for batch in sampler:
                self.optimizer.zero_grad(set_to_none=True)
                if len(batch) == 0:
                    continue  # an empty Poisson batch releases nothing
                index = torch.as_tensor(batch, dtype=torch.int64)
                loss = F.cross_entropy(self.module(self.x[index]), self.y[index])
                loss.backward()
                self.optimizer.step()
                samples += len(batch)
        row.copy_(flat_parameters(self.module._module))
        return samples

    def _names(self) -> tuple[str, ...]:
        if self.schedule.optimizer == "adam":
            return ADAM_STATE
        return MOMENTUM_STATE if self.schedule.momentum else ()

    def export_state(self) -> dict[str, np.ndarray]:
        """The wrapped optimizer's buffers as flat (D,) vectors (empty before its first step)."""
        state = self.optimizer.original_optimizer.state
        params = list(self.module._module.parameters())
        names = self._names()
        if not names or any(p not in state for p in params):
            return {}
        out = {
            name: torch.cat([state[p][_TORCH_NAMES[name]].detach().reshape(-1) for p in params])
            .numpy()
            .astype(np.float32, copy=False)
            for name in names
        }
        if self.schedule.optimizer == "adam":
            out["adam_steps"] = np.array([float(state[params[0]]["step"])], dtype=np.float32)
        return out

    def import_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Set the wrapped optimizer's buffers from ``export_state``'s vectors."""
        optimizer = self.optimizer.original_optimizer
        optimizer.state.clear()
        if not state:
            return
        params = list(self.module._module.parameters())
        for name in self._names():
            flat = torch.tensor(np.asarray(state[name], dtype=np.float32).reshape(-1))
            offset = 0
            for p in params:
                chunk = flat[offset : offset + p.numel()].view_as(p).clone()
                optimizer.state[p][_TORCH_NAMES[name]] = chunk
                offset += p.numel()
        if self.schedule.optimizer == "adam":
            step = torch.tensor(float(np.asarray(state["adam_steps"]).reshape(-1)[0]))
            for p in params:
                optimizer.state[p]["step"] = step.clone()


def _base_optimizer(module: nn.Module, s: LocalSchedule) -> torch.optim.Optimizer:
    if s.optimizer == "adam":
        return torch.optim.Adam(module.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(
        module.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
    )


class DpSgdTrainer:
    """Trains k nodes with DP-SGD, one after the other; the interface of ``StackedTrainer``.

    ``noise_multipliers`` are per node, in stack order (from the run's budget);
    ``node_ids`` seed the samplers and noise, as the batch plans of the plain trainer.
    """

    def __init__(
        self,
        model: nn.Module,
        datasets: Sequence[tuple[Tensor, Tensor]],
        node_ids: Sequence[int],
        schedule: LocalSchedule,
        *,
        seed: int,
        noise_multipliers: Sequence[float],
        clip: float,
        device: torch.device | str = "cpu",
    ) -> None:
        if torch.device(device).type != "cpu":
            raise ConfigError("privacy.mechanism = 'dp-sgd' runs on the CPU; set device = 'cpu'")
        check_model(model)
        self.schedule = schedule
        self.sizes = [int(x.shape[0]) for x, _ in datasets]
        if any(s == 0 for s in self.sizes):
            raise ConfigError("every node needs at least one training sample")
        self.nodes = [
            _NodeTrainer(model, data, schedule, z, clip, derived_seed(seed, node))
            for data, node, z in zip(datasets, node_ids, noise_multipliers, strict=True)
        ]

    def steps_per_node(self) -> list[int]:
        return [self.schedule.steps_for(s) for s in self.sizes]

    def node_data(self, position: int) -> tuple[Tensor, Tensor]:
        node = self.nodes[position]
        return node.x, node.y

    def replace_node_data(self, position: int, x: Tensor, y: Tensor) -> None:
        node = self.nodes[position]
        if x.shape != node.x.shape or y.shape != node.y.shape:
            raise ValueError("replacement data must keep the node's shapes")
        node.x, node.y = x, y

    def train_round(self, params: Tensor, round: int, chunk: int | None = None) -> int:
        """One round of DP-SGD steps for each row of ``params`` (k, D), in place."""
        return sum(node.train(params[i], round) for i, node in enumerate(self.nodes))

    def export_state(self) -> dict[str, np.ndarray]:
        """The optimizers' state, stacked as ``StackedTrainer.export_state`` gives it."""
        states = [node.export_state() for node in self.nodes]
        if not states or not all(states):
            return {}
        return {name: np.stack([s[name] for s in states]) for name in states[0]}

    def import_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from ``export_state``'s arrays; ``ValueError`` if they do not fit."""
        names = set(self.nodes[0]._names()) if self.nodes else set()
        if state and self.schedule.optimizer == "adam":
            names.add("adam_steps")
        if state and set(state) != names:
            raise ValueError(f"optimizer state holds {sorted(state)}, DP-SGD needs {sorted(names)}")
        k = len(self.nodes)
        dim = sum(p.numel() for p in self.nodes[0].module._module.parameters()) if k else 0
        rows = {}
        for name, value in state.items():
            width = 1 if name == "adam_steps" else dim
            array = np.asarray(value, dtype=np.float32)
            if array.size != k * width:
                raise ValueError(
                    f"optimizer state {name!r} has {array.size} values, not {k * width}"
                )
            rows[name] = array.reshape(k, width)
        for i, node in enumerate(self.nodes):
            node.import_state({name: rows[name][i] for name in rows})
