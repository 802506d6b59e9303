"""Stacked local training: batch plans, and k stacked nodes equal k nodes trained apart.

The equivalence is what lets the protocol engine (a stack of one per node) and
the vectorized engine (every node in one stack) agree.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from p2pfl import training
from p2pfl.datasets import load_federated
from p2pfl.errors import ConfigError
from p2pfl.models import build_model, flat_parameters
from p2pfl.training import (
    INDEX_LIMIT,
    LocalSchedule,
    StackedTrainer,
    batch_plan,
    evaluate,
    largest_activation,
    nodes_per_call,
    stack_order,
)


@pytest.fixture(scope="module")
def digits():
    return load_federated("digits", 5, "dirichlet", alpha=0.5, seed=3)


def node_data(data):
    return [(nd.x_train, nd.y_train) for nd in data.nodes]


# -- batch plans -------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "batch", "epochs"), [(10, 3, 1), (64, 16, 2), (7, 32, 3)])
def test_batch_plan_covers_each_sample_once_per_epoch(size, batch, epochs):
    schedule = LocalSchedule(local_epochs=epochs, batch_size=batch)
    plan = batch_plan(schedule, size, seed=0, node=1, round=2)
    per_epoch = -(-size // batch)
    assert plan.shape == (epochs * per_epoch, batch)
    assert plan.shape[0] == schedule.steps_for(size)
    for e in range(epochs):
        rows = plan[e * per_epoch : (e + 1) * per_epoch].reshape(-1)
        assert sorted(rows[rows >= 0].tolist()) == list(range(size))
        # padding: only the epoch's last batch, only at its end
        pad = per_epoch * batch - size
        assert (rows[size:] == -1).all() and (rows[:size] >= 0).all()
        assert int((rows == -1).sum()) == pad
    if epochs > 1:
        assert not np.array_equal(plan[:per_epoch], plan[per_epoch : 2 * per_epoch])


def test_batch_plan_local_steps_has_no_padding():
    schedule = LocalSchedule(local_epochs=0, local_steps=7, batch_size=4)
    plan = batch_plan(schedule, 10, seed=0, node=0, round=0)
    assert plan.shape == (7, 4)
    assert (plan >= 0).all() and (plan < 10).all()
    # successive permutations: the first 10 draws are one pass over the data
    assert sorted(plan.reshape(-1)[:10].tolist()) == list(range(10))


def test_batch_plan_is_deterministic_per_seed_node_round():
    schedule = LocalSchedule(local_epochs=1, batch_size=8)
    base = batch_plan(schedule, 50, seed=4, node=2, round=3)
    assert np.array_equal(base, batch_plan(schedule, 50, seed=4, node=2, round=3))
    for other in [(5, 2, 3), (4, 1, 3), (4, 2, 4)]:
        seed, node, rnd = other
        assert not np.array_equal(base, batch_plan(schedule, 50, seed=seed, node=node, round=rnd))


def test_batch_plan_leaves_global_rng_alone():
    np.random.seed(0)
    expected = np.random.rand()
    np.random.seed(0)
    batch_plan(LocalSchedule(), 100, seed=1, node=0, round=0)
    assert np.random.rand() == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"local_epochs": 0, "local_steps": 0},
        {"local_epochs": 1, "local_steps": 3},
        {"local_epochs": -1},
        {"batch_size": 0},
        {"optimizer": "lbfgs"},
        {"lr": 0.0},
        {"momentum": 1.0},
        {"lr_schedule": "linear", "rounds": 5},
        {"lr_schedule": "cosine"},  # cosine needs the run's rounds
    ],
)
def test_bad_schedules(kwargs):
    with pytest.raises(ConfigError):
        LocalSchedule(**kwargs)


def test_cosine_decays_from_lr_towards_zero_over_the_run_and_constant_stays():
    cosine = LocalSchedule(lr=0.2, lr_schedule="cosine", rounds=10)
    rates = [cosine.lr_at(r) for r in range(10)]
    assert rates[0] == pytest.approx(0.2)
    assert rates[5] == pytest.approx(0.1)  # half-way: half the rate
    assert all(a > b > 0 for a, b in itertools.pairwise(rates))
    assert rates[-1] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    assert cosine.lr_at(12) == rates[-1]  # past the run: the last round's rate
    assert {LocalSchedule(lr=0.2, rounds=10).lr_at(r) for r in range(12)} == {0.2}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_scheduled_round_trains_as_a_constant_rate_of_that_rounds_value(digits, optimizer):
    """Round r under cosine equals round r under the constant rate lr_at(r), and not lr."""
    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=(16,), seed=0)
    data = node_data(digits)[:1]
    kwargs = {"local_epochs": 0, "local_steps": 4, "batch_size": 8, "optimizer": optimizer}
    cosine = LocalSchedule(lr=0.05, lr_schedule="cosine", rounds=4, **kwargs)
    results = {}
    for name, schedule in {
        "cosine": cosine,
        "its rate": LocalSchedule(lr=cosine.lr_at(3), **kwargs),
        "base rate": LocalSchedule(lr=0.05, **kwargs),
    }.items():
        params = flat_parameters(model).unsqueeze(0).clone()
        StackedTrainer(model, data, [0], schedule, seed=3).train_round(params, 3)
        results[name] = params
    torch.testing.assert_close(results["cosine"], results["its rate"])
    assert not torch.allclose(results["cosine"], results["base rate"])


# -- stacked equals separate ---------------------------------------------------------------


SCHEDULES = {
    "sgd-epochs": LocalSchedule(local_epochs=1, batch_size=16, lr=0.1),
    "momentum-wd-steps": LocalSchedule(
        local_epochs=0, local_steps=6, batch_size=8, lr=0.05, momentum=0.9, weight_decay=1e-3
    ),
    "adam-epochs": LocalSchedule(local_epochs=1, batch_size=32, optimizer="adam", lr=0.01),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_stacked_equals_separate(digits, name):
    schedule = SCHEDULES[name]
    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=(16,), seed=0)
    init = flat_parameters(model)
    data = node_data(digits)
    sizes = [int(x.shape[0]) for x, _ in data]
    assert len(set(sizes)) > 1  # unequal data: some nodes stop early under local_epochs
    order = stack_order(sizes, schedule)
    stacked = StackedTrainer(model, [data[i] for i in order], order, schedule, seed=7)
    # A trainer of one model takes the path without vmap (``_one_loss``): the two agree.
    singles = [StackedTrainer(model, [data[i]], [i], schedule, seed=7) for i in range(len(data))]
    together = init.repeat(len(data), 1)
    apart = [init.clone().unsqueeze(0) for _ in data]
    for rnd in range(2):
        stacked.train_round(together, rnd, chunk=2)
        for trainer, params in zip(singles, apart, strict=True):
            trainer.train_round(params, rnd)
    assert not torch.allclose(together[0], init)
    for pos, i in enumerate(order):
        torch.testing.assert_close(together[pos], apart[i][0], rtol=1e-5, atol=1e-5)


def test_chunking_does_not_change_the_result(digits):
    schedule = SCHEDULES["sgd-epochs"]
    model = build_model("logreg", digits.input_shape, digits.num_classes, seed=0)
    data = node_data(digits)
    order = stack_order([int(x.shape[0]) for x, _ in data], schedule)
    results = []
    for chunk in (None, 1, 3):
        trainer = StackedTrainer(model, [data[i] for i in order], order, schedule, seed=1)
        params = flat_parameters(model).repeat(len(data), 1)
        trainer.train_round(params, 0, chunk=chunk)
        results.append(params)
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-5, atol=1e-6)


def test_train_round_counts_real_samples(digits):
    schedule = LocalSchedule(local_epochs=2, batch_size=16)
    model = build_model("logreg", digits.input_shape, digits.num_classes)
    data = node_data(digits)
    order = stack_order([int(x.shape[0]) for x, _ in data], schedule)
    trainer = StackedTrainer(model, [data[i] for i in order], order, schedule, seed=0)
    params = flat_parameters(model).repeat(len(data), 1)
    assert trainer.train_round(params, 0) == 2 * sum(int(x.shape[0]) for x, _ in data)


def test_stack_order_is_by_non_increasing_steps_and_stable():
    schedule = LocalSchedule(local_epochs=1, batch_size=10)
    sizes = [5, 30, 12, 30, 1, 25]
    order = stack_order(sizes, schedule)
    steps = [schedule.steps_for(sizes[i]) for i in order]
    assert steps == sorted(steps, reverse=True)
    assert order == [1, 3, 5, 2, 0, 4]


def test_stack_out_of_order_is_refused(digits):
    schedule = LocalSchedule(local_epochs=1, batch_size=8)
    model = build_model("logreg", digits.input_shape, digits.num_classes)
    data = node_data(digits)
    sizes = [int(x.shape[0]) for x, _ in data]
    ascending = sorted(range(len(data)), key=lambda i: sizes[i])
    assert schedule.steps_for(sizes[ascending[0]]) < schedule.steps_for(sizes[ascending[-1]])
    trainer = StackedTrainer(model, [data[i] for i in ascending], ascending, schedule, seed=0)
    params = flat_parameters(model).repeat(len(data), 1)
    before = params.clone()
    with pytest.raises(ValueError, match="non-increasing"):
        trainer.train_round(params, 0)
    assert torch.equal(params, before)


def test_empty_node_is_refused(digits):
    model = build_model("logreg", digits.input_shape, digits.num_classes)
    x, y = digits.nodes[0].x_train, digits.nodes[0].y_train
    with pytest.raises(ConfigError, match="at least one"):
        StackedTrainer(model, [(x, y), (x[:0], y[:0])], [0, 1], LocalSchedule(), seed=0)


def test_parameter_buffer_width_is_checked(digits):
    model = build_model("logreg", digits.input_shape, digits.num_classes)
    nd = digits.nodes[0]
    trainer = StackedTrainer(model, [(nd.x_train, nd.y_train)], [0], LocalSchedule(), seed=0)
    with pytest.raises(ValueError, match="columns"):
        trainer.train_round(torch.zeros(1, trainer.dim + 1), 0)


# -- learning ----------------------------------------------------------------------------


def test_loss_decreases_on_digits(digits):
    schedule = LocalSchedule(local_epochs=1, batch_size=16, lr=0.1)
    model = build_model("logreg", digits.input_shape, digits.num_classes, seed=0)
    data = node_data(digits)
    order = stack_order([int(x.shape[0]) for x, _ in data], schedule)
    trainer = StackedTrainer(model, [data[i] for i in order], order, schedule, seed=0)
    params = flat_parameters(model).repeat(len(data), 1)
    x, y = digits.x_global_test, digits.y_global_test
    acc0, loss0 = evaluate(model, params, x, y)
    losses = [loss0]
    for rnd in range(5):
        trainer.train_round(params, rnd)
        losses.append(evaluate(model, params, x, y)[1])
    acc, loss = evaluate(model, params, x, y)
    assert (loss < 0.6 * loss0).all(), (loss0, loss)
    assert (losses[2] < losses[0]).all()
    assert float(acc.mean()) > 0.6 > float(acc0.mean())


@pytest.mark.parametrize("rows", [1, 2])  # one row: a node's own model, evaluated without vmap
def test_evaluate_matches_a_plain_forward(digits, rows):
    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=(8,), seed=2)
    params = torch.stack([flat_parameters(model), flat_parameters(model) * 0.5])[:rows]
    x, y = digits.x_global_test, digits.y_global_test
    acc, loss = evaluate(model, params, x, y, chunk=1, batch=37)
    assert acc.shape == loss.shape == (rows,)
    from p2pfl.models import load_flat_parameters

    for row in range(rows):
        load_flat_parameters(model, params[row])
        with torch.no_grad():
            logits = model(x)
        expected_acc = float((logits.argmax(-1) == y).float().mean())
        expected_loss = float(torch.nn.functional.cross_entropy(logits, y))
        assert float(acc[row]) == pytest.approx(expected_acc)
        assert float(loss[row]) == pytest.approx(expected_loss, rel=1e-5)


# -- chunks below 32-bit indexing -----------------------------------------------------------


def test_nodes_per_call_keeps_activations_below_2_31():
    model = build_model("cnn", (1, 28, 28), 10)
    assert largest_activation(model, (1, 28, 28)) == 16 * 24 * 24
    chunk = nodes_per_call(model, (1, 28, 28), 32)
    assert chunk * 32 * 16 * 24 * 24 <= INDEX_LIMIT < (chunk + 1) * 32 * 16 * 24 * 24
    assert 1024 <= chunk < 10_000  # 10,000 nodes of the CNN must be split


def test_small_index_limit_changes_nothing(digits, monkeypatch):
    """Forcing tiny chunks (as 10,000 CNN nodes would need) gives the same numbers."""
    schedule = SCHEDULES["sgd-epochs"]
    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=(16,), seed=0)
    data = node_data(digits)
    order = stack_order([int(x.shape[0]) for x, _ in data], schedule)
    x, y = digits.x_global_test, digits.y_global_test

    def train_and_eval() -> tuple[torch.Tensor, torch.Tensor]:
        trainer = StackedTrainer(model, [data[i] for i in order], order, schedule, seed=2)
        params = flat_parameters(model).repeat(len(data), 1)
        chunk = nodes_per_call(model, digits.input_shape, schedule.batch_size)
        trainer.train_round(params, 0, chunk)
        return params, evaluate(model, params, x, y)[1]

    params, loss = train_and_eval()
    monkeypatch.setattr(training, "INDEX_LIMIT", 16 * 64 * 2)  # two nodes of batch 16 per call
    assert nodes_per_call(model, digits.input_shape, schedule.batch_size) == 2
    small_params, small_loss = train_and_eval()
    torch.testing.assert_close(small_params, params, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(small_loss, loss, rtol=1e-5, atol=1e-6)


def test_batch_buffers_gather_what_a_fresh_index_select_gathers() -> None:
    """The preallocated gather equals the plain one, padding included, call after call."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(50, 2, 3, generator=gen)
    y = torch.randint(0, 5, (50,), generator=gen)
    offsets = torch.tensor([0, 20, 35])
    buffers = training._BatchBuffers(x, y, rows=3 * 4)
    first = None
    for k in (3, 2, 3):  # fewer active nodes, then all again: the same memory reused
        idx = torch.randint(-1, 15, (k, 4), generator=gen)
        bx, by, mask = buffers.gather(idx, offsets[:k])
        rows = (idx.clamp(min=0) + offsets[:k, None]).reshape(-1)
        assert torch.equal(bx, x.index_select(0, rows).reshape(k, 4, 2, 3))
        assert torch.equal(by, y.index_select(0, rows).reshape(k, 4))
        assert torch.equal(mask, (idx >= 0).to(x.dtype))
        first = bx.data_ptr() if first is None else first
        assert bx.data_ptr() == first  # no fresh allocation


def test_dp_sgd_trains_each_round_at_its_scheduled_rate():
    from p2pfl.privacy.dpsgd import DpSgdTrainer

    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=g)
    y = (x[:, 0] > 0).long()
    model = build_model("mlp", (6,), 2, hidden=(5,), seed=1)
    cosine = LocalSchedule(batch_size=8, lr=0.1, lr_schedule="cosine", rounds=4)
    results = {}
    for name, schedule in {
        "cosine": cosine,
        "its rate": LocalSchedule(batch_size=8, lr=cosine.lr_at(2)),
        "base rate": LocalSchedule(batch_size=8, lr=0.1),
    }.items():
        params = flat_parameters(model).unsqueeze(0).clone()
        trainer = DpSgdTrainer(
            model, [(x, y)], [0], schedule, seed=5, noise_multipliers=[0.0], clip=1.0
        )
        trainer.train_round(params, 2)
        results[name] = params
    torch.testing.assert_close(results["cosine"], results["its rate"])
    assert not torch.allclose(results["cosine"], results["base rate"])
