"""Partial sharing: which coordinates of a node's flat parameter vector are gossiped.

FedRep (Collins, Hassani, Mokhtari, Shakkottai, "Exploiting Shared Representations
for Personalized Federated Learning", ICML 2021) splits a model into a shared
representation (the body), averaged across clients, and a personal head that never
leaves its client. In a gossip federation the same split means: a node sends, and
mixes, only the shared coordinates; its personal ones stay as its own training left
them, so they are never on the wire, never masked, never averaged.

A ``Selection`` names the shared coordinates of a vector of ``dim`` values as
sorted, disjoint half-open ranges (a model's parameters are contiguous blocks of
the flat vector, so a handful of ranges describe any choice of layers).
``gather`` takes the shared part out (what a round core mixes); ``scatter``
writes a mixed shared part back into the full vector, leaving the personal
coordinates as they were. Both work on a vector or on a stack of row vectors
(the last axis is the model); they are pure numpy, no copy of the personal part.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from protocols.errors import LocalProtocolError

Vector = npt.NDArray[Any]


@dataclass(frozen=True)
class Selection:
    """The shared coordinates of a ``dim``-vector, as sorted disjoint ``(start, stop)`` ranges."""

    dim: int
    shared: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise LocalProtocolError(
                f"a selection needs a vector of at least 1 value, not {self.dim}"
            )
        last = 0
        for start, stop in self.shared:
            if not last <= start < stop <= self.dim:
                raise LocalProtocolError(
                    f"shared ranges must be sorted, disjoint, non-empty and within "
                    f"0..{self.dim}: got {list(self.shared)}"
                )
            last = stop
        if not self.shared:
            raise LocalProtocolError("a selection shares nothing: every coordinate is personal")

    @classmethod
    def of_blocks(cls, blocks: Sequence[tuple[int, bool]]) -> Selection:
        """The selection of a vector made of consecutive blocks ``(size, personal)``.

        A model's parameters in flat order are such blocks; adjacent shared blocks
        merge into one range.
        """
        ranges: list[tuple[int, int]] = []
        offset = 0
        for size, personal in blocks:
            if size < 0:
                raise LocalProtocolError(f"a block cannot have {size} values")
            if not personal and size:
                if ranges and ranges[-1][1] == offset:
                    ranges[-1] = (ranges[-1][0], offset + size)
                else:
                    ranges.append((offset, offset + size))
            offset += size
        return cls(offset, tuple(ranges))

    @property
    def shared_dim(self) -> int:
        """How many values a node sends and mixes per round."""
        return sum(stop - start for start, stop in self.shared)

    @property
    def personal_dim(self) -> int:
        return self.dim - self.shared_dim

    def indices(self) -> npt.NDArray[np.int64]:
        """The shared coordinates, ascending (for gathering from a tensor)."""
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in self.shared])

    def gather(self, full: Vector) -> Vector:
        """The shared part of ``full`` (last axis ``dim``): a new contiguous array."""
        self._check(full, self.dim, "full")
        if len(self.shared) == 1:
            start, stop = self.shared[0]
            return np.ascontiguousarray(full[..., start:stop])
        return np.concatenate([full[..., a:b] for a, b in self.shared], axis=-1)

    def scatter(self, full: Vector, shared: Vector) -> Vector:
        """``full`` with its shared coordinates replaced by ``shared``: a new array.

        The personal coordinates are ``full``'s, value for value.
        """
        self._check(full, self.dim, "full")
        self._check(shared, self.shared_dim, "shared")
        out = np.array(full, dtype=np.result_type(full, shared), copy=True)
        offset = 0
        for a, b in self.shared:
            out[..., a:b] = shared[..., offset : offset + b - a]
            offset += b - a
        return out

    @staticmethod
    def _check(vector: Vector, size: int, what: str) -> None:
        if vector.shape[-1:] != (size,):
            raise LocalProtocolError(
                f"the {what} vector has shape {tuple(vector.shape)}, its last axis must be {size}"
            )


def personal_blocks(
    names: Iterable[str], sizes: Iterable[int], personal: Iterable[str]
) -> list[tuple[int, bool]]:
    """Blocks ``(size, personal)`` of named parameters; ``personal`` names parameters or modules.

    A name in ``personal`` matches a parameter of that exact name or every parameter
    under that module (``"3"`` matches ``"3.weight"`` and ``"3.bias"``). A name that
    matches nothing is our misuse (``LocalProtocolError`` naming it and the
    parameters there are).
    """
    names, sizes = list(names), list(sizes)
    flags = matching(names, personal, "personal layers")
    return list(zip(sizes, flags, strict=True))


def matching(names: Sequence[str], wanted: Iterable[str], what: str) -> list[bool]:
    """For each parameter name, whether a name in ``wanted`` (parameter or module) covers it.

    A wanted name that matches nothing is our misuse: ``LocalProtocolError`` says
    ``what`` it was (if anything) and names the parameters there are.
    """
    wanted = list(wanted)
    unknown = [w for w in wanted if not any(_matches(name, w) for name in names)]
    if unknown:
        prefix = f"{what} " if what else ""
        raise LocalProtocolError(
            f"{prefix}{unknown} name no parameter of the model (it has {', '.join(names)})"
        )
    return [any(_matches(name, w) for w in wanted) for name in names]


def _matches(parameter: str, wanted: str) -> bool:
    return parameter == wanted or parameter.startswith(wanted + ".")
