"""Mask streams: AES-256-CTR keystreams added (or subtracted) modulo 2^32 or 2^64.

The PRG is AES-256 in CTR mode from ``cryptography`` (OpenSSL, AES-NI), keyed
by the full 256-bit seed, counter block starting at zero. Each key expands a
single stream (pair seeds are unique per pair, round and receiver; self seeds
are fresh per round), so the fixed starting block never repeats under a key.
Never a statistical generator, never a seed folded to fewer bits.

Speed comes from fusing: the keystream is produced in chunks of
:data:`CHUNK_BYTES` (about 1 MB, so it stays in cache) by encrypting a
preallocated zero buffer with ``update_into``, and each chunk is added into
the output at once through a little-endian unsigned view; unsigned numpy
arithmetic wraps, which is exactly addition modulo ``2**bits``. With several
streams the loop is chunk-outer, stream-inner, so the output chunk is read
from memory once for all of them.

A mask ``m`` is the keystream read as little-endian words; ``sign = +1`` adds
it, ``sign = -1`` subtracts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from protocols.errors import LocalProtocolError

CHUNK_BYTES = 1 << 20
SEED_BYTES = 32
_ZERO_BLOCK = bytes(16)

Codes = npt.NDArray[np.unsignedinteger[Any]]
Stream = tuple[bytes, int]
"""A mask stream: its 256-bit seed and the sign (+1 adds it, -1 subtracts it)."""

_CODE_DTYPES = (np.dtype("<u4"), np.dtype("<u8"))


def check_codes(out: Codes, what: str = "output") -> None:
    """Refuse an array the fused loops cannot write into: 1-D contiguous ``<u4``/``<u8``."""
    if not isinstance(out, np.ndarray) or out.dtype not in _CODE_DTYPES:
        raise LocalProtocolError(f"{what} must be a little-endian uint32 or uint64 array")
    if out.ndim != 1 or not out.flags.c_contiguous or not out.flags.writeable:
        raise LocalProtocolError(f"{what} must be a writeable, contiguous 1-D array")


class MaskAdder:
    """Adds a fixed set of streams to consecutive chunks of one vector, in order.

    ``add_next(chunk)`` consumes ``len(chunk)`` words of every stream; calling
    it on consecutive slices of a vector gives the same result as adding each
    whole stream at once. Chunks must not exceed ``chunk_words``.
    """

    def __init__(self, streams: Sequence[Stream], dtype: np.dtype[Any], chunk_words: int) -> None:
        # Imported here: a plan without secure aggregation never loads the cipher library.
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self._encryptors = []
        for seed, sign in streams:
            if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
                raise LocalProtocolError(f"a mask seed must be {SEED_BYTES} bytes")
            if sign not in (1, -1):
                raise LocalProtocolError(f"a mask sign must be +1 or -1, got {sign!r}")
            cipher = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_BLOCK))
            self._encryptors.append((cipher.encryptor(), sign))
        self.chunk_words = chunk_words
        nbytes = chunk_words * dtype.itemsize
        keystream = np.empty(nbytes, dtype=np.uint8)
        self._zeros = np.zeros(nbytes, dtype=np.uint8).data
        self._keystream = keystream.data
        self._words = keystream.view(dtype)

    def add_next(self, chunk: Codes) -> None:
        words = len(chunk)
        if words > self.chunk_words:
            raise LocalProtocolError(f"chunk of {words} words exceeds {self.chunk_words}")
        nbytes = words * chunk.itemsize
        zeros = self._zeros[:nbytes]
        keystream = self._keystream[:nbytes]
        mask = self._words[:words]
        for encryptor, sign in self._encryptors:
            encryptor.update_into(zeros, keystream)
            if sign > 0:
                np.add(chunk, mask, out=chunk)
            else:
                np.subtract(chunk, mask, out=chunk)


def chunk_words_for(dtype: np.dtype[Any], length: int | None = None) -> int:
    """Words per chunk: about :data:`CHUNK_BYTES`, or the whole vector when it is shorter.

    A small model's buffers are then its own size, not a megabyte allocated per stream set.
    """
    words = CHUNK_BYTES // dtype.itemsize
    return words if length is None else max(1, min(words, length))


def add_prg_streams(out: Codes, streams: Sequence[Stream]) -> None:
    """Add every stream into ``out`` in place, modulo ``2**bits`` of ``out``'s dtype."""
    check_codes(out)
    words = chunk_words_for(out.dtype, len(out))
    adder = MaskAdder(streams, out.dtype, words)
    for start in range(0, len(out), words):
        adder.add_next(out[start : start + words])


def add_prg_stream(out: Codes, seed32: bytes, sign: int) -> None:
    """Add (``sign=+1``) or subtract (``sign=-1``) ``PRG(seed32)`` into ``out`` in place."""
    add_prg_streams(out, [(seed32, sign)])


def prg_words(seed32: bytes, count: int, dtype: npt.DTypeLike = "<u4") -> Codes:
    """The first ``count`` words of ``PRG(seed32)`` (a fresh array; for tests and tools)."""
    out = np.zeros(count, dtype=np.dtype(dtype))
    add_prg_stream(out, seed32, +1)
    return out
