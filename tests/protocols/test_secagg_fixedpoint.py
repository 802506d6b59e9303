"""Fixed-point codes: exact sums, the step bound, clipping, both rounding paths, refusals."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocols.errors import LocalProtocolError
from protocols.secagg import (
    SecAggConfig,
    check_config,
    decode_fixed,
    encode_and_mask,
    encode_fixed,
    error_bound,
)
from protocols.secagg.prg import CHUNK_BYTES

CFG = SecAggConfig()
finite32 = st.floats(-40, 40, width=32, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(np.float32, st.integers(1, 300), elements=finite32),
    st.floats(0.01, 1.0),
)
def test_round_trip_is_within_the_step_and_clipped(x: np.ndarray, weight: float) -> None:
    decoded = decode_fixed(encode_fixed(x, weight, CFG), CFG, np.float64)
    target = np.clip(weight * x.astype(np.float64), -CFG.clip, CFG.clip)
    assert np.max(np.abs(decoded - target)) <= error_bound(CFG, 1)
    assert error_bound(CFG, 1) <= CFG.step


@settings(max_examples=25, deadline=None)
@given(st.lists(hnp.arrays(np.float32, 50, elements=finite32), min_size=2, max_size=8))
def test_codes_add_modulo_and_decode_to_the_sum(xs: list[np.ndarray]) -> None:
    check_config(CFG, len(xs))
    total = np.zeros(50, dtype=CFG.dtype)
    for x in xs:
        total += encode_fixed(x, 0.5, CFG)
    exact = sum(np.clip(0.5 * x.astype(np.float64), -CFG.clip, CFG.clip) for x in xs)
    assert np.max(np.abs(decode_fixed(total, CFG, np.float64) - exact)) <= error_bound(CFG, len(xs))


def test_extreme_sums_at_the_bound_do_not_wrap() -> None:
    cfg = SecAggConfig(scale=2.0**16, clip=2.0**12)  # max code 2^28: 7 neighbours fit 2^31 - 1
    check_config(cfg, 7)
    for sign in (1.0, -1.0):
        x = np.full(4, sign * 1e9, dtype=np.float32)
        total = sum((encode_fixed(x, 1.0, cfg) for _ in range(7)), np.zeros(4, cfg.dtype))
        assert np.all(decode_fixed(total, cfg, np.float64) == sign * 7 * cfg.clip)


def test_a_configuration_that_could_overflow_is_refused_with_the_bound() -> None:
    cfg = SecAggConfig(scale=2.0**16, clip=2.0**12)
    with pytest.raises(LocalProtocolError) as info:
        check_config(cfg, 8, node="hub")
    message = str(info.value)
    assert "'hub'" in message and "2^31 - 1 = 2147483647" in message
    assert "at most 7 neighbours" in message and "clip <= " in message


def reference_codes(x: np.ndarray, weight: float, cfg: SecAggConfig, work: type) -> np.ndarray:
    factor, limit = work(weight * cfg.scale), work(cfg.clip * cfg.scale)
    scaled = np.clip(x.astype(work) * factor, -limit, limit)
    signed = np.rint(scaled).astype(np.int32 if cfg.modulus_bits == 32 else np.int64)
    return signed.view(cfg.dtype)  # two's complement


def test_fast_path_rounds_exactly_like_rint_half_to_even() -> None:
    halves = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.0, -0.0], dtype=np.float32)
    assert list(decode_fixed(encode_fixed(halves, 1.0 / CFG.scale, CFG), CFG) * CFG.scale) == [
        0,
        2,
        2,
        -0,
        -2,
        -2,
        0,
        0,
    ]
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(CHUNK_BYTES // 4 + 99) * 20).astype(np.float32)
    assert np.array_equal(encode_fixed(x, 0.3, CFG), reference_codes(x, 0.3, CFG, np.float32))


@pytest.mark.parametrize(
    "cfg",
    [SecAggConfig(scale=2.0**24, clip=64.0), SecAggConfig(modulus_bits=64, scale=2.0**30)],
)
def test_general_path_matches_rint_in_float64(cfg: SecAggConfig) -> None:
    x = (np.random.default_rng(2).standard_normal(5000) * 30).astype(np.float32)
    assert np.array_equal(encode_fixed(x, 0.7, cfg), reference_codes(x, 0.7, cfg, np.float64))
    assert np.array_equal(
        encode_fixed(x.astype(np.float64), 0.7, cfg), reference_codes(x, 0.7, cfg, np.float64)
    )


def test_infinities_clip_and_nan_is_refused() -> None:
    x = np.array([np.inf, -np.inf, 1.0], dtype=np.float32)
    assert list(decode_fixed(encode_fixed(x, 1.0, CFG), CFG)) == [CFG.clip, -CFG.clip, 1.0]
    with pytest.raises(LocalProtocolError, match="NaN"):
        encode_fixed(np.array([1.0, np.nan], dtype=np.float32), 1.0, CFG)
    with pytest.raises(LocalProtocolError, match="finite"):
        encode_fixed(np.ones(3, dtype=np.float32), float("inf"), CFG)


def test_inputs_of_the_wrong_shape_or_type_are_refused() -> None:
    with pytest.raises(LocalProtocolError, match="1-D"):
        encode_fixed(np.ones((2, 2), dtype=np.float32), 1.0, CFG)
    with pytest.raises(LocalProtocolError, match="float32 or float64"):
        encode_fixed(np.ones(3, dtype=np.int32), 1.0, CFG)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="out must hold"):
        encode_fixed(np.ones(3, dtype=np.float32), 1.0, CFG, out=np.zeros(4, dtype="<u4"))


def test_encode_and_mask_is_encode_plus_the_streams() -> None:
    x = np.linspace(-3, 3, 1001, dtype=np.float32)
    seed = hashlib.sha256(b"m").digest()
    masked = encode_and_mask(x, 0.5, CFG, [(seed, +1)])
    from protocols.secagg.prg import add_prg_stream

    add_prg_stream(masked, seed, -1)
    assert np.array_equal(masked, encode_fixed(x, 0.5, CFG))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": 0.0}, "scale"),
        ({"clip": float("nan")}, "clip"),
        ({"modulus_bits": 16}, "modulus_bits"),
        ({"threshold": 1}, "threshold"),
        ({"sparse_k": 1}, "sparse_k"),
    ],
)
def test_bad_configurations_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        SecAggConfig(**kwargs)  # type: ignore[arg-type]
