"""Compressors for CHOCO-SGD: none, k-bit stochastic quantization, top-k.

Each compressor maps a float vector to a wire ``Payload`` and back. Stochastic
rounding draws from a ``numpy.random.Generator`` the caller passes in, so runs
are reproducible for a seed and no global generator is touched.

- ``QuantizeCompressor``: QSGD-style (Alistarh et al. 2017) unbiased k-bit
  quantization: entry v_i becomes ||v|| * sign(v_i) * l_i / s with
  s = 2^(bits-1) - 1 levels and l_i the stochastic rounding of s|v_i|/||v||;
  the signed level is stored with an offset in ``bits`` bits, bit-packed.
  CHOCO-SGD scales it by ``contraction_scale`` (1/tau) where it is applied.
- ``TopKCompressor``: the ``fraction`` of entries largest in magnitude, as
  (index, value) pairs; biased, which CHOCO's error feedback absorbs.

The maths of each compressor is written once, over the last axis of an array
of the array API standard (numpy or torch, on any device): ``quantize_levels``,
``dequantize``, ``topk_indices`` and ``Compressor.approximate``, the dense
vector a copy moves by under error feedback. A round core calls them on one
numpy vector (and packs the result for the wire); the vectorized engine calls
them on a stack of torch rows, one row per node. Random draws are an argument
(``draw(shape)``): the cores draw from a numpy ``Generator`` seeded per round,
the engine from a torch generator, so the two streams differ but the maths
applied to them is the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from array_api_compat import array_namespace, device, is_torch_array

from protocols.errors import LocalProtocolError
from protocols.wire import Encoding, Payload, dense

Vector = npt.NDArray[np.float32]
Array = Any
"""An array of the array API standard: a numpy array or a torch tensor, vector or rows."""
Draw = Callable[[tuple[int, ...]], Array]
"""Uniform draws in [0, 1) of a given shape, on the array's device."""


def quantize_levels(v: Array, levels: int, draw: Draw) -> tuple[Array, Array]:
    """QSGD's signed levels of each row of ``v`` and the rows' norms, both float64.

    Entry v_i becomes sign(v_i) * l_i with l_i the stochastic rounding of
    s |v_i| / ||v||, capped at s = ``levels``; ``draw`` gives the uniforms. The
    norms keep a trailing axis of one. Computed in float64: s / ||v|| overflows
    float32 for vectors of tiny norm. A row of norm zero has all levels zero.
    """
    xp = array_namespace(v)
    scaled = xp.abs(xp.astype(v, xp.float64))
    norm = xp.linalg.vector_norm(scaled, axis=-1, keepdims=True)
    positive = norm > 0
    scaled *= xp.where(positive, levels / xp.where(positive, norm, 1.0), 0.0)
    floor = xp.floor(scaled)
    scaled -= floor  # now the fractional part: the probability of rounding up
    floor += xp.astype(draw(tuple(v.shape)) < scaled, xp.float64)
    floor = xp.minimum(floor, float(levels))
    floor *= xp.sign(v)
    return floor, norm


def dequantize(signed_levels: Array, norm: Array, levels: int) -> Array:
    """The float32 vector (or rows) that signed levels and norms stand for."""
    xp = array_namespace(signed_levels)
    wide = xp.astype(signed_levels, xp.float64) * (norm / levels)
    return xp.astype(wide, xp.float32)


def topk_count(length: int, fraction: float) -> int:
    """How many entries top-k keeps of ``length``: at least one, at most all."""
    return max(1, min(length, round(fraction * length)))


def topk_indices(v: Array, k: int) -> Array:
    """Indices of the ``k`` entries largest in magnitude of each row, ascending.

    The selection is the backend's own (``argpartition`` for numpy, ``topk`` for
    torch); the two pick the same set unless magnitudes tie at the k-th place.
    """
    xp = array_namespace(v)
    n = v.shape[-1]
    if k >= n:
        return xp.broadcast_to(xp.arange(n, device=device(v)), v.shape)
    chosen: Array
    if is_torch_array(v):
        chosen = v.abs().topk(k, dim=-1).indices
    else:
        chosen = np.argpartition(np.abs(v), n - k, axis=-1)[..., n - k :]
    return xp.sort(chosen, axis=-1)


def contraction(bits: int, length: int) -> float:
    """1 / tau, CHOCO-SGD's scaling of a ``bits``-bit quantized vector of ``length``.

    Unbiased k-bit quantization has variance up to tau = 1 + min(d / s^2, sqrt(d) / s)
    times the vector's norm; Koloskova et al. (2019) use Q(x) / tau, which satisfies
    E||Q(x)/tau - x||^2 <= (1 - 1/tau) ||x||^2.
    """
    s = (1 << (bits - 1)) - 1
    return 1.0 / (1.0 + min(length / s**2, math.sqrt(length) / s))


class Compressor(Protocol):
    """Maps a vector to a payload; ``exact`` says whether decompress(compress(v)) == v."""

    @property
    def exact(self) -> bool: ...

    def compress(self, vector: Vector, rng: np.random.Generator) -> Payload: ...

    def approximate(self, delta: Array, draw: Draw) -> Array:
        """What error feedback adds to a public copy for ``delta``, row by row.

        ``contraction_scale(p) * decompress(p)`` of the payload ``p`` that
        ``compress`` makes of each row, given the same uniforms; float32.
        """
        ...


@dataclass(frozen=True)
class NoCompression:
    exact: bool = True

    def compress(self, vector: Vector, rng: np.random.Generator) -> Payload:
        return dense(np.array(vector, dtype=np.float32, copy=True))

    def approximate(self, delta: Array, draw: Draw) -> Array:
        xp = array_namespace(delta)
        return xp.astype(delta, xp.float32)


@dataclass(frozen=True)
class QuantizeCompressor:
    bits: int = 4
    exact: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise LocalProtocolError(f"quantization bits must be in 2..8, got {self.bits}")

    @property
    def levels(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def compress(self, vector: Vector, rng: np.random.Generator) -> Payload:
        s = self.levels
        levels, norm = quantize_levels(vector, s, rng.random)
        packed = _pack(levels.astype(np.int16) + s, self.bits)
        length = vector.shape[0]
        return Payload(Encoding.QUANTIZED, length, packed, norm=float(norm[0]), bits=self.bits)

    def approximate(self, delta: Array, draw: Draw) -> Array:
        levels, norm = quantize_levels(delta, self.levels, draw)
        return dequantize(levels, norm, self.levels) * contraction(self.bits, delta.shape[-1])


@dataclass(frozen=True)
class TopKCompressor:
    fraction: float = 0.01
    exact: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise LocalProtocolError(f"top-k fraction must be in (0, 1], got {self.fraction}")

    def compress(self, vector: Vector, rng: np.random.Generator) -> Payload:
        n = vector.shape[0]
        idx = topk_indices(vector, topk_count(n, self.fraction)).astype(np.uint32)
        values = vector[idx].astype(np.float32)
        return Payload(Encoding.TOPK, n, values, indices=idx)

    def approximate(self, delta: Array, draw: Draw) -> Array:
        xp = array_namespace(delta)
        idx = topk_indices(delta, topk_count(delta.shape[-1], self.fraction))
        kept = xp.astype(xp.take_along_axis(delta, idx, axis=-1), xp.float32)
        out = xp.zeros(delta.shape, dtype=xp.float32, device=device(delta))
        if is_torch_array(out):
            return out.scatter_(-1, idx, kept)
        np.put_along_axis(out, idx, kept, axis=-1)
        return out


def make_compressor(name: str, *, bits: int = 4, fraction: float = 0.01) -> Compressor:
    """The compressor called ``name``: ``none``, ``quantize`` or ``topk``."""
    if name == "none":
        return NoCompression()
    if name == "quantize":
        return QuantizeCompressor(bits)
    if name == "topk":
        return TopKCompressor(fraction)
    raise LocalProtocolError(f"unknown compressor {name!r}: use none, quantize or topk")


def contraction_scale(payload: Payload) -> float:
    """The factor CHOCO-SGD applies to a decompressed payload so that Q is a contraction.

    ``contraction`` for quantized payloads; other encodings are used as they are.
    """
    if payload.encoding is not Encoding.QUANTIZED:
        return 1.0
    return contraction(payload.bits, payload.length)


def add_payload(out: npt.NDArray[Any], payload: Payload, scale: float = 1.0) -> None:
    """out += scale * decompress(payload), in place, without materialising dense top-k."""
    if payload.length != out.shape[0]:
        raise LocalProtocolError("payload length does not match the model")
    if payload.encoding is Encoding.DENSE:
        if scale == 1.0:
            out += payload.values
        else:
            out += scale * payload.values
    elif payload.encoding is Encoding.TOPK:
        assert payload.indices is not None
        np.add.at(out, payload.indices.astype(np.intp), scale * payload.values)
    else:
        out += scale * decompress(payload)


def decompress(payload: Payload) -> Vector:
    """The dense float32 vector a payload stands for."""
    if payload.encoding is Encoding.DENSE:
        return np.asarray(payload.values, dtype=np.float32)
    if payload.encoding is Encoding.TOPK:
        assert payload.indices is not None
        out = np.zeros(payload.length, dtype=np.float32)
        out[payload.indices] = payload.values
        return out
    s = (1 << (payload.bits - 1)) - 1
    levels = _unpack(payload.values, payload.bits, payload.length) - s
    result: Vector = dequantize(levels, np.float64(payload.norm), s)
    return result


def _pack(unsigned: npt.NDArray[Any], bits: int) -> npt.NDArray[np.uint8]:
    """Pack values in [0, 2^bits) into ``bits`` bits each, little-endian bit order."""
    if bits == 8:
        return unsigned.astype(np.uint8)
    shifts = np.arange(bits, dtype=np.uint16)
    bitplanes = ((unsigned.astype(np.uint16)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bitplanes.reshape(-1), bitorder="little")


def _unpack(packed: npt.NDArray[np.uint8], bits: int, length: int) -> npt.NDArray[np.int16]:
    if bits == 8:
        return packed[:length].astype(np.int16)
    flat = np.unpackbits(packed, count=length * bits, bitorder="little")
    planes = flat.reshape(length, bits).astype(np.int16)
    result: npt.NDArray[np.int16] = (planes << np.arange(bits, dtype=np.int16)).sum(
        axis=1, dtype=np.int16
    )
    return result
