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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from protocols.errors import LocalProtocolError
from protocols.wire import Encoding, Payload, dense

Vector = npt.NDArray[np.float32]


class Compressor(Protocol):
    """Maps a vector to a payload; ``exact`` says whether decompress(compress(v)) == v."""

    @property
    def exact(self) -> bool: ...

    def compress(self, vector: Vector, rng: np.random.Generator) -> Payload: ...


@dataclass(frozen=True)
class NoCompression:
    exact: bool = True

    def compress(self, vector: Vector, rng: np.random.Generator) -> Payload:
        return dense(np.array(vector, dtype=np.float32, copy=True))


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
        norm = float(np.linalg.norm(vector.astype(np.float64)))
        s = self.levels
        if norm == 0.0:
            levels = np.zeros(vector.shape[0], dtype=np.int16)
        else:
            # float64: s / norm overflows float32 for vectors of tiny norm.
            scaled = np.abs(vector).astype(np.float64) * (s / norm)
            floor = np.floor(scaled)
            up = rng.random(vector.shape[0]) < (scaled - floor)
            levels = (floor + up).astype(np.int16)
            np.minimum(levels, s, out=levels)
            levels *= np.sign(vector).astype(np.int16)
        packed = _pack(levels + s, self.bits)
        return Payload(Encoding.QUANTIZED, vector.shape[0], packed, norm=norm, bits=self.bits)


@dataclass(frozen=True)
class TopKCompressor:
    fraction: float = 0.01
    exact: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise LocalProtocolError(f"top-k fraction must be in (0, 1], got {self.fraction}")

    def compress(self, vector: Vector, rng: np.random.Generator) -> Payload:
        n = vector.shape[0]
        k = max(1, min(n, round(self.fraction * n)))
        if k == n:
            idx = np.arange(n, dtype=np.uint32)
        else:
            idx = np.sort(np.argpartition(np.abs(vector), n - k)[n - k :]).astype(np.uint32)
        values = vector[idx].astype(np.float32)
        return Payload(Encoding.TOPK, n, values, indices=idx)


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

    Unbiased k-bit quantization has variance up to tau = 1 + min(d / s^2, sqrt(d) / s)
    times the vector's norm; Koloskova et al. (2019) use Q(x) / tau, which satisfies
    E||Q(x)/tau - x||^2 <= (1 - 1/tau) ||x||^2. Other encodings are used as they are.
    """
    if payload.encoding is not Encoding.QUANTIZED:
        return 1.0
    s = (1 << (payload.bits - 1)) - 1
    d = payload.length
    return 1.0 / (1.0 + min(d / s**2, math.sqrt(d) / s))


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
    levels = _unpack(payload.values, payload.bits, payload.length).astype(np.float32) - s
    return (levels.astype(np.float64) * (payload.norm / s)).astype(np.float32)


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
