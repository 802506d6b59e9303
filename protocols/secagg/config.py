"""The configuration of a secure-aggregation round, and the checks that refuse unsafe ones.

Everything a party needs to agree on with the others lives in two frozen
values: :class:`SecAggConfig` (from the approved training plan) and
:class:`RoundContext` (federation, round, receiver and the receiver's
neighbourhood, all public). Both validate themselves, so a round can only be
built from a configuration that is safe to run:

- a receiver with fewer than two neighbours is refused, naming the node and its
  degree: the "sum" of one neighbour is that neighbour's model;
- a fixed-point configuration whose sum could wrap around the modulus for the
  neighbourhood's size is refused, and the message gives the bound;
- the Shamir threshold ``t`` defaults to a majority of the neighbourhood, at
  least 2, and must satisfy ``2 <= t <= d``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocols.errors import LocalProtocolError
from protocols.secagg.graph import connectivity, mask_partners

MAX_NEIGHBOURS = 1024
MAX_ID_CHARS = 256
MAX_FEDERATION_ID_BYTES = 64


@dataclass(frozen=True)
class SecAggConfig:
    """Fixed-point and masking settings, identical on every party of a round.

    ``scale``: codes per unit (the fixed-point step is ``1 / scale``).
    ``clip``: each contribution ``W_ij * x_j`` is clipped to ``[-clip, clip]``.
    ``modulus_bits``: 32 or 64; codes and masks live in ``Z / 2**modulus_bits``.
    ``threshold``: Shamir threshold ``t``; ``None`` means a majority, at least 2.
    ``sparse_k``: mask with only ``k`` partners (SecAgg+); ``None`` masks with all.
    ``graph_seed``: public seed of the sparse partner graph (e.g. the plan hash).
    """

    scale: float = 2.0**16
    clip: float = 32.0
    modulus_bits: int = 32
    threshold: int | None = None
    sparse_k: int | None = None
    graph_seed: bytes = field(default=b"")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise LocalProtocolError(f"scale must be a positive finite number, got {self.scale!r}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise LocalProtocolError(f"clip must be a positive finite number, got {self.clip!r}")
        if self.modulus_bits not in (32, 64):
            raise LocalProtocolError(f"modulus_bits must be 32 or 64, got {self.modulus_bits!r}")
        if self.threshold is not None and (type(self.threshold) is not int or self.threshold < 2):
            raise LocalProtocolError(f"threshold must be an integer >= 2, got {self.threshold!r}")
        if self.sparse_k is not None and (type(self.sparse_k) is not int or self.sparse_k < 2):
            raise LocalProtocolError(
                f"sparse_k must be an integer >= 2 (one partner cannot hide anyone), "
                f"got {self.sparse_k!r}"
            )
        if not isinstance(self.graph_seed, bytes) or len(self.graph_seed) > 64:
            raise LocalProtocolError("graph_seed must be at most 64 bytes")

    @property
    def max_code(self) -> int:
        """The largest absolute code one clipped contribution can take."""
        return math.floor(self.clip * self.scale + 0.5)

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger[Any]]:
        """Little-endian unsigned dtype of codes and masks (the wire format)."""
        return np.dtype("<u4") if self.modulus_bits == 32 else np.dtype("<u8")

    @property
    def step(self) -> float:
        """The fixed-point step: one code is worth this much."""
        return 1.0 / self.scale


def threshold_for(cfg: SecAggConfig, degree: int) -> int:
    """The Shamir threshold ``t`` for a neighbourhood of ``degree`` nodes."""
    return cfg.threshold if cfg.threshold is not None else max(2, degree // 2 + 1)


def check_config(cfg: SecAggConfig, neighbourhood_size: int, *, node: str = "?") -> int:
    """Refuse a neighbourhood this configuration cannot aggregate safely; return ``t``.

    Raises :class:`LocalProtocolError` naming ``node`` when the degree is below 2,
    when the threshold does not fit, or when ``d * max_code`` could overflow the
    centred range ``[-2**(bits-1), 2**(bits-1) - 1]`` (the message gives the bound:
    the largest neighbourhood this scale and clip allow, and the largest clip for
    this neighbourhood).
    """
    d = neighbourhood_size
    if d < 2:
        raise LocalProtocolError(
            f"secure aggregation refused for node {node!r}: degree {d}; "
            f"with fewer than 2 neighbours the aggregate is a single neighbour's model, "
            f"so nothing can be hidden"
        )
    if d > MAX_NEIGHBOURS:
        raise LocalProtocolError(
            f"node {node!r} has degree {d}, above the supported {MAX_NEIGHBOURS}"
        )
    t = threshold_for(cfg, d)
    if not 2 <= t <= d:
        raise LocalProtocolError(
            f"threshold t={t} does not fit node {node!r} with degree {d}: need 2 <= t <= {d}"
        )
    limit = 2 ** (cfg.modulus_bits - 1) - 1
    if d * cfg.max_code > limit:
        max_d = limit // cfg.max_code
        max_clip = (limit // d - 0.5) / cfg.scale
        raise LocalProtocolError(
            f"fixed-point sum can overflow at node {node!r}: {d} neighbours x clip {cfg.clip:g} "
            f"x scale {cfg.scale:g} = {d * cfg.max_code} codes > 2^{cfg.modulus_bits - 1} - 1 "
            f"= {limit}; this scale and clip allow at most {max_d} neighbours, "
            f"or clip <= {_round_down(max_clip)} for {d} neighbours"
        )
    return t


def _round_down(value: float, digits: int = 6) -> str:
    """``value`` to ``digits`` significant digits, never above it (a bound must stay a bound)."""
    if value <= 0:
        return f"{value:.{digits}g}"
    unit = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return f"{math.floor(value / unit) * unit:.{digits}g}"


def dropout_tolerance(cfg: SecAggConfig, degrees: Mapping[str, int]) -> dict[str, int]:
    """Per node, how many of its neighbours may drop out with its round still completing.

    Dense masking survives ``d - t`` dropouts. With sparse masking the partner
    graph must also stay connected among the survivors (else the receiver would
    learn partial sums, so the round is refused); the circulant graph with ``k``
    partners is ``k``-connected, so at most ``k - 1`` dropouts are guaranteed.
    Raises like :func:`check_config` for a node that secure mode refuses.
    """
    report: dict[str, int] = {}
    for node, d in degrees.items():
        t = check_config(cfg, d, node=node)
        tolerance = d - t
        if cfg.sparse_k is not None:
            tolerance = min(tolerance, connectivity(d, cfg.sparse_k) - 1)
        report[node] = tolerance
    return report


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise LocalProtocolError(
            f"{what} must be a non-empty string of at most {MAX_ID_CHARS} chars"
        )
    return value


@dataclass(frozen=True)
class RoundContext:
    """The public facts of one secure round at one receiver, shared by all its parties.

    ``neighbourhood`` is the receiver's neighbour set N(i) (sorted on
    construction); a node's Shamir index is its 1-based position in it.
    Construction runs :func:`check_config` for the receiver.
    """

    federation_id: bytes
    round: int
    receiver: str
    neighbourhood: tuple[str, ...]
    cfg: SecAggConfig

    def __post_init__(self) -> None:
        if not isinstance(self.federation_id, bytes) or not (
            0 < len(self.federation_id) <= MAX_FEDERATION_ID_BYTES
        ):
            raise LocalProtocolError(f"federation_id must be 1 to {MAX_FEDERATION_ID_BYTES} bytes")
        if type(self.round) is not int or not 0 <= self.round < 2**63:
            raise LocalProtocolError(f"round must be an integer in [0, 2^63), got {self.round!r}")
        _check_id(self.receiver, "receiver")
        ids = tuple(sorted(_check_id(n, "neighbour id") for n in self.neighbourhood))
        if len(set(ids)) != len(ids):
            raise LocalProtocolError("neighbourhood lists a node twice")
        if self.receiver in ids:
            raise LocalProtocolError(f"receiver {self.receiver!r} cannot be its own neighbour")
        check_config(self.cfg, len(ids), node=self.receiver)
        object.__setattr__(self, "neighbourhood", ids)

    @property
    def degree(self) -> int:
        return len(self.neighbourhood)

    @property
    def threshold(self) -> int:
        return threshold_for(self.cfg, self.degree)

    def index(self, node: str) -> int:
        """The 1-based Shamir share index of ``node`` (its place in N(i))."""
        try:
            return self.neighbourhood.index(node) + 1
        except ValueError:
            raise LocalProtocolError(f"{node!r} is not a neighbour of {self.receiver!r}") from None

    def partners(self, roster: tuple[str, ...]) -> dict[str, frozenset[str]]:
        """The public mask-partner graph over ``roster`` (see :mod:`protocols.secagg.graph`)."""
        return mask_partners(
            roster,
            sparse_k=self.cfg.sparse_k,
            graph_seed=self.cfg.graph_seed,
            federation_id=self.federation_id,
            round=self.round,
            receiver=self.receiver,
        )
