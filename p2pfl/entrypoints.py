"""Callables of the user's own code, named ``module:function``, and where their code came from.

A scenario names a dataset loader (``[data] dataset``) or a model factory
(``[model] name``) of the user's own this way, a node config its data
entrypoint. ``resolve(reference, key, search)`` imports ``module`` with the
folders of ``search`` put first on ``sys.path`` for the import (a scenario
passes its own folder and the current directory), else from ``PYTHONPATH``
and the installed packages, then follows the dotted ``function``.
``sys.path`` is as it was afterwards. Every error is a ``ConfigError`` that
starts with ``key`` (the setting that named the callable) and says which
part failed: the reference's form, the import (and where it was looked for),
the attribute, or that it is not callable.

``Entrypoint.source`` names the module's file and its SHA-256, so that a run
records exactly which code loaded its data or built its model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pfl.errors import ConfigError

_MISSING = object()


@dataclass(frozen=True)
class CodeSource:
    """Where a callable's code lives: its ``module:function``, the module's file and hash.

    ``file`` and ``sha256`` are empty for a module without a source file (built in).
    """

    reference: str
    file: str
    sha256: str

    def as_report(self) -> dict[str, str]:
        return {"reference": self.reference, "file": self.file, "sha256": self.sha256}


@dataclass(frozen=True)
class Entrypoint:
    """A resolved callable; ``call`` runs it with the same folders first on ``sys.path``
    (a loader that imports a sibling module when called finds it where its own module was)."""

    function: Callable[..., Any]
    source: CodeSource
    search: tuple[str, ...] = ()

    def call(self, *args: Any, **kwargs: Any) -> Any:
        with search_path(self.search):
            return self.function(*args, **kwargs)


def is_reference(name: str) -> bool:
    """Whether ``name`` names user code (``module:function``) rather than a built-in."""
    return ":" in name


@contextlib.contextmanager
def search_path(folders: Sequence[str | Path]) -> Iterator[None]:
    """``folders`` first on ``sys.path`` inside the block, ``sys.path`` restored after it
    (left alone when there are none, as for a daemon's entrypoint)."""
    if not folders:
        yield
        return
    saved = list(sys.path)
    sys.path[:0] = [str(Path(f).resolve()) for f in folders]
    try:
        yield
    finally:
        sys.path[:] = saved


def resolve(reference: str, key: str, search: Sequence[str | Path] = ()) -> Entrypoint:
    """The callable ``reference`` names, with its source; ``ConfigError`` starting with ``key``."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{key} {reference!r} is not of the form module:function")
    module = _import(module_name, reference, key, search)
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, _MISSING)
        if target is _MISSING:
            where = f" ({module.__file__})" if getattr(module, "__file__", None) else ""
            raise ConfigError(
                f"{key} {reference!r}: {attribute!r} is not callable: module "
                f"{module_name!r}{where} has no attribute {part!r}"
            )
    if not callable(target):
        raise ConfigError(
            f"{key} {reference!r}: {attribute!r} is not callable (it is a {type(target).__name__})"
        )
    return Entrypoint(target, module_source(reference, module), tuple(str(f) for f in search))


def _import(module_name: str, reference: str, key: str, search: Sequence[str | Path]) -> Any:
    with search_path(search):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise ConfigError(
                    f"{key} {reference!r}: importing {module_name!r} failed: {exc}"
                ) from None
            raise ConfigError(
                f"{key} {reference!r}: no module {module_name!r}; it must be on PYTHONPATH "
                f"or installed{_where(search)}"
            ) from None
        except Exception as exc:  # the user's module itself raised while importing
            raise ConfigError(
                f"{key} {reference!r}: importing {module_name!r} failed: {exc!r}"
            ) from None


def _where(search: Sequence[str | Path]) -> str:
    if not search:
        return ""
    folders = ", ".join(str(Path(f).resolve()) for f in search)
    return f", or be a file or package in one of these folders: {folders}"


def module_source(reference: str, module: Any) -> CodeSource:
    """The file ``module`` was loaded from and its SHA-256 (empty when it has no file)."""
    file = getattr(module, "__file__", None)
    if not file:
        return CodeSource(reference, "", "")
    path = Path(file)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return CodeSource(reference, str(path), "")
    return CodeSource(reference, str(path), digest)
