"""The mask PRG: exactly AES-256-CTR, chunking invisible, modular add and cancel."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from Crypto.Cipher import AES

from protocols.errors import LocalProtocolError
from protocols.secagg.prg import CHUNK_BYTES, add_prg_stream, add_prg_streams, prg_words

S1 = hashlib.sha256(b"one").digest()
S2 = hashlib.sha256(b"two").digest()


def reference_keystream(seed: bytes, nbytes: int) -> bytes:
    """AES-256-CTR from an independent implementation (pycryptodome), counter from zero."""
    cipher = AES.new(seed, AES.MODE_CTR, nonce=b"", initial_value=0)
    return cipher.encrypt(bytes(nbytes))


@pytest.mark.parametrize("dtype", ["<u4", "<u8"])
def test_prg_is_aes_256_ctr_read_as_little_endian_words(dtype: str) -> None:
    words = CHUNK_BYTES // np.dtype(dtype).itemsize * 2 + 5  # crosses two chunk boundaries
    ours = prg_words(S1, words, dtype)
    theirs = np.frombuffer(reference_keystream(S1, words * np.dtype(dtype).itemsize), dtype=dtype)
    assert np.array_equal(ours, theirs)


def test_adding_wraps_modulo_two_to_the_bits() -> None:
    out = np.full(1000, 0xFFFFFFFF, dtype="<u4")
    add_prg_stream(out, S1, +1)
    expected = (prg_words(S1, 1000).astype(np.uint64) + 0xFFFFFFFF) % 2**32
    assert np.array_equal(out, expected.astype("<u4"))


def test_plus_and_minus_cancel_exactly() -> None:
    original = np.arange(300_001, dtype="<u4")
    out = original.copy()
    add_prg_streams(out, [(S1, +1), (S2, +1), (S1, -1), (S2, -1)])
    assert np.array_equal(out, original)


def test_fused_streams_equal_one_stream_at_a_time() -> None:
    fused = np.zeros(CHUNK_BYTES // 4 + 17, dtype="<u4")
    add_prg_streams(fused, [(S1, +1), (S2, -1)])
    separate = np.zeros_like(fused)
    add_prg_stream(separate, S1, +1)
    add_prg_stream(separate, S2, -1)
    assert np.array_equal(fused, separate)


def test_distinct_seeds_give_unrelated_streams() -> None:
    assert not np.array_equal(prg_words(S1, 64), prg_words(S2, 64))
    assert np.array_equal(prg_words(S1, 64), prg_words(S1, 100)[:64])


def test_bad_arguments_are_refused() -> None:
    out = np.zeros(8, dtype="<u4")
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        add_prg_stream(out, S1[:16], +1)
    with pytest.raises(LocalProtocolError, match="sign"):
        add_prg_stream(out, S1, 2)
    with pytest.raises(LocalProtocolError):
        add_prg_stream(np.zeros(8, dtype=np.int32), S1, +1)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        add_prg_stream(np.zeros((2, 4), dtype="<u4"), S1, +1)
    with pytest.raises(LocalProtocolError):
        add_prg_stream(np.zeros(8, dtype=">u4"), S1, +1)
