"""Compressors: unbiased quantization, exact top-k, bit packing, and add_payload == decompress."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.compression import (
    NoCompression,
    QuantizeCompressor,
    TopKCompressor,
    _pack,
    _unpack,
    add_payload,
    decompress,
    make_compressor,
)
from protocols.errors import LocalProtocolError
from protocols.wire import Encoding, GossipMessage, Payload, decode, encode

FAST = settings(max_examples=40, deadline=None)

seeds = st.integers(0, 2**32 - 1)


def vectors(min_size: int = 0, max_size: int = 64) -> st.SearchStrategy[np.ndarray]:
    """Float32 vectors; magnitudes below 1e-30 become zero (tiny norms have their own test)."""
    floats = st.floats(-1e3, 1e3, allow_nan=False, width=32).map(
        lambda x: x if abs(x) > 1e-30 else 0
    )
    return st.lists(floats, min_size=min_size, max_size=max_size).map(
        lambda xs: np.array(xs, dtype=np.float32)
    )


def stored_levels(payload: Any) -> np.ndarray:
    return _unpack(payload.values, payload.bits, payload.length)


# --- quantization ------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantization_is_unbiased(bits: int) -> None:
    v = np.random.default_rng(7).standard_normal(16).astype(np.float32)
    v[3] = 0.0
    compressor = QuantizeCompressor(bits)
    rng = np.random.default_rng(11)
    draws = 3000
    mean = np.zeros(16)
    for _ in range(draws):
        mean += decompress(compressor.compress(v, rng))
    mean /= draws
    # each entry is a two-point variable spaced norm / s apart: std <= norm / (2 s)
    step = np.linalg.norm(v) / compressor.levels
    tolerance = 5 * step / (2 * np.sqrt(draws)) + 1e-6
    assert np.all(np.abs(mean - v) <= tolerance)
    assert mean[3] == 0.0


@FAST
@given(vectors(), st.integers(2, 8), seeds)
def test_quantized_levels_stay_in_range_and_keep_signs(v: np.ndarray, bits: int, seed: int) -> None:
    compressor = QuantizeCompressor(bits)
    payload = compressor.compress(v, np.random.default_rng(seed))
    s = compressor.levels
    assert payload.encoding is Encoding.QUANTIZED and payload.bits == bits
    assert payload.length == v.shape[0]
    assert payload.values.dtype == np.uint8
    assert payload.values.size == (v.shape[0] * bits + 7) // 8
    levels = stored_levels(payload)
    assert np.all((levels >= 0) & (levels <= 2 * s))
    assert payload.norm == pytest.approx(float(np.linalg.norm(v.astype(np.float64))))
    out = decompress(payload)
    assert out.dtype == np.float32
    assert np.all(np.abs(out) <= payload.norm * (1 + 1e-6))
    assert np.all(out * v >= 0)  # never flips a sign
    assert np.all(out[v == 0] == 0)
    # stochastic rounding picks one of the two neighbouring levels
    assert np.all(np.abs(out - v) <= payload.norm / s * (1 + 1e-5) + 1e-6)


@FAST
@given(vectors(min_size=1), st.integers(2, 8), seeds)
def test_quantization_is_reproducible_for_a_seed(v: np.ndarray, bits: int, seed: int) -> None:
    a = QuantizeCompressor(bits).compress(v, np.random.default_rng(seed))
    b = QuantizeCompressor(bits).compress(v, np.random.default_rng(seed))
    assert np.array_equal(a.values, b.values) and a.norm == b.norm


def test_quantizing_a_vector_on_the_grid_is_exact() -> None:
    v = np.array([3.0, -4.0, 0.0], dtype=np.float32)  # norm 5, entries are multiples of 5 / s
    payload = QuantizeCompressor(2).compress(np.array([0.0, -5.0, 0.0], np.float32), rng())
    assert np.array_equal(decompress(payload), [0.0, -5.0, 0.0])
    assert np.allclose(decompress(QuantizeCompressor(8).compress(v, rng())), v, atol=5 / 127)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("tiny", [1e-40, 1e-38, 1e-37])
def test_vectors_with_a_tiny_norm_quantize_without_overflow(bits: int, tiny: float) -> None:
    """s / norm overflows float32 once norm < s / 3.4e38; a lone entry must still come back."""
    v = np.array([tiny], dtype=np.float32)
    payload = QuantizeCompressor(bits).compress(v, rng())
    assert stored_levels(payload).tolist() == [2 * QuantizeCompressor(bits).levels]
    assert decompress(payload)[0] == pytest.approx(float(v[0]), rel=1e-2)


# --- top-k ----------------------------------------------------------------------------


@FAST
@given(vectors(min_size=1), st.floats(0.01, 1.0), seeds)
def test_topk_keeps_exactly_the_k_largest(v: np.ndarray, fraction: float, seed: int) -> None:
    payload = TopKCompressor(fraction).compress(v, np.random.default_rng(seed))
    n = v.shape[0]
    k = max(1, min(n, round(fraction * n)))
    assert payload.encoding is Encoding.TOPK and payload.length == n
    assert payload.indices is not None
    idx = payload.indices.astype(np.intp)
    assert idx.size == k
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < n
    assert np.array_equal(payload.values, v[idx])
    dropped = np.setdiff1d(np.arange(n), idx)
    if dropped.size:
        assert np.abs(v[idx]).min() >= np.abs(v[dropped]).max()
    out = decompress(payload)
    assert np.array_equal(out[idx], v[idx]) and np.all(out[dropped] == 0)


def test_topk_with_distinct_magnitudes_picks_them() -> None:
    v = np.array([0.1, -5.0, 2.0, 0.0, 3.0, -0.5], dtype=np.float32)
    payload = TopKCompressor(0.5).compress(v, rng())
    assert payload.indices is not None
    assert payload.indices.tolist() == [1, 2, 4]
    assert payload.values.tolist() == [-5.0, 2.0, 3.0]


# --- bit packing ---------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(2, 9))
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_bit_packing_round_trips(bits: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=70))
    unsigned = np.array(values, dtype=np.int16)
    packed = _pack(unsigned, bits)
    assert packed.dtype == np.uint8
    assert packed.size == (len(values) * bits + 7) // 8
    assert np.array_equal(_unpack(packed, bits, len(values)), unsigned)


@pytest.mark.parametrize("bits", range(2, 9))
def test_every_level_survives_the_wire(bits: int) -> None:
    s = (1 << (bits - 1)) - 1
    levels = np.arange(-s, s + 1, dtype=np.int16)
    sent = Payload(Encoding.QUANTIZED, levels.size, _pack(levels + s, bits), norm=2.0, bits=bits)
    back = decode(encode(GossipMessage("a", 0, sent))).payload
    assert np.array_equal(stored_levels(back), levels + s)
    assert np.allclose(decompress(back), 2.0 * levels / s, rtol=1e-6)


# --- zero and empty vectors ------------------------------------------------------------


@pytest.mark.parametrize(
    "compressor",
    [NoCompression(), QuantizeCompressor(2), QuantizeCompressor(8), TopKCompressor(0.3)],
)
@pytest.mark.parametrize("n", [0, 1, 17])
def test_zero_vector_compresses_to_zero(compressor: Any, n: int) -> None:
    payload = compressor.compress(np.zeros(n, np.float32), rng())
    assert payload.length == n
    out = decompress(decode(encode(GossipMessage("a", 0, payload))).payload)
    assert out.shape == (n,) and np.all(out == 0)


# --- exactness and add_payload ------------------------------------------------------------


@FAST
@given(vectors())
def test_no_compression_is_exact_and_copies(v: np.ndarray) -> None:
    compressor = NoCompression()
    payload = compressor.compress(v, rng())
    assert compressor.exact
    assert np.array_equal(decompress(payload), v)
    assert not np.shares_memory(payload.values, v)
    assert not QuantizeCompressor().exact and not TopKCompressor().exact


@FAST
@given(vectors(min_size=1), st.sampled_from(["none", "quantize", "topk"]), seeds, st.floats(-3, 3))
def test_add_payload_equals_adding_the_decompressed_vector(
    v: np.ndarray, name: str, seed: int, scale: float
) -> None:
    payload = make_compressor(name, bits=5, fraction=0.4).compress(v, np.random.default_rng(seed))
    base = np.random.default_rng(seed).standard_normal(v.shape).astype(np.float32)
    out = base.copy()
    add_payload(out, payload, scale)
    expected = base + np.float32(scale) * decompress(payload)
    assert np.allclose(out, expected, rtol=1e-5, atol=1e-3)


def test_add_payload_refuses_a_length_mismatch() -> None:
    payload = NoCompression().compress(np.ones(3, np.float32), rng())
    with pytest.raises(LocalProtocolError):
        add_payload(np.zeros(4, np.float32), payload)


def test_make_compressor_and_bad_settings() -> None:
    assert isinstance(make_compressor("none"), NoCompression)
    assert make_compressor("quantize", bits=3) == QuantizeCompressor(3)
    assert make_compressor("topk", fraction=0.5) == TopKCompressor(0.5)
    with pytest.raises(LocalProtocolError, match="zip"):
        make_compressor("zip")
    for bits in (0, 1, 9):
        with pytest.raises(LocalProtocolError):
            QuantizeCompressor(bits)
    for fraction in (0.0, -0.1, 1.5):
        with pytest.raises(LocalProtocolError):
            TopKCompressor(fraction)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
