"""t-of-n sharing of a 256-bit self-mask seed, over pycryptodome's Shamir.

pycryptodome's :class:`Crypto.Protocol.SecretSharing.Shamir` shares 16-byte
secrets in GF(2^128); a 32-byte seed is shared as its two halves with the same
indices, and a share is the 32-byte concatenation of the two half-shares. The
polynomial coefficients come from pycryptodome's own CSPRNG (the library has
no parameter for them); they change the share bytes only, never a result.
"""

from __future__ import annotations

from collections.abc import Mapping

from Crypto.Protocol.SecretSharing import Shamir

from protocols.errors import LocalProtocolError

SEED_BYTES = 32
SHARE_BYTES = 32
_HALF = 16


def split_seed(seed: bytes, threshold: int, holders: int) -> list[bytes]:
    """Shares of ``seed`` for indices ``1..holders``; any ``threshold`` of them recover it."""
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise LocalProtocolError(f"a self-mask seed must be {SEED_BYTES} bytes")
    if not 2 <= threshold <= holders:
        raise LocalProtocolError(f"need 2 <= threshold <= holders, got {threshold} of {holders}")
    low = Shamir.split(threshold, holders, seed[:_HALF])
    high = Shamir.split(threshold, holders, seed[_HALF:])
    # Both lists come back in index order 1..holders.
    return [bytes(a) + bytes(b) for (_, a), (_, b) in zip(low, high, strict=True)]


def combine_seed(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """Recover a seed from at least ``threshold`` shares keyed by their 1-based index.

    Exactly ``threshold`` shares (the lowest indices) are interpolated, as the
    library asks. Wrong shares give a wrong seed, not an error: Shamir has no
    integrity, which the honest-but-curious model accepts.
    """
    if len(shares) < threshold:
        raise LocalProtocolError(f"need {threshold} shares to recover a seed, got {len(shares)}")
    chosen = sorted(shares.items())[:threshold]
    for index, share in chosen:
        if type(index) is not int or index < 1 or len(share) != SHARE_BYTES:
            raise LocalProtocolError(f"bad share at index {index!r}")
    low = Shamir.combine([(i, s[:_HALF]) for i, s in chosen])
    high = Shamir.combine([(i, s[_HALF:]) for i, s in chosen])
    return bytes(low) + bytes(high)
