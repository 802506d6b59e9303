"""The shared maths gives the same numbers on one vector and on a stack of rows,
and on numpy arrays and torch tensors: what the cores and the vectorized engine call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocols.compression import (
    QuantizeCompressor,
    TopKCompressor,
    add_payload,
    contraction_scale,
    dequantize,
    make_compressor,
    quantize_levels,
)
from protocols.errors import LocalProtocolError
from protocols.mixing import choco_mix, choco_step, combine, mix, push_sum_absorb, push_sum_model
from protocols.secagg import SecAggConfig
from protocols.secagg.fixedpoint import decode_fixed, decode_sum, encode_fixed, fixed_codes

ROWS, DIM = 5, 301


def rows(seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((ROWS, DIM)) * scale).astype(np.float32)


def uniforms(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((ROWS, DIM))


def draw_from(u: np.ndarray, like: object):
    """A ``draw`` that hands out the given uniforms (as numpy or torch, like ``like``)."""

    def draw(shape: tuple[int, ...]):
        assert shape == u.shape
        return torch.from_numpy(u) if isinstance(like, torch.Tensor) else u

    return draw


# -- compression ---------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_levels_rows_equal_vectors_and_torch_equals_numpy(bits: int) -> None:
    x, u = rows(), uniforms()
    s = (1 << (bits - 1)) - 1
    levels, norm = quantize_levels(x, s, draw_from(u, x))
    t_levels, t_norm = quantize_levels(torch.from_numpy(x), s, draw_from(u, torch.zeros(1)))
    # Levels are integers and agree exactly; norms are sums, whose order each backend
    # picks, so they agree to the last bits of float64.
    assert np.array_equal(t_levels.numpy(), levels)
    assert np.allclose(t_norm.numpy(), norm, rtol=1e-13, atol=0)
    for i in range(ROWS):
        one, n1 = quantize_levels(x[i], s, lambda shape, i=i: u[i])
        assert np.array_equal(one, levels[i])
        assert n1[0] == pytest.approx(norm[i, 0], rel=1e-13)
    assert np.abs(levels).max() <= s and np.array_equal(levels, np.round(levels))
    assert levels.any()
    assert np.allclose(
        dequantize(levels, norm, s), dequantize(t_levels, t_norm, s).numpy(), rtol=1e-6, atol=0
    )


def test_a_zero_row_quantizes_to_zero_next_to_others() -> None:
    x = rows()
    x[2] = 0
    levels, norm = quantize_levels(x, 7, lambda shape: uniforms())
    assert norm[2, 0] == 0 and not levels[2].any() and levels[1].any()


@pytest.mark.parametrize("name", ["none", "quantize", "topk"])
def test_approximate_is_what_the_core_adds_to_its_copy(name: str) -> None:
    """The engine's dense copy update equals the core's payload applied to a copy."""
    compressor = make_compressor(name, bits=3, fraction=0.1)
    x = rows(3)
    rng_seeds = [(7, r) for r in range(ROWS)]
    u = np.stack([np.random.default_rng(list(s)).random(DIM) for s in rng_seeds])
    dense = compressor.approximate(torch.from_numpy(x), draw_from(u, torch.zeros(1)))
    assert dense.dtype == torch.float32
    for i in range(ROWS):
        payload = compressor.compress(x[i], np.random.default_rng(list(rng_seeds[i])))
        copy = np.zeros(DIM, np.float32)
        add_payload(copy, payload, contraction_scale(payload))
        assert np.allclose(dense[i].numpy(), copy, rtol=1e-6, atol=0), (name, i)
        assert np.count_nonzero(dense[i].numpy()) == np.count_nonzero(copy)
    numpy_dense = compressor.approximate(x, draw_from(u, x))
    assert np.allclose(numpy_dense, dense.numpy(), rtol=1e-6, atol=0)


def test_topk_keeps_the_largest_entries_of_each_row() -> None:
    x = rows(4)
    kept = TopKCompressor(0.05).approximate(torch.from_numpy(x), lambda shape: None).numpy()
    k = round(0.05 * DIM)
    for i in range(ROWS):
        nonzero = np.flatnonzero(kept[i])
        assert len(nonzero) == k
        assert np.array_equal(nonzero, np.sort(np.argsort(-np.abs(x[i]))[:k]))
        assert np.array_equal(kept[i, nonzero], x[i, nonzero])


def test_quantized_copies_contract_towards_the_vector() -> None:
    """Error feedback: the copy after Q/tau is nearer the vector than the zero copy."""
    x = rows(5)
    q = QuantizeCompressor(4).approximate(x, lambda shape: uniforms(6))
    assert np.all(np.linalg.norm(x - q, axis=1) < np.linalg.norm(x, axis=1))


# -- mixing --------------------------------------------------------------------------


def test_combine_on_rows_equals_mix_of_each_vector() -> None:
    x = rows(7).astype(np.float64)
    w = np.random.default_rng(8).random((ROWS, ROWS))
    own = np.diag(w)[:, None].copy()
    arrived = w - np.diag(np.diag(w))
    arrived[0, 1:3] = 0  # two neighbours of row 0 missing
    total = own + arrived.sum(axis=1, keepdims=True)
    t = torch.from_numpy
    got = combine(t(x), t(own), t(arrived @ x), t(total))
    for i in range(ROWS):
        received = [(arrived[i, j], x[j]) for j in range(ROWS) if arrived[i, j] > 0]
        assert np.allclose(got[i].numpy(), mix(x[i], own[i, 0], received), rtol=0, atol=1e-12)


def test_choco_step_with_the_node_included_equals_the_cores_neighbour_sum() -> None:
    x, copies = rows(9).astype(np.float64), rows(10).astype(np.float64)
    w = np.random.default_rng(11).random((ROWS, ROWS))
    w /= w.sum(axis=1, keepdims=True)
    t = torch.from_numpy
    stacked = choco_step(t(x), t(copies), t(w @ copies), t(w.sum(axis=1, keepdims=True)), 0.3)
    for i in range(ROWS):
        neighbours = [(w[i, j], copies[j]) for j in range(ROWS) if j != i]
        core = choco_mix(x[i], copies[i], neighbours, 0.3)
        assert np.allclose(stacked[i].numpy(), core, rtol=0, atol=1e-12)


def test_push_sum_step_on_rows_equals_each_vector() -> None:
    x, model, before = rows(12), rows(13), rows(14)
    weights = np.random.default_rng(15).random((ROWS, 1)) + 0.5
    t = torch.from_numpy
    w = t(weights)
    stacked = push_sum_model(push_sum_absorb(t(x), w, t(model), t(before)), w)
    for i in range(ROWS):
        wi = weights[i, 0]
        one = push_sum_model(push_sum_absorb(x[i], wi, model[i], before[i]), wi)
        assert np.allclose(stacked[i].numpy(), one, rtol=1e-6, atol=0)
    assert not np.allclose(stacked.numpy(), x / weights)  # the displacement was absorbed
    # the de-biased model moves by exactly the training displacement, whatever w is
    assert np.allclose(stacked.numpy(), x / weights + (model - before), rtol=1e-9, atol=1e-12)


# -- secure sum ----------------------------------------------------------------------


@pytest.mark.parametrize("bits", [32, 64])
def test_fixed_codes_on_torch_rows_are_the_senders_words(bits: int) -> None:
    cfg = SecAggConfig(modulus_bits=bits)
    x = rows(16, scale=2.0)
    x[0, :3] = [cfg.clip * 10, -cfg.clip * 10, 0.5 / cfg.scale]  # clipped, and a half step
    weights = np.random.default_rng(17).random(ROWS)
    factor = torch.tensor(weights * cfg.scale)[:, None]
    codes = fixed_codes(torch.from_numpy(x), factor, cfg)
    for i in range(ROWS):
        words = encode_fixed(x[i], float(weights[i]), cfg)
        assert np.array_equal(codes[i].numpy().astype(cfg.dtype), words)
    total = codes.to(torch.int64).sum(dim=0)
    words_sum = sum((encode_fixed(x[i], float(weights[i]), cfg) for i in range(ROWS)), start=0)
    expected = decode_fixed(np.asarray(words_sum, dtype=cfg.dtype), cfg)
    assert np.array_equal(decode_sum(total, cfg, torch.float32).numpy(), expected)
    plain = np.clip(weights[:, None] * x, -cfg.clip, cfg.clip).sum(axis=0)
    assert np.max(np.abs(expected - plain)) <= ROWS * cfg.step


def test_fixed_codes_refuse_nan_on_either_backend() -> None:
    x = rows(18)
    x[1, 5] = np.nan
    with pytest.raises(LocalProtocolError):
        fixed_codes(torch.from_numpy(x), 3.0, SecAggConfig())
    with pytest.raises(LocalProtocolError):
        fixed_codes(x[1], 3.0, SecAggConfig())


def test_topk_of_everything_keeps_every_entry_on_either_backend() -> None:
    x = rows(19)
    everything = TopKCompressor(1.0)
    assert np.array_equal(everything.approximate(x, lambda shape: None), x)
    kept = everything.approximate(torch.from_numpy(x), lambda shape: None)
    assert np.array_equal(kept.numpy(), x)
