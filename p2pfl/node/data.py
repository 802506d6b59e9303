"""A node's private data, from the user's entrypoint ``module:function``.

The contract (docs/node.md): the function is called once when the node
starts, with the ``args`` and ``kwargs`` of the config's ``[data]`` section,
and returns the node's local data as

- a 4-tuple ``(x_train, y_train, x_test, y_test)``, or
- any object with attributes ``x_train``, ``y_train``, ``x_test``, ``y_test``
  (``p2pfl.datasets.NodeData`` is one),

where ``x_*`` are float arrays of shape ``(samples, *input_shape)`` and
``y_*`` integer class labels in ``[0, num_classes)`` (torch tensors or numpy
arrays). The test set may be empty. The data never leaves the node: only
models trained on it do. The shapes must match the plan's ``[data]`` section.

An object may also carry ``feature_names`` (one per flattened input value):
the plan's ``[data.schema]`` is then matched by name rather than by position.
The function is found and its result read as a scenario's own dataset is
(``p2pfl.entrypoints``, ``p2pfl.datasets.user``).
``check_local_data`` checks train and test sets against that schema before
the node trains, and refuses the data with a count-only summary (never a
value) of what does not fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from p2pfl import entrypoints
from p2pfl.datasets.user import SPLITS, as_tensor, split_parts
from p2pfl.errors import ConfigError, DataError
from p2pfl.schema import Schema, SchemaReport, validate


@dataclass(frozen=True, eq=False)
class LocalData:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    feature_names: tuple[str, ...] | None = None


@runtime_checkable
class Named(Protocol):
    """Data that name their features (``[data.schema]`` is matched by name)."""

    feature_names: Any


def resolve(entrypoint: str) -> Any:
    """The callable named ``module:function``; ``ConfigError`` if it cannot be found."""
    return entrypoints.resolve(entrypoint, "[data] entrypoint").function


def load_local_data(
    entrypoint: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    input_shape: Sequence[int],
    num_classes: int,
) -> LocalData:
    """Call the entrypoint and check what it returned against the plan's shapes and labels."""
    data = call_entrypoint(entrypoint, args, kwargs)
    return fit_plan(data, input_shape, num_classes)


def call_entrypoint(
    entrypoint: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
) -> LocalData:
    """Import and call ``module:function``; its result as tensors, not yet checked."""
    function = resolve(entrypoint)
    try:
        result = function(*args, **(kwargs or {}))
    except (ConfigError, DataError):
        raise
    except Exception as exc:
        raise DataError(
            f"the data entrypoint {entrypoint} failed: {type(exc).__name__}: {exc}"
        ) from exc
    parts = split_parts(result)
    if parts is None:
        raise DataError(
            f"the data entrypoint {entrypoint} must return (x_train, y_train, x_test, y_test), "
            f"got {type(result).__name__}"
        )
    feature_names = None
    if not isinstance(result, tuple | list) and isinstance(result, Named):
        feature_names = _feature_names(result.feature_names, entrypoint)
    who = "the data entrypoint"
    x_train, x_test = (as_tensor(parts[i], SPLITS[i], torch.float32, who) for i in (0, 2))
    y_train, y_test = (as_tensor(parts[i], SPLITS[i], torch.int64, who) for i in (1, 3))
    return LocalData(x_train, y_train, x_test, y_test, feature_names)


def fit_plan(data: LocalData, input_shape: Sequence[int], num_classes: int) -> LocalData:
    """``data`` if its samples have the plan's shape and its labels its classes; else ``DataError``.

    Cheap, and the same data pass again unchanged: a node checks the data it loaded at
    start once more against the plan it trains on.
    """
    shape = tuple(int(d) for d in input_shape)
    for x, y, which in (
        (data.x_train, data.y_train, "train"),
        (data.x_test, data.y_test, "test"),
    ):
        if x.shape[0] and tuple(x.shape[1:]) != shape:
            raise DataError(
                f"{which} samples have shape {tuple(x.shape[1:])}; the plan says {shape}"
            )
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise DataError(f"{which} labels must be one per sample ({x.shape[0]})")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataError(f"{which} labels must lie in [0, {num_classes}) as the plan says")
    if data.x_train.shape[0] == 0:
        raise DataError("the data entrypoint returned no training samples")
    x_test = data.x_test.reshape(-1, *shape)
    return dataclasses.replace(data, x_test=x_test)


def _feature_names(value: Any, entrypoint: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(n, str) for n in value):
        raise DataError(f"the data entrypoint {entrypoint}: feature_names must be a list of str")
    return tuple(value)


def schema_report(data: LocalData, schema: Schema) -> SchemaReport:
    """Train and test sets together against ``schema`` (counts only)."""
    x = torch.cat(
        [
            data.x_train.reshape(data.x_train.shape[0], -1),
            data.x_test.reshape(data.x_test.shape[0], -1),
        ]
    )
    y = torch.cat([data.y_train, data.y_test])
    return validate(schema, x.numpy(), data.feature_names, y.numpy())


def check_local_data(
    data: LocalData, schema: Schema | None, record: Callable[..., None]
) -> SchemaReport | None:
    """Refuse data that break the plan's schema, before any training on it.

    The summary (counts and fractions, no values) goes to ``record`` (the
    audit log) whether the data fit or not; a violation raises ``DataError``
    listing them, which stops the node before it exchanges anything.
    """
    if schema is None:
        return None
    report = schema_report(data, schema)
    record("data-check", **report.summary())
    if not report.ok:
        raise DataError(
            "the local data do not fit the plan's data schema; nothing was trained or sent.\n"
            + report.describe()
        )
    return report
