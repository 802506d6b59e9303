"""Models: sizes, deterministic init, flat parameter vectors, user factories, vmap-friendliness."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from p2pfl.errors import ConfigError
from p2pfl.models import (
    MODELS,
    build_model,
    flat_parameters,
    load_flat_parameters,
    parameter_count,
)

FASHION = (1, 28, 28)


def test_parameter_counts_on_fashion_mnist():
    counts = {name: parameter_count(build_model(name, FASHION, 10)) for name in MODELS}
    print(f"parameter counts on 1x28x28, 10 classes: {counts}")
    assert counts["logreg"] == 784 * 10 + 10
    assert counts["mlp"] == (784 * 256 + 256) + (256 * 128 + 128) + (128 * 10 + 10) == 235_146
    assert counts["cnn"] == 110_013


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shapes(name):
    model = build_model(name, FASHION, 10)
    assert model(torch.rand(3, *FASHION)).shape == (3, 10)


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_tabular_models(name):
    model = build_model(name, (37,), 2, hidden=None if name == "logreg" else (16,))
    assert model(torch.randn(5, 37)).shape == (5, 2)


def test_hidden_sizes_are_honoured():
    model = build_model("mlp", (10,), 3, hidden=(4, 5, 6))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 4), (4, 5), (5, 6), (6, 3)]


def test_init_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = flat_parameters(build_model("cnn", FASHION, 10, seed=5))
    assert torch.equal(torch.get_rng_state(), state)
    b = flat_parameters(build_model("cnn", FASHION, 10, seed=5))
    c = flat_parameters(build_model("cnn", FASHION, 10, seed=6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_flat_parameters_round_trip():
    model = build_model("mlp", (20,), 4, hidden=(8,))
    flat = flat_parameters(model)
    assert flat.dtype == torch.float32 and flat.shape == (parameter_count(model),)
    replacement = torch.arange(flat.numel(), dtype=torch.float32)
    load_flat_parameters(model, replacement)
    assert torch.equal(flat_parameters(model), replacement)
    assert torch.equal(model[1].weight[0, :3], torch.tensor([0.0, 1.0, 2.0]))
    flat[0] = 1e6  # a copy: changing it does not touch the model
    assert flat_parameters(model)[0] == 0.0


def test_load_flat_parameters_rejects_wrong_size():
    model = build_model("logreg", (3,), 2)
    with pytest.raises(ValueError, match=r"needs \(8,\)"):
        load_flat_parameters(model, torch.zeros(7))


def test_models_run_under_functional_call_and_vmap():
    model = build_model("cnn", FASHION, 10)
    copies = [build_model("cnn", FASHION, 10, seed=s) for s in range(3)]
    params, buffers = torch.func.stack_module_state(copies)
    x = torch.rand(2, *FASHION)

    def forward(p, b):
        return torch.func.functional_call(model, (p, b), (x,))

    out = torch.vmap(forward)(params, buffers)
    expected = torch.stack([m(x) for m in copies])
    torch.testing.assert_close(out, expected)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    source = textwrap.dedent(
        """
        from torch import nn

        def tiny(*, input_shape, num_classes, hidden=(3,)):
            width = 1
            for d in input_shape:
                width *= d
            return nn.Sequential(nn.Flatten(), nn.Linear(width, hidden[0]), nn.Tanh(),
                                 nn.Linear(hidden[0], num_classes))

        def not_a_model(*, input_shape, num_classes):
            return "nope"

        def with_batchnorm(*, input_shape, num_classes):
            return nn.Sequential(nn.Linear(input_shape[0], num_classes),
                                 nn.BatchNorm1d(num_classes))

        NOT_CALLABLE = 3
        """
    )
    (tmp_path / "p2pfl_test_user_models.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "p2pfl_test_user_models", raising=False)
    return "p2pfl_test_user_models"


def test_user_model_from_module_and_factory(user_module):
    model = build_model(f"{user_module}:tiny", (2, 3), 4, seed=1)
    assert parameter_count(model) == (6 * 3 + 3) + (3 * 4 + 4)
    assert model(torch.zeros(1, 2, 3)).shape == (1, 4)
    wide = build_model(f"{user_module}:tiny", (2, 3), 4, hidden=(7,))
    assert parameter_count(wide) == (6 * 7 + 7) + (7 * 4 + 4)
    again = build_model(f"{user_module}:tiny", (2, 3), 4, seed=1)
    assert torch.equal(flat_parameters(model), flat_parameters(again))


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("resnet", "unknown model 'resnet'.*logreg, mlp, cnn.*module:factory"),
        ("p2pfl_no_such_module_xyz:make", "no module 'p2pfl_no_such_module_xyz'.*PYTHONPATH"),
        ("{mod}:missing", "'missing' is not callable.*no attribute 'missing'"),
        ("{mod}:NOT_CALLABLE", r"'NOT_CALLABLE' is not callable \(it is a int\)"),
        ("{mod}:not_a_model", "returned str, not a torch.nn.Module"),
        ("{mod}:with_batchnorm", "BatchNorm1d"),
    ],
)
def test_bad_model_names_are_config_errors(user_module, name, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_model(name.format(mod=user_module), (4,), 2)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"name": "cnn", "input_shape": (64,)}, "image input_shape"),
        ({"name": "cnn", "input_shape": (1, 8, 8)}, "at least 12x12"),
        ({"name": "logreg", "hidden": (5,)}, "no hidden layers"),
        ({"name": "mlp", "hidden": (0,)}, "positive"),
        ({"name": "mlp", "num_classes": 1}, "num_classes"),
    ],
)
def test_bad_shapes_are_config_errors(kwargs, pattern):
    args = {"name": "mlp", "input_shape": FASHION, "num_classes": 10, **kwargs}
    with pytest.raises(ConfigError, match=pattern):
        build_model(**args)
