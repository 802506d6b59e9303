"""t-of-n sharing of 256-bit self-mask seeds, batched: one numpy pass for every secret and holder.

Shamir's scheme over the prime field ``GF(p)``, ``p = 2**32 - 5``. A 32-byte
seed is read as 16 little-endian 16-bit limbs, each a field element (below
``p``), and every limb is shared with its own random polynomial of degree
``t - 1``: holder ``x`` (1-based) gets ``f(x) = s + a_1 x + ... + a_{t-1}
x^{t-1}`` for each limb. A share is the 16 values ``f(x)``, each a
little-endian ``u32`` below ``p``: 64 bytes. Any ``t`` shares give the limbs
back by Lagrange interpolation at 0; fewer than ``t`` are uniformly
distributed whatever the seed (the usual information-theoretic argument holds
limb by limb, because each limb's coefficients are independent and uniform in
``GF(p)``).

Why this form: the receiver of a round reconstructs every survivor's seed,
and pycryptodome's GF(2^128) arithmetic, in pure Python, made that the largest
fixed cost of a small model's secure round. Here the arithmetic is plain
integer maths on ``uint64`` arrays, vectorised over holders, secrets and
limbs, and it never overflows: Horner's step keeps values below
``p * MAX_HOLDERS + p < 2**43``, and one product of two field elements is
below ``2**64``.

The coefficients come from ``random_bytes`` (the operating system's CSPRNG by
default), drawn uniformly in ``[0, p)`` by rejection; they change the share
bytes only, never a recovered seed nor any result.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from protocols.errors import LocalProtocolError

SEED_BYTES = 32
PRIME = 2**32 - 5
LIMBS = SEED_BYTES // 2  # 16-bit limbs: each is below PRIME
SHARE_BYTES = 4 * LIMBS
MAX_HOLDERS = 2048  # keeps Horner's intermediate values within uint64 (see the module doc)

RandomBytes = Callable[[int], bytes]
_WORDS = struct.Struct(f"<{LIMBS}I")
_U64 = npt.NDArray[np.uint64]


def _uniform(count: int, random_bytes: RandomBytes) -> _U64:
    """``count`` field elements uniform in ``[0, PRIME)``: u32 draws, those >= PRIME redrawn."""
    out = np.frombuffer(random_bytes(4 * count), dtype="<u4").astype(np.uint64)
    bad = out >= PRIME
    while bad.any():  # probability 5 / 2**32 per element
        fresh = np.frombuffer(random_bytes(4 * int(bad.sum())), dtype="<u4").astype(np.uint64)
        out[bad] = fresh
        bad = out >= PRIME
    return out


def _check_split(threshold: int, holders: int) -> None:
    if type(threshold) is not int or type(holders) is not int:
        raise LocalProtocolError("threshold and holders must be integers")
    if not 2 <= threshold <= holders <= MAX_HOLDERS:
        raise LocalProtocolError(
            f"need 2 <= threshold <= holders <= {MAX_HOLDERS}, got {threshold} of {holders}"
        )


def split_seeds(
    seeds: Sequence[bytes],
    threshold: int,
    holders: int,
    *,
    random_bytes: RandomBytes = os.urandom,
) -> list[list[bytes]]:
    """Shares of every seed for indices ``1..holders``: ``result[k][x - 1]`` is seed k's share x.

    One Horner pass over an array of (holders, seeds, limbs) does all of them.
    """
    _check_split(threshold, holders)
    for seed in seeds:
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            raise LocalProtocolError(f"a self-mask seed must be {SEED_BYTES} bytes")
    if not seeds:
        return []
    secrets = np.frombuffer(b"".join(seeds), dtype="<u2").astype(np.uint64)
    secrets = secrets.reshape(len(seeds), LIMBS)
    coefficients = _uniform((threshold - 1) * secrets.size, random_bytes)
    coefficients = coefficients.reshape(threshold - 1, len(seeds), LIMBS)
    x = np.arange(1, holders + 1, dtype=np.uint64).reshape(holders, 1, 1)
    acc = np.broadcast_to(coefficients[-1], (holders, len(seeds), LIMBS)).copy()
    for c in coefficients[-2::-1]:
        acc *= x
        acc += c
        acc %= PRIME
    acc *= x
    acc += secrets
    acc %= PRIME
    words = acc.astype("<u4")  # (holders, seeds, limbs), every value below PRIME
    return [[words[h, k].tobytes() for h in range(holders)] for k in range(len(seeds))]


def split_seed(
    seed: bytes, threshold: int, holders: int, *, random_bytes: RandomBytes = os.urandom
) -> list[bytes]:
    """Shares of ``seed`` for indices ``1..holders``; any ``threshold`` of them recover it."""
    return split_seeds([seed], threshold, holders, random_bytes=random_bytes)[0]


def check_share(share: object) -> bytes:
    """Refuse anything but a 64-byte share whose 16 words are field elements."""
    if not isinstance(share, bytes) or len(share) != SHARE_BYTES:
        raise LocalProtocolError(f"a share must be {SHARE_BYTES} bytes")
    if max(_WORDS.unpack(share)) >= PRIME:
        raise LocalProtocolError("a share holds a value outside the field")
    return share


def lagrange_at_zero(indices: Sequence[int]) -> list[int]:
    """The Lagrange coefficients that interpolate at 0 from the shares at ``indices``."""
    out = []
    for i in indices:
        num, den = 1, 1
        for j in indices:
            if j != i:
                num = num * j % PRIME
                den = den * (j - i) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return out


def combine_seeds(shares: Mapping[int, Sequence[bytes]], threshold: int) -> list[bytes]:
    """Recover several seeds at once; ``shares[x][k]`` is holder x's share of seed k.

    Exactly ``threshold`` holders (the lowest indices) are interpolated, with
    one set of Lagrange coefficients for every seed. Wrong shares give wrong
    seeds, not an error (a recovered limb is read modulo 2^16): Shamir has no
    integrity, which the honest-but-curious model accepts.
    """
    if type(threshold) is not int or threshold < 2:
        raise LocalProtocolError(f"threshold must be an integer >= 2, got {threshold!r}")
    if len(shares) < threshold:
        raise LocalProtocolError(f"need {threshold} shares to recover a seed, got {len(shares)}")
    chosen = sorted(shares.items())[:threshold]
    count = len(chosen[0][1])
    for index, row in chosen:
        if type(index) is not int or not 1 <= index <= MAX_HOLDERS or len(row) != count:
            raise LocalProtocolError(f"bad shares at index {index!r}")
        for share in row:
            try:
                check_share(share)
            except LocalProtocolError as exc:
                raise LocalProtocolError(f"bad share at index {index!r}: {exc}") from None
    if count == 0:
        return []
    ys: Any = np.frombuffer(b"".join(b"".join(row) for _, row in chosen), dtype="<u4")
    ys = ys.astype(np.uint64).reshape(threshold, count, LIMBS)
    weights = np.asarray(lagrange_at_zero([i for i, _ in chosen]), dtype=np.uint64)
    ys *= weights.reshape(threshold, 1, 1)  # each product of two field elements < 2**64
    ys %= PRIME
    limbs = ys.sum(axis=0) % PRIME  # a sum of at most MAX_HOLDERS values below 2**32
    seeds = (limbs & 0xFFFF).astype("<u2")
    return [seeds[k].tobytes() for k in range(count)]


def combine_seed(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """Recover one seed from at least ``threshold`` shares keyed by their 1-based index."""
    return combine_seeds({i: [s] for i, s in shares.items()}, threshold)[0]
