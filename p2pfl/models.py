"""Models for simulated and real training, and their parameters as one flat vector.

Every model here is functional-friendly: no BatchNorm, no dropout, no buffers
that change in the forward pass, so ``torch.func.functional_call`` under
``torch.vmap`` can run many nodes' copies of a model at once. Initialisation is
deterministic for a ``seed`` and leaves the global torch RNG as it was.

Built-ins (``MODELS``): ``logreg``, ``mlp`` and ``cnn``. Any other name of the
form ``module:factory`` imports ``module`` (``p2pfl.entrypoints``: first from
the ``search`` folders, a scenario's own and the current one, then from
``PYTHONPATH`` and the installed packages) and calls
``factory(input_shape=..., num_classes=..., **kwargs)`` by keyword, with
``[model] kwargs`` (plus ``hidden=...`` when given). It must return an
``nn.Module`` whose parameters are float and whose output for a batch of
``b`` samples is ``(b, num_classes)`` logits; since every engine trains with
``torch.func.vmap`` over ``functional_call``, the new model is run that way
once on a batch of zeros (with its gradient), and a model that cannot is
refused here, with torch's reason, rather than in the middle of a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from p2pfl.entrypoints import is_reference, resolve
from p2pfl.errors import ConfigError

MODELS: dict[str, str] = {
    "logreg": "multinomial logistic regression: one Linear layer on the flattened input",
    "mlp": "flatten, Linear+ReLU hidden layers (default 256, 128), Linear output",
    "cnn": "two 5x5 conv+ReLU+maxpool blocks (16, 32 channels), then Linear+ReLU (185), Linear",
}
MLP_HIDDEN = (256, 128)
CNN_HIDDEN = (185,)
"""Sized so that the CNN on 1x28x28 Fashion-MNIST has about 110k parameters (110,013)."""

_FORBIDDEN = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: tuple[int, ...] | None = None,
    seed: int = 0,
    kwargs: Mapping[str, Any] | None = None,
    search: Sequence[str] = (),
) -> nn.Module:
    """A freshly initialised model; the same arguments always give the same weights.

    ``kwargs`` go to a ``module:factory`` of the user's (``[model] kwargs``), looked up
    first in the ``search`` folders.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or any(d < 1 for d in input_shape):
        raise ConfigError(f"input_shape must be non-empty with positive sizes; got {input_shape}")
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2; got {num_classes}")
    if hidden is not None and any(h < 1 for h in hidden):
        raise ConfigError(f"hidden layer sizes must be positive; got {hidden}")
    if kwargs and not is_reference(name):
        raise ConfigError(
            f"[model] kwargs apply to a model of your own ('module:factory'), not to {name!r}"
        )
    factory = _factory(name, dict(kwargs or {}), search)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(input_shape, num_classes, hidden)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    bad = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _FORBIDDEN)})
    if bad:
        raise ConfigError(
            f"model {name!r} uses {', '.join(bad)}; models must have no BatchNorm or dropout "
            "so that they run under torch.func.functional_call and vmap"
        )
    model = model.to(torch.float32)
    if is_reference(name):
        check_functional(model, name, input_shape, num_classes)
    return model


Factory = Callable[[tuple[int, ...], int, tuple[int, ...] | None], object]


def _factory(name: str, kwargs: dict[str, Any], search: Sequence[str]) -> Factory:
    builtins: dict[str, Factory] = {"logreg": _logreg, "mlp": _mlp, "cnn": _cnn}
    if name in builtins:
        return builtins[name]
    if not is_reference(name):
        raise ConfigError(
            f"unknown model {name!r}; built-ins: {', '.join(MODELS)}, "
            "or name your own as 'module:factory'"
        )
    entry = resolve(name, "[model] name", search)

    def call(
        input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] | None
    ) -> object:
        given = {"input_shape": input_shape, "num_classes": num_classes, **kwargs}
        if hidden is not None:
            given["hidden"] = hidden
        try:
            return entry.call(**given)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"[model] name {name!r} raised {exc!r}") from exc

    return call


def check_functional(
    model: nn.Module, name: str, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """Run ``model`` as the engines train it (two stacked copies, a batch of two zero samples,
    ``vmap`` of ``grad`` of ``functional_call``); ``ConfigError`` saying why it cannot."""
    named = dict(model.named_parameters())
    if not named:
        raise ConfigError(f"[model] name {name!r}: the model has no parameters to train")
    params = {k: v.detach().unsqueeze(0).repeat(2, *([1] * v.dim())) for k, v in named.items()}
    x = torch.zeros(2, 2, *input_shape)

    def forward(p: dict[str, Tensor], xb: Tensor) -> Tensor:
        out: Tensor = functional_call(model, p, (xb,))
        return out

    def total(p: dict[str, Tensor], xb: Tensor) -> Tensor:
        return forward(p, xb).sum()

    try:
        out = vmap(forward)(params, x)
        vmap(grad(total))(params, x)
    except Exception as exc:
        raise ConfigError(
            f"[model] name {name!r} does not run under torch.func.vmap of functional_call, "
            f"how every engine trains: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if tuple(out.shape[1:]) != (2, num_classes):
        raise ConfigError(
            f"[model] name {name!r}: for 2 samples of shape {input_shape} the model returns "
            f"shape {tuple(out.shape[1:])}; it must return logits of shape (2, {num_classes})"
        )


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _logreg(
    input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] | None
) -> nn.Module:
    if hidden:
        raise ConfigError(f"model 'logreg' has no hidden layers; got hidden={hidden}")
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def _dense(width: int, hidden: tuple[int, ...], num_classes: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return layers


def _mlp(
    input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] | None
) -> nn.Module:
    sizes = MLP_HIDDEN if hidden is None else hidden
    return nn.Sequential(nn.Flatten(), *_dense(math.prod(input_shape), sizes, num_classes))


def _cnn(
    input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] | None
) -> nn.Module:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model 'cnn' needs an image input_shape (channels, height, width); got {input_shape}"
        )
    channels, height, width = input_shape
    # Each block: 5x5 convolution without padding (-4), then 2x2 max-pooling (//2).
    out_h, out_w = (((d - 4) // 2 - 4) // 2 for d in (height, width))
    if out_h < 1 or out_w < 1:
        raise ConfigError(f"model 'cnn' needs images of at least 12x12; got {height}x{width}")
    sizes = CNN_HIDDEN if hidden is None else hidden
    return nn.Sequential(
        nn.Conv2d(channels, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        *_dense(32 * out_h * out_w, sizes, num_classes),
    )


def parameter_count(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def named_sizes(model: nn.Module) -> list[tuple[str, int]]:
    """Each parameter's name and size, in the order ``flat_parameters`` lays them out."""
    return [(name, p.numel()) for name, p in model.named_parameters()]


def flat_parameters(model: nn.Module) -> Tensor:
    """All parameters as one detached float32 vector, in ``model.parameters()`` order."""
    params = [p.detach().reshape(-1).to(torch.float32) for p in model.parameters()]
    return torch.cat(params) if params else torch.zeros(0, dtype=torch.float32)


def load_flat_parameters(model: nn.Module, flat: Tensor) -> None:
    """Copy a vector from ``flat_parameters`` back into ``model``'s parameters, in place."""
    expected = parameter_count(model)
    if flat.dim() != 1 or flat.numel() != expected:
        raise ValueError(
            f"flat parameter vector has shape {tuple(flat.shape)}; model needs ({expected},)"
        )
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
