"""Parameter-efficient training (``training.trainable``): only named parameters train and travel.

The trainer takes gradients of the trainable parameters alone and leaves the
others at the initial model, value for value; the plan's selection is the
trainable part (less any personal layers); the protocol engine's frames carry
that part only, plainly and masked; the vectorized and protocol engines agree.
The daemons' side is the parity matrix (``test_engines_parity.py``, its
``trainable`` cell).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from p2pfl.engines import prepare, run_engine
from p2pfl.errors import ConfigError
from p2pfl.spec import PersonaliseSection, Plan, PlanData, PlanError, plan_from_table
from p2pfl.spec.sections import TrainingSection
from p2pfl.training import LocalSchedule, StackedTrainer, trained_names
from protocols import secagg, wire
from protocols.partial import Selection

ROOT = Path(__file__).resolve().parents[2]
DATA = {"input_shape": [4], "num_classes": 2}
MLP = [("1.weight", 8), ("1.bias", 2), ("3.weight", 4), ("3.bias", 2)]
SECURE = {"secure.enabled": True, "secure.share_timeout": 60.0, "secure.masked_timeout": 30.0}


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))


def train_once(schedule: LocalSchedule) -> tuple[torch.Tensor, torch.Tensor, StackedTrainer]:
    model = small_model()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 10, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    trainer = StackedTrainer(model, [(x, y), (x[:24], y[:24])], [0, 1], schedule, seed=0)
    dim = sum(p.numel() for p in model.parameters())
    before = torch.randn(dim, generator=gen).repeat(2, 1)
    after = before.clone()
    for r in range(2):
        trainer.train_round(after, r)
    return before, after, trainer


# -- the trainer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer",
    [{"momentum": 0.9, "weight_decay": 0.01}, {"optimizer": "adam"}],
    ids=["momentum-decay", "adam"],
)
def test_frozen_parameters_keep_their_values_and_trainable_ones_train(optimizer: dict) -> None:
    base = {"local_epochs": 0, "local_steps": 3, "batch_size": 8, **optimizer}
    before, after, trainer = train_once(LocalSchedule(**base, trainable=("2",)))
    assert trainer.trained == ["2.weight", "2.bias"]
    frozen = slice(0, 10 * 8 + 8)  # layer 0's weight and bias come first
    assert torch.equal(after[:, frozen], before[:, frozen])  # weight decay did not touch them
    assert (after[:, frozen.stop :] != before[:, frozen.stop :]).all(dim=1).any()
    state = trainer.export_state()
    for name, buffer in state.items():
        if buffer.ndim == 2:  # optimizer state of frozen columns stays zero
            assert not buffer[:, frozen].any(), name


def test_naming_every_parameter_trains_as_the_whole_model_does() -> None:
    base = {"local_epochs": 0, "local_steps": 3, "batch_size": 8, "momentum": 0.9}
    _, everything, _ = train_once(LocalSchedule(**base))
    _, named, _ = train_once(LocalSchedule(**base, trainable=("0", "2.weight", "2.bias")))
    assert torch.equal(everything, named)


def test_a_trainable_name_the_model_lacks_is_refused_naming_its_parameters() -> None:
    with pytest.raises(ConfigError, match=r"\['4'\] name no parameter .*0.weight, 0.bias"):
        trained_names(small_model(), ["0.bias", "4"])
    assert trained_names(small_model(), ["0.bias"]) == ["0.bias"]


# -- the plan ---------------------------------------------------------------------------


def test_the_selection_is_the_trainable_part_less_the_personal_layers() -> None:
    plan = Plan(data=PlanData([4], 2), training=TrainingSection(trainable=["3"]))
    assert plan.selection(MLP) == Selection(16, ((10, 16),))
    both = dataclasses.replace(plan, personalise=PersonaliseSection("partial", ["3.bias"]))
    assert both.selection(MLP) == Selection(16, ((10, 14),))
    nothing = dataclasses.replace(plan, personalise=PersonaliseSection("partial", ["3"]))
    with pytest.raises(ConfigError, match=r"\[training\] trainable: .*shares nothing"):
        nothing.selection(MLP)
    wrong = Plan(data=PlanData([4], 2), training=TrainingSection(trainable=["7"]))
    with pytest.raises(ConfigError, match=r"\[training\] trainable: \['7'\] name no parameter"):
        wrong.selection(MLP)


def test_trainable_is_part_of_the_plan_hash_and_absent_when_empty() -> None:
    plain = Plan(data=PlanData([4], 2))
    assert "trainable" not in plain.table()["training"]  # plans written before it keep their hash
    peft = dataclasses.replace(plain, training=TrainingSection(trainable=["3"]))
    assert plain.hash() != peft.hash()
    assert plan_from_table(peft.table()) == peft


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"gossip": {"mode": "choco"}}, r"trainable needs gossip\.mode = 'sync', not 'choco'"),
        ({"gossip": {"mode": "tracking"}}, r"trainable needs gossip\.mode = 'sync'"),
        (
            {"privacy": {"mechanism": "delta", "epsilon": 8.0, "clip": 1.0}},
            "trainable is not supported with privacy.mechanism = 'delta'",
        ),
        ({"training": {"trainable": ["3", "3"]}}, "trainable must be distinct names"),
    ],
)
def test_what_trainable_cannot_go_with_is_refused(extra: dict, message: str) -> None:
    table: dict[str, Any] = {"data": DATA, "training": {"trainable": ["3"]}, **extra}
    with pytest.raises(PlanError, match=message):
        plan_from_table(table)


# -- the engines ------------------------------------------------------------------------


PEFT = {"model.name": "mlp", "model.hidden": [16], "training.trainable": ["3"]}


def test_the_protocol_engines_frames_carry_the_trainable_part_only(
    delivered: list[bytes], hospitals
) -> None:
    setup = prepare(hospitals(**PEFT, **{"topology.kind": "ring"}))
    frames = delivered
    result = run_engine("protocol", setup, "protocol")
    head = 16 * 2 + 2  # the MLP's last layer: 16 inputs, 2 classes
    assert setup.shared_dim == head and setup.dim > 10 * head
    assert len(frames) == 3 * 4 * 2  # rounds x nodes x ring neighbours
    assert all(wire.decode(f).payload.length == head for f in frames)
    # the body never moved from the initial model, at any node
    body = setup.dim - head
    initial = setup.initial[:body].expand(4, -1)
    assert torch.equal(result.final_params[:, :body], initial)
    assert not torch.equal(result.final_params[:, body:], setup.initial[body:].expand(4, -1))


def test_secure_frames_mask_the_trainable_layers_only(delivered: list[bytes], hospitals) -> None:
    setup = prepare(
        hospitals(**PEFT, **SECURE, **{"topology.kind": "complete", "training.rounds": 1})
    )
    run_engine("protocol", setup, "protocol")
    messages = [secagg.decode(m) for m in delivered]
    codes = [m.codes.shape[0] for m in messages if isinstance(m, secagg.MaskedInput)]
    assert codes == [setup.shared_dim] * 12


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_the_vectorized_and_protocol_engines_agree(secure: bool, hospitals) -> None:
    topology = "complete" if secure else "ring"
    setup = prepare(hospitals(**PEFT, **(SECURE if secure else {}), **{"topology.kind": topology}))
    ours = run_engine("vectorized", setup, "vectorized")
    theirs = run_engine("protocol", setup, "protocol")
    gap = float((ours.final_params - theirs.final_params).norm() / ours.final_params.norm())
    assert gap <= 1e-5, gap
    if not secure:
        assert ours.rounds[-1].bytes_per_node == theirs.rounds[-1].bytes_per_node
    full = prepare(dataclasses.replace(setup.scenario, training=TrainingSection(rounds=3)))
    assert full.shared_dim == full.dim
    assert run_engine("vectorized", full, "full").rounds[-1].bytes_per_node > 10 * (
        ours.rounds[-1].bytes_per_node
    )
