"""Private metrics: a few numbers per node, summed over the whole roster under pairwise masks.

Each node encodes its figures (for example correct predictions, test samples, summed
loss) in fixed point modulo 2^64 and adds, for every other roster member, the mask it
shares with that member for (federation, round, ``METRICS_RECEIVER``): ``+PRG(s)`` from
the smaller node id, ``-PRG(s)`` from the larger. Each masked vector alone is uniformly
random; the masks cancel in the sum over the roster, which is the only figure anyone can
compute. Masked vectors can therefore be published where everybody reads them (the
ledger's ``metrics`` map); nothing else about a site's figures leaves it.

A round's sum exists only once every roster member has published: a member's masks
cannot be removed without it (unlike model aggregation there is no dropout recovery here;
a missing member leaves that round's aggregate unknown, never wrong).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from protocols.errors import LocalProtocolError
from protocols.secagg.graph import mask_sign
from protocols.secagg.keys import pair_seed
from protocols.secagg.prg import add_prg_stream

METRICS_RECEIVER = "~metrics"
"""Binds metric masks apart from every (round, receiver) of model aggregation (not a node id)."""
SCALE = float(2**24)
"""Fixed-point step 2^-24: counts are exact; a loss sum keeps ~7 decimals; range +-2^39."""
LIMIT = 2.0**62


def encode_values(values: Sequence[float], scale: float = SCALE) -> npt.NDArray[np.uint64]:
    """Two's complement fixed-point codes, modulo 2^64, of finite values below 2^62 / scale."""
    floats = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(floats)) or np.any(np.abs(floats) * scale >= LIMIT):
        raise LocalProtocolError("metric values must be finite and within the fixed-point range")
    return np.rint(floats * scale).astype(np.int64).view(np.uint64)


def decode_values(codes: npt.NDArray[np.uint64], scale: float = SCALE) -> list[float]:
    return [float(v) / scale for v in codes.view(np.int64)]


def mask_metrics(
    values: Mapping[str, float],
    *,
    me: str,
    roster: Sequence[str],
    my_box_private: bytes,
    public_keys: Mapping[str, bytes],
    federation_id: bytes,
    round: int,
    scale: float = SCALE,
) -> dict[str, int]:
    """``me``'s masked figures for ``round``, keyed by metric name (ints below 2^64)."""
    if me not in roster:
        raise LocalProtocolError(f"{me} is not in the roster it masks over")
    names = sorted(values)
    codes = encode_values([values[k] for k in names], scale)
    for peer in roster:
        if peer == me:
            continue
        seed = pair_seed(
            my_box_private,
            public_keys[peer],
            federation_id=federation_id,
            round=round,
            receiver=METRICS_RECEIVER,
            me=me,
            peer=peer,
        )
        add_prg_stream(codes, seed, mask_sign(me, peer))
    return {name: int(code) for name, code in zip(names, codes, strict=True)}


def sum_metrics(
    masked: Mapping[str, Mapping[str, int]], roster: Sequence[str], scale: float = SCALE
) -> dict[str, float] | None:
    """The roster's summed figures, or None until every member's masked figures are in.

    Members must have published the same metric names; a mismatch is refused.
    """
    if any(node not in masked for node in roster):
        return None
    names = sorted(masked[roster[0]])
    total = np.zeros(len(names), dtype=np.uint64)
    for node in roster:
        if sorted(masked[node]) != names:
            raise LocalProtocolError(
                f"{node} published metrics {sorted(masked[node])}, not {names}"
            )
        total += np.asarray([masked[node][k] for k in names], dtype=np.uint64)
    return dict(zip(names, decode_values(total, scale), strict=True))
