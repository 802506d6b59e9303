"""The reference points of a run: pooled training and centralized mini-batch SGD."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from p2pfl import baselines as bl
from p2pfl.cli import main
from p2pfl.scenario import load_scenario
from p2pfl.simulate import prepare
from p2pfl.training import LocalSchedule, StackedTrainer

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "simulations" / "tiny.toml"
NODES, STEPS, BATCH, ROUNDS = 6, 5, 16, 2  # tiny.toml's, two rounds


@pytest.fixture
def setup():
    scenario = load_scenario(TINY, {"training.rounds": ROUNDS})
    return prepare(dataclasses.replace(scenario, sweep={}))


@pytest.fixture
def rounds_trained(monkeypatch):
    """Each ``train_round`` of a baseline: (batch size, steps, samples it trained on)."""
    seen: list[tuple[int, int, int]] = []
    train_round = StackedTrainer.train_round

    def spy(self, params, round, chunk=None):
        samples = train_round(self, params, round, chunk)
        seen.append((self.schedule.batch_size, self.steps_per_node()[0], samples))
        return samples

    monkeypatch.setattr(StackedTrainer, "train_round", spy)
    return seen


def test_minibatch_sgd_takes_one_nodes_steps_each_with_every_nodes_batch(setup, rounds_trained):
    accuracy = bl.minibatch(setup)
    assert 0 < accuracy <= 1
    assert rounds_trained == [(NODES * BATCH, STEPS, STEPS * NODES * BATCH)] * ROUNDS


def test_pooled_takes_every_nodes_steps_so_both_see_the_same_samples(setup, rounds_trained):
    bl.pooled(setup)
    assert rounds_trained == [(BATCH, NODES * STEPS, STEPS * NODES * BATCH)] * ROUNDS


def test_with_epochs_minibatch_passes_over_the_pooled_data_in_batches_of_every_node():
    schedule = LocalSchedule(local_epochs=2, batch_size=BATCH)
    pooled_data = 1000
    assert bl.pooled_schedule(schedule, NODES) == schedule  # epochs already take every step
    steps = bl.minibatch_schedule(schedule, NODES).steps_for(pooled_data)
    assert steps == 2 * math.ceil(pooled_data / (NODES * BATCH))


def test_a_run_reports_minibatch_sgd_beside_pooled_when_asked(tmp_path, capsys):
    args = ["simulate", str(TINY), "--out", str(tmp_path), "--set", "training.rounds=1"]
    assert main([*args, "--set", "baselines.minibatch=true", "--json"]) == 0
    baselines = json.loads(capsys.readouterr().out)["runs"][0]["baselines"]
    assert 0 < baselines["minibatch"] <= 1 and 0 < baselines["pooled"] <= 1
