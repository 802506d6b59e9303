"""The optimizer state in a checkpoint: stored whole, checked, and enough to resume exactly.

A node restarted from the checkpoint of round r must train rounds r+1... as if it
had never stopped. The batches are seeded per (seed, node, round) and need nothing
from the past; the optimizer (momentum buffer, Adam moments and step count) does,
so it goes into the checkpoint. Each resume test also shows that dropping the
state gives other parameters, so it cannot pass without it.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from p2pfl.models import build_model, flat_parameters
from p2pfl.node import checkpoint as ckpt
from p2pfl.node.data import LocalData
from p2pfl.node.errors import CheckpointError, PlanError
from p2pfl.node.local import Learner
from p2pfl.privacy.dpsgd import DpSgdTrainer
from p2pfl.training import LocalSchedule, StackedTrainer

SEED = 7
SHAPE = (6,)
CLASSES = 3
SCHEDULES = {
    "momentum": LocalSchedule(local_epochs=1, batch_size=8, lr=0.1, momentum=0.9),
    "adam": LocalSchedule(local_epochs=1, batch_size=8, optimizer="adam", lr=0.01),
}


def dataset(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, *SHAPE, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return x, y


def trainer(schedule: LocalSchedule, *, dp: bool = False) -> tuple[StackedTrainer, torch.Tensor]:
    model = build_model("mlp", SHAPE, CLASSES, hidden=(5,), seed=SEED)
    params = flat_parameters(model).unsqueeze(0).clone()
    if dp:  # no noise, so two runs can agree; the optimizer is opacus's all the same
        dp_trainer = DpSgdTrainer(
            model, [dataset()], [2], schedule, seed=SEED, noise_multipliers=[0.0], clip=1.0
        )
        return dp_trainer, params  # type: ignore[return-value]
    return StackedTrainer(model, [dataset()], [2], schedule, seed=SEED), params


def checkpointed_resume(
    tmp_path: Path, schedule: LocalSchedule, *, dp: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Final parameters: uninterrupted, resumed with the state, resumed without it."""
    straight, params = trainer(schedule, dp=dp)
    for r in range(2):
        straight.train_round(params, r)
    path = ckpt.write_checkpoint(
        tmp_path, 1, params[0].numpy(), {"note": "x"}, state=straight.export_state()
    )
    for r in range(2, 5):
        straight.train_round(params, r)

    finals = []
    for keep_state in (True, False):
        saved = ckpt.read_checkpoint(path)
        resumed, _ = trainer(schedule, dp=dp)
        if keep_state:
            resumed.import_state(saved.state)
        row = torch.from_numpy(saved.model.copy()).unsqueeze(0)
        for r in range(2, 5):
            resumed.train_round(row, r)
        finals.append(row)
    return params, finals[0], finals[1]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_a_trainer_resumed_from_its_checkpoint_trains_on_exactly(tmp_path: Path, name: str) -> None:
    straight, resumed, stateless = checkpointed_resume(tmp_path, SCHEDULES[name])
    assert torch.equal(resumed, straight)
    assert not torch.allclose(stateless, straight, rtol=1e-4, atol=0)  # the state matters


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_a_dp_sgd_trainer_resumes_its_optimizer_too(tmp_path: Path, name: str) -> None:
    straight, resumed, stateless = checkpointed_resume(tmp_path, SCHEDULES[name], dp=True)
    assert torch.allclose(resumed, straight, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(stateless, straight, rtol=1e-4, atol=0)


def test_exported_state_names_and_shapes() -> None:
    momentum, params = trainer(SCHEDULES["momentum"])
    assert momentum.export_state() == {}  # nothing before the first round
    momentum.train_round(params, 0)
    state = momentum.export_state()
    assert set(state) == {"momentum"} and state["momentum"].shape == params.shape
    adam, params = trainer(SCHEDULES["adam"])
    adam.train_round(params, 0)
    state = adam.export_state()
    assert set(state) == {"adam_m", "adam_v", "adam_steps"}
    steps = adam.steps_per_node()[0]
    assert state["adam_steps"].tolist() == [float(steps)]
    plain, params = trainer(LocalSchedule(local_epochs=1, batch_size=8))
    plain.train_round(params, 0)
    assert plain.export_state() == {}


def test_a_state_of_another_optimizer_or_size_is_refused() -> None:
    adam, params = trainer(SCHEDULES["adam"])
    adam.train_round(params, 0)
    momentum, _ = trainer(SCHEDULES["momentum"])
    with pytest.raises(ValueError, match="needs"):
        momentum.import_state(adam.export_state())
    with pytest.raises(ValueError, match="values"):
        momentum.import_state({"momentum": np.zeros(3, np.float32)})


# -- the file format ------------------------------------------------------------------------


def state_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "adam_m": rng.standard_normal((1, 50)).astype(np.float32),
        "adam_v": rng.random((1, 50)).astype(np.float32),
        "adam_steps": np.array([12.0], np.float32),
    }


def test_state_round_trips_through_the_file(tmp_path: Path) -> None:
    model = np.arange(50, dtype=np.float32)
    state = state_arrays()
    path = ckpt.write_checkpoint(tmp_path, 4, model, {"a": 1}, state=state)
    loaded = ckpt.read_checkpoint(path)
    assert loaded.has_state and list(loaded.state) == list(state)
    for name, value in state.items():
        assert np.array_equal(loaded.state[name], value.reshape(-1))
    assert np.array_equal(loaded.model, model)
    streamed = ckpt.read_checkpoint(path, model=False)  # checks everything, keeps nothing
    assert streamed.model.size == 0 and streamed.state == {} and streamed.has_state
    empty = ckpt.read_checkpoint(ckpt.write_checkpoint(tmp_path, 5, model, state={}))
    assert empty.has_state and empty.state == {}
    none = ckpt.read_checkpoint(ckpt.write_checkpoint(tmp_path, 6, model))
    assert not none.has_state


def test_altered_or_truncated_state_is_refused(tmp_path: Path) -> None:
    path = ckpt.write_checkpoint(tmp_path, 1, np.ones(50, np.float32), state=state_arrays())
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x40  # inside the state, behind the model
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="optimizer state does not match"):
        ckpt.read_checkpoint(path)
    with pytest.raises(CheckpointError, match="optimizer state does not match"):
        ckpt.read_checkpoint(path, model=False)
    path.write_bytes(bytes(raw[:-4]))
    with pytest.raises(CheckpointError, match="truncated"):
        ckpt.read_checkpoint(path)


def write_version_1(path: Path, round_: int, model: np.ndarray) -> None:
    """A checkpoint as written before the optimizer state was kept (rounds counted from 0)."""
    data = model.astype("<f4").tobytes()
    meta = msgpack.packb(
        {"round": round_, "dim": model.size, "sha256": hashlib.sha256(data).digest()},
        use_bin_type=True,
    )
    path.write_bytes(b"P2PFL-CKPT\x00\x01" + struct.pack("<I", len(meta)) + meta + data)


def test_a_version_1_checkpoint_still_loads_without_state(tmp_path: Path) -> None:
    model = np.linspace(0, 1, 20, dtype=np.float32)
    write_version_1(tmp_path / ckpt.checkpoint_name(3), 3, model)
    loaded = ckpt.latest_checkpoint(tmp_path)
    assert loaded is not None and loaded.round == 4 and loaded.version == 1  # index 3: round 4
    assert np.array_equal(loaded.model, model) and not loaded.has_state and loaded.state == {}


def learner(schedule: LocalSchedule) -> Learner:
    model = build_model("mlp", SHAPE, CLASSES, hidden=(5,), seed=SEED)
    params = flat_parameters(model).unsqueeze(0).clone()
    x, y = dataset()
    data = LocalData(x, y, x[:0], y[:0])
    return Learner(data, model, params, StackedTrainer(model, [(x, y)], [0], schedule, seed=SEED))


def test_the_learner_warns_when_a_checkpoint_has_no_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="p2pfl.node.local"):
        learner(SCHEDULES["adam"]).restore_optimizer(None, tmp_path / "old.ckpt")
        learner(LocalSchedule(local_epochs=1)).restore_optimizer(None, tmp_path / "old.ckpt")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "holds no optimizer state" in warnings[0], warnings
    assert "Adam" in warnings[0] and "old.ckpt" in warnings[0]


def test_the_learner_refuses_a_state_that_does_not_fit(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="optimizer state does not fit"):
        learner(SCHEDULES["momentum"]).restore_optimizer(state_arrays(), tmp_path / "x.ckpt")
