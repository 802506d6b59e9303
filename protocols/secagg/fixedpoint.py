"""Fixed-point codes of weighted contributions, and the fused quantize-and-mask loop.

A neighbour ``j`` encodes its contribution ``W_ij * x_j`` as
``round(clip(W_ij * x_j, -clip, clip) * scale)`` in two's complement modulo
``2**bits``. Codes add modulo ``2**bits``; :func:`check_config` guarantees the
sum of a neighbourhood's codes stays in the centred range, so decoding the
sum's two's complement value is exact. Each term is within half a step plus
the product's rounding of ``W_ij * x_j`` (3/4 of a step with the defaults;
:func:`error_bound` gives the exact figure for ``n`` terms), so the aggregate
equals plain weighted mixing within the fixed-point step per neighbour.

Two paths, both rounding half to even (tested against ``np.rint``):
- fast: float32 input, 32-bit modulus and ``clip * scale < 2**22``; the
  product is taken in float32 and rounded by adding ``1.5 * 2**23`` and
  reading the integer out of the mantissa bits, which saves a pass;
- general: the product in float64, ``round`` and a cast.
The encoding is written once, in :func:`fixed_codes` and :func:`decode_sum`,
over arrays of the array API standard: the sender's core calls them on one
numpy chunk, and the vectorized engine, which simulates secure mode without
masks (they cancel exactly), calls them on torch rows, one per (receiver,
sender) pair, and gets bit-identical aggregates.

NaN input is refused (``LocalProtocolError``): a diverged model must not be
silently clipped into its neighbours' aggregate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from array_api_compat import array_namespace, device, size

from protocols.errors import LocalProtocolError
from protocols.secagg.config import SecAggConfig
from protocols.secagg.prg import Codes, MaskAdder, Stream, check_codes, chunk_words_for

Floats = npt.NDArray[np.floating[Any]]

_MAGIC_F32 = 1.5 * 2**23
_MAGIC_I32 = 0x4B400000
_FAST_LIMIT = 2**22


def is_fast(cfg: SecAggConfig, float32_input: bool) -> bool:
    """Whether codes of float32 input take the float32 path (see the module's notes)."""
    return cfg.modulus_bits == 32 and float32_input and cfg.max_code < _FAST_LIMIT


def fixed_codes(x: Any, factor: Any, cfg: SecAggConfig) -> Any:
    """Signed codes round(clip(factor * x, -clip * scale, clip * scale)), half to even.

    ``factor`` is ``weight * cfg.scale``: a scalar, or an array that broadcasts
    against ``x`` (a column of one factor per row); it is rounded to the working
    precision before the product. The codes are int32 on the fast path, else
    int32 or int64 as the modulus; reduced modulo ``2**bits`` they are the words
    a neighbour sends (before masks). NaN input raises ``LocalProtocolError``.
    """
    xp = array_namespace(x)
    fast = is_fast(cfg, x.dtype == xp.float32)
    work = xp.float32 if fast else xp.float64
    signed = xp.int32 if cfg.modulus_bits == 32 else xp.int64
    if size(x) == 0:
        return xp.zeros(x.shape, dtype=signed, device=device(x))
    tmp = xp.astype(x, work, copy=False) * xp.asarray(factor, dtype=work, device=device(x))
    # Two reductions cost less than a clip pass, find NaN (it propagates through
    # both) and tell whether clipping is needed at all (rarely, for real models).
    low, high = float(xp.min(tmp)), float(xp.max(tmp))
    if math.isnan(low) or math.isnan(high):
        raise LocalProtocolError("the input contains NaN; refusing to encode it")
    limit = cfg.clip * cfg.scale
    if low < -limit or high > limit:
        tmp = xp.clip(tmp, -limit, limit)
    if fast:
        tmp += _MAGIC_F32
        codes = tmp.view(xp.int32)
        codes -= _MAGIC_I32
        return codes
    return xp.astype(xp.round(tmp), signed)


def decode_sum(total: Any, cfg: SecAggConfig, dtype: Any = None) -> Any:
    """Floats of a sum of codes modulo ``2**bits``, read as centred two's complement.

    ``total`` is integer: the wrapped words (``cfg.dtype``), or a sum of signed
    codes in int64. The cast to the modulus's signed integer wraps (numpy and
    torch alike), which is the reduction modulo ``2**bits`` and the centred
    reading in one pass. ``dtype`` defaults to float32.
    """
    xp = array_namespace(total)
    signed = xp.astype(total, xp.int32 if cfg.modulus_bits == 32 else xp.int64, copy=False)
    out = xp.astype(signed, xp.float32 if dtype is None else dtype)
    out *= cfg.step
    return out


def _check_input(x: Floats) -> None:
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        raise LocalProtocolError("the input must be a float32 or float64 numpy array")
    if x.ndim != 1 or not x.flags.c_contiguous:
        raise LocalProtocolError("the input must be a contiguous 1-D array (flatten the model)")


def encode_and_mask(
    x: Floats,
    weight: float,
    cfg: SecAggConfig,
    streams: Sequence[Stream],
    out: Codes | None = None,
) -> Codes:
    """Codes of ``weight * x`` plus every mask stream, in one cache-friendly pass.

    ``out`` (optional) is a preallocated ``cfg.dtype`` array of ``len(x)`` words.
    """
    _check_input(x)
    if out is None:
        out = np.empty(len(x), dtype=cfg.dtype)
    check_codes(out)
    if out.dtype != cfg.dtype or len(out) != len(x):
        raise LocalProtocolError(f"out must hold {len(x)} words of {cfg.dtype}")
    if not math.isfinite(weight):
        raise LocalProtocolError(f"weight must be finite, got {weight!r}")
    signed = np.dtype("<i4") if cfg.modulus_bits == 32 else np.dtype("<i8")
    words = chunk_words_for(cfg.dtype, len(x))
    adder = MaskAdder(streams, cfg.dtype, words) if streams else None
    for start in range(0, len(x), words):
        chunk = out[start : start + words]
        chunk.view(signed)[...] = fixed_codes(x[start : start + words], weight * cfg.scale, cfg)
        if adder is not None:
            adder.add_next(chunk)
    return out


def encode_fixed(x: Floats, weight: float, cfg: SecAggConfig, out: Codes | None = None) -> Codes:
    """Codes of ``weight * x`` (no masks): what :func:`decode_fixed` of a sum undoes."""
    return encode_and_mask(x, weight, cfg, (), out)


def decode_fixed(codes: Codes, cfg: SecAggConfig, dtype: npt.DTypeLike = np.float32) -> Floats:
    """Floats of a (sum of) codes, reading them as centred two's complement values."""
    if not isinstance(codes, np.ndarray) or codes.dtype != cfg.dtype or codes.ndim != 1:
        raise LocalProtocolError(f"codes must be a 1-D {cfg.dtype} array")
    # The words read as signed integers of their width are already reduced and centred.
    signed = codes.view(np.dtype("<i4") if cfg.modulus_bits == 32 else np.dtype("<i8"))
    result: Floats = decode_sum(signed, cfg, np.dtype(dtype))
    return result


def error_bound(cfg: SecAggConfig, terms: int) -> float:
    """How far the exactly decoded sum of ``terms`` contributions may be from the plain sum.

    Per term: half a step from rounding, plus the relative error of the product
    ``weight * scale * x`` in the working precision (float32 on the fast path,
    float64 otherwise; 2 ulps to cover the rounded factor) at the largest code.
    Contributions that were clipped are excluded from this promise. Decoding
    into float32 adds its own rounding on top (relative ``2**-24``).
    """
    fast_possible = is_fast(cfg, True)
    relative = 2.0**-23 if fast_possible else 2.0**-52
    return terms * (0.5 + cfg.max_code * relative) * cfg.step
