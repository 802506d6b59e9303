"""A scenario's own dataset: ``[data] dataset = "module:function"`` (docs/your-data.md).

The function is called once with the scenario's ``[data] args`` and
``[data] kwargs`` and returns one of two shapes:

- one dataset to partition: ``(x_train, y_train, x_test, y_test)`` (or an
  object with those attributes). The scenario's partitioner (``iid``,
  ``dirichlet``, ``classes``) splits the training rows over the nodes, each
  node splits its share into its own train and test sets (``test_fraction``),
  and the returned test set is the federation's global test set, as
  Fashion-MNIST's official one is (``p2pfl.datasets.federated``).
- per-site data: a list with one such 4-tuple per site (nodes ``node-0``,
  ``node-1``, ...), or a dict from site name to 4-tuple (the nodes take those
  names). Each site keeps its own split (``partition = "natural"``, the
  default), their number must be ``[data] nodes``, and the global test set
  is the union of the sites' test sets.

``x_*`` are real-valued arrays (torch tensors or numpy) of shape
``(samples, *input_shape)``, used as given (no standardisation: do it in the
loader) and refused if any value is NaN or infinite; ``y_*`` are integer
class labels, one per sample, in ``[0, num_classes)``, where ``num_classes``
is ``[data] num_classes`` or, unset, the largest label plus one. Every
problem is a ``ConfigError`` that names the scenario key and, for the data
themselves, the array and the site, with counts, never values.

The conversion of one 4-tuple (``split_parts``, ``as_tensor``) is the node
daemon's too (``p2pfl.node.data``): a site's entrypoint and a rehearsal's
loader hand over their data the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from p2pfl.datasets.base import Source, Transform
from p2pfl.datasets.federated import FederatedData, NodeData
from p2pfl.entrypoints import CodeSource, resolve
from p2pfl.errors import ConfigError, DataError

SPLITS = ("x_train", "y_train", "x_test", "y_test")
PER_SITE_PARTITION = "natural"


@runtime_checkable
class Splits(Protocol):
    """What a loader may return instead of a 4-tuple (``p2pfl.datasets.NodeData`` fits)."""

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any


def split_parts(result: Any, *, sites: bool = False) -> list[Any] | None:
    """The four arrays of a 4-tuple or of an object with the four attributes; else None.

    ``sites``: a list of four sites may be what was returned, so a 4-tuple whose first
    item is a site's own 4-tuple is not taken for one dataset.
    """
    if isinstance(result, tuple | list) and len(result) == 4:
        return None if sites and _is_site(result[0]) else list(result)
    if isinstance(result, Splits):
        return [result.x_train, result.y_train, result.x_test, result.y_test]
    return None


def _is_site(value: Any) -> bool:
    return isinstance(value, Splits) or (isinstance(value, tuple | list) and len(value) == 4)


def as_tensor(value: Any, name: str, dtype: torch.dtype, who: str) -> Tensor:
    """``value`` as a contiguous tensor of ``dtype``; ``DataError`` naming ``name`` if it is
    not an array, or (labels) holds values that are not integers."""
    if isinstance(value, Tensor):
        tensor = value.detach().cpu()
    else:
        try:
            tensor = torch.from_numpy(np.array(value))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{who}'s {name} is not an array: {exc}") from None
    if tensor.is_complex():
        raise DataError(f"{who}'s {name} holds complex values, not real numbers")
    integral = not tensor.is_floating_point() or torch.equal(tensor, tensor.round())
    if dtype == torch.int64 and not integral:
        raise DataError(f"{who}'s {name} holds non-integer labels")
    return tensor.to(dtype).contiguous()


@dataclass(frozen=True)
class UserData:
    """What a scenario's loader returned, checked: one dataset (``pooled``) or per-site data."""

    source: CodeSource
    pooled: Source | None
    sites: FederatedData | None


def load_user_data(
    reference: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    nodes: int,
    num_classes: int | None,
    search: Sequence[str] = (),
    key: str = "[data] dataset",
) -> UserData:
    """Import and call the loader ``reference``; its data checked as the module docstring says."""
    entry = resolve(reference, key, search)
    who = f"{key} {reference!r}"
    try:
        result = entry.call(*args, **kwargs)
    except (ConfigError, DataError) as exc:
        raise ConfigError(f"{who}: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"{who} raised {exc!r}") from exc
    try:
        parts = split_parts(result, sites=True)
        if parts is not None:
            site = _site(parts, who)
            classes = _classes([site], num_classes, who)
            return UserData(entry.source, _pooled(site, classes), None)
        names, sites = _per_site(result, nodes, who)
        classes = _classes(sites, num_classes, who)
        return UserData(entry.source, None, _federated(names, sites, classes, who))
    except DataError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True, eq=False)
class _Site:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def _site(parts: list[Any], who: str, site: str = "") -> _Site:
    """One 4-tuple as tensors: features 2-D at least and finite, labels one per sample."""
    where = f"{who}{f' site {site}' if site else ''}"
    x_train, x_test = (as_tensor(parts[i], SPLITS[i], torch.float32, where) for i in (0, 2))
    y_train, y_test = (as_tensor(parts[i], SPLITS[i], torch.int64, where) for i in (1, 3))
    for x, y, which in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if x.dim() < 2:
            raise DataError(
                f"{where}: x_{which} has shape {tuple(x.shape)}; it needs (samples, *input_shape)"
            )
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise DataError(
                f"{where}: y_{which} has shape {tuple(y.shape)}; it needs one label per "
                f"sample of x_{which} ({x.shape[0]},)"
            )
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise DataError(f"{where}: x_{which} holds {bad} NaN or infinite value(s)")
        if y.numel() and int(y.min()) < 0:
            raise DataError(f"{where}: y_{which} holds negative labels")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{where}: x_train samples have shape {tuple(x_train.shape[1:])} but x_test "
            f"samples {tuple(x_test.shape[1:])}"
        )
    for which, x in (("train", x_train), ("test", x_test)):
        if x.shape[0] == 0:
            raise DataError(f"{where}: no {which} samples; each split needs at least one")
    return _Site(x_train, y_train, x_test, y_test)


def _per_site(result: Any, nodes: int, who: str) -> tuple[list[str], list[_Site]]:
    """Per-site data (a list or a dict of 4-tuples), as many sites as ``[data] nodes``."""
    if isinstance(result, Mapping):
        names = [str(name) for name in result]
        values = list(result.values())
    elif isinstance(result, list | tuple) and any(_is_site(v) for v in result):
        names = [f"node-{i}" for i in range(len(result))]
        values = list(result)
    else:
        raise DataError(
            f"{who} must return (x_train, y_train, x_test, y_test) or a list of them, "
            f"one per site; got {_describe(result)}"
        )
    if len(values) != nodes:
        raise DataError(f"{who} returned {len(values)} sites, but [data] nodes = {nodes}")
    sites = []
    for name, value in zip(names, values, strict=True):
        parts = split_parts(value)
        if parts is None:
            raise DataError(
                f"{who}: site {name} is a {type(value).__name__}, not "
                "(x_train, y_train, x_test, y_test)"
            )
        sites.append(_site(parts, who, name))
    shapes = {tuple(s.x_train.shape[1:]) for s in sites}
    if len(shapes) > 1:
        raise DataError(f"{who}: the sites' samples differ in shape: {sorted(shapes)}")
    return names, sites


def _describe(result: Any) -> str:
    if isinstance(result, list | tuple):
        return f"a {type(result).__name__} of {len(result)} items"
    return type(result).__name__


def _classes(sites: list[_Site], num_classes: int | None, who: str) -> int:
    """``[data] num_classes``, or the largest label plus one; every label below it."""
    top = max(int(y.max()) for s in sites for y in (s.y_train, s.y_test))
    if num_classes is None:
        if top < 1:
            raise DataError(f"{who}: every label is 0; a classifier needs at least 2 classes")
        return top + 1
    if num_classes < 2:
        raise DataError(f"[data] num_classes must be at least 2, not {num_classes}")
    if top >= num_classes:
        raise DataError(
            f"{who}: labels go up to {top}, but [data] num_classes = {num_classes} "
            f"wants them in [0, {num_classes})"
        )
    return num_classes


def _pooled(site: _Site, num_classes: int) -> Source:
    """One dataset as a ``Source``: its test rows are the official (global) test set."""
    features = torch.cat([site.x_train, site.x_test]).numpy()
    labels = torch.cat([site.y_train, site.y_test]).numpy()
    official_test = np.arange(len(labels)) >= site.x_train.shape[0]

    def fit(rows: np.ndarray) -> Transform:
        def transform(which: np.ndarray) -> np.ndarray:
            return features[which]

        return transform

    return Source(
        labels=labels,
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in site.x_train.shape[1:]),
        fit=fit,
        official_test=official_test,
    )


def _federated(names: list[str], sites: list[_Site], num_classes: int, who: str) -> FederatedData:
    if len(set(names)) != len(names):
        raise DataError(f"{who}: site names repeat")
    shape = tuple(int(d) for d in sites[0].x_train.shape[1:])
    return FederatedData(
        nodes=tuple(
            NodeData(name, s.x_train, s.y_train, s.x_test, s.y_test)
            for name, s in zip(names, sites, strict=True)
        ),
        x_global_test=torch.cat([s.x_test for s in sites]),
        y_global_test=torch.cat([s.y_test for s in sites]),
        num_features=math.prod(shape),
        input_shape=shape,
        num_classes=num_classes,
        site_names=tuple(names),
    )
