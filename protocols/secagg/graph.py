"""The public mask-partner graph of a round: complete (SecAgg) or sparse (SecAgg+).

Bell et al. 2020 ("Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", SecAgg+) replace the complete graph of Bonawitz et al. 2017 by a
``k``-regular graph: each party masks with ``k`` partners only. Here the graph
is a deterministic function of public inputs (the roster, federation id,
round, receiver and a public seed), so every party computes the same one
without talking: the roster is permuted by sorting on a keyed BLAKE2b hash,
then each node is joined to the nodes at circular offsets ``1..ceil(k/2)``
(plus the antipode when ``k`` is odd and the roster even): a Harary-type
circulant, ``k``-connected, with every degree ``k`` (``k + 1`` when both ``k``
and the roster size are odd).

Privacy needs the partner graph restricted to the survivors to be connected:
the masks cancel inside each connected component, so a receiver that unmasks
a disconnected survivor set learns one partial sum per component (and a model,
for a lone survivor). :func:`is_connected` is what receivers and share holders
check before anything is revealed.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence

_PERSON = b"p2pfl-sa-graph1"


def _frame(*parts: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


def connectivity(n: int, sparse_k: int | None) -> int:
    """Vertex connectivity of the partner graph over ``n`` nodes (``n - 1`` when complete)."""
    if sparse_k is None or sparse_k >= n - 1:
        return max(n - 1, 0)
    if sparse_k % 2 == 1 and n % 2 == 1:
        return sparse_k + 1
    return sparse_k


def mask_sign(me: str, peer: str) -> int:
    """The sign of the pair mask in ``me``'s input: + for the smaller id, - for the larger.

    ``me`` adds ``sign * PRG(s)`` and ``peer`` adds ``-sign * PRG(s)``: they cancel.
    """
    return 1 if me < peer else -1


def public_order(
    roster: Iterable[str], *, graph_seed: bytes, federation_id: bytes, round: int, receiver: str
) -> list[str]:
    """The roster in the round's public pseudo-random order (a keyed hash sort)."""
    context = _frame(graph_seed, federation_id, struct.pack("<Q", round), receiver.encode())

    def key(node: str) -> tuple[bytes, str]:
        digest = hashlib.blake2b(context + _frame(node.encode()), digest_size=32, person=_PERSON)
        return digest.digest(), node

    return sorted(roster, key=key)


def mask_partners(
    roster: Sequence[str],
    *,
    sparse_k: int | None,
    graph_seed: bytes,
    federation_id: bytes,
    round: int,
    receiver: str,
) -> dict[str, frozenset[str]]:
    """Each roster node's mask partners: all others, or a ``k``-connected circulant.

    Symmetric by construction (``b in p[a]`` iff ``a in p[b]``), which is what
    makes every pairwise mask cancel.
    """
    n = len(roster)
    if sparse_k is None or sparse_k >= n - 1:
        everyone = frozenset(roster)
        return {node: everyone - {node} for node in roster}
    order = public_order(
        roster, graph_seed=graph_seed, federation_id=federation_id, round=round, receiver=receiver
    )
    offsets = set(range(1, (sparse_k + 1) // 2 + 1))
    if sparse_k % 2 == 1 and n % 2 == 0:
        offsets = set(range(1, sparse_k // 2 + 1)) | {n // 2}
    partners: dict[str, set[str]] = {node: set() for node in order}
    for position, node in enumerate(order):
        for offset in offsets:
            other = order[(position + offset) % n]
            partners[node].add(other)
            partners[other].add(node)
    return {node: frozenset(p) for node, p in partners.items()}


def is_connected(partners: dict[str, frozenset[str]], survivors: Iterable[str]) -> bool:
    """Whether the partner graph restricted to ``survivors`` is connected (and non-empty)."""
    alive = set(survivors)
    if not alive:
        return False
    start = next(iter(alive))
    seen = {start}
    frontier = [start]
    while frontier:
        node = frontier.pop()
        for other in partners.get(node, frozenset()):
            if other in alive and other not in seen:
                seen.add(other)
                frontier.append(other)
    return seen == alive
