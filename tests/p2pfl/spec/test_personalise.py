"""The ``[personalise]`` section: validated with clear errors, part of the plan hash."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from p2pfl.engines import prepare
from p2pfl.errors import ConfigError
from p2pfl.scenario import load_scenario
from p2pfl.spec import PersonaliseSection, Plan, PlanData, PlanError, plan_from_table
from protocols.partial import Selection

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "simulations" / "tiny.toml"
DATA = {"input_shape": [4], "num_classes": 2}
LOGREG = [("1.weight", 8), ("1.bias", 2)]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"method": "fedx"}, "personalise.method must be one of none, finetune, partial"),
        ({"method": "partial"}, "needs personalise.layers"),
        ({"method": "finetune", "layers": ["head"]}, "layers is partial sharing's"),
        ({"method": "partial", "layers": ["a", "a"]}, "distinct names"),
        ({"method": "finetune", "val_fraction": 0.0}, r"val_fraction must be in \(0, 1\)"),
        ({"method": "finetune", "patience": 0}, "patience must be at least 1"),
        ({"method": "finetune", "eval_every": 0}, "eval_every must be at least 1"),
        ({"method": "finetune", "max_steps": 0}, "max_steps must be at least 1"),
        ({"method": "finetune", "patiense": 3}, "unknown key 'patiense'"),
    ],
)
def test_bad_sections_are_refused_naming_the_key(table: dict, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan_from_table({"data": DATA, "personalise": table})


def test_partial_sharing_needs_sync_gossip() -> None:
    with pytest.raises(PlanError, match=r"needs gossip\.mode = 'sync', not 'choco'"):
        plan_from_table(
            {
                "data": DATA,
                "gossip": {"mode": "choco"},
                "personalise": {"method": "partial", "layers": ["head"]},
            }
        )


def test_the_section_is_part_of_the_plan_hash_and_absent_at_its_default() -> None:
    plain = Plan(data=PlanData([4], 2))
    assert "personalise" not in plain.table()  # plans written before it keep their hash
    tuned = dataclasses.replace(plain, personalise=PersonaliseSection("finetune"))
    partial = dataclasses.replace(
        plain, personalise=PersonaliseSection("partial", layers=["1.bias"])
    )
    assert len({plain.hash(), tuned.hash(), partial.hash()}) == 3
    for plan in (tuned, partial):
        assert plan_from_table(plan.table()) == plan  # what the ledger holds reads back


def test_the_selection_names_layers_or_the_head() -> None:
    spec = Plan(data=PlanData([4], 2), personalise=PersonaliseSection("partial", ["1.bias"]))
    assert spec.selection(LOGREG) == Selection(10, ((0, 8),))
    mlp = [("1.weight", 8), ("1.bias", 2), ("3.weight", 4), ("3.bias", 2)]
    head = dataclasses.replace(spec, personalise=PersonaliseSection("partial", ["head"]))
    assert head.selection(mlp) == Selection(16, ((0, 10),))
    assert Plan(data=PlanData([4], 2)).selection(mlp) is None
    with pytest.raises(ConfigError, match="shares nothing"):
        head.selection(LOGREG)  # logistic regression is all head
    wrong = dataclasses.replace(spec, personalise=PersonaliseSection("partial", ["2"]))
    with pytest.raises(ConfigError, match=r"\['2'\] name no parameter .*1.weight, 1.bias"):
        wrong.selection(LOGREG)


def test_a_scenario_naming_a_layer_its_model_lacks_is_refused_before_training() -> None:
    scenario = load_scenario(TINY, {"personalise.method": "partial", "personalise.layers": ["9"]})
    with pytest.raises(ConfigError, match=r"\[personalise\]: personal layers \['9'\]"):
        prepare(scenario)
