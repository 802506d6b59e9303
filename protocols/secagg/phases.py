"""The phases of a secure-aggregation round, and every allowed transition in one table.

Rules (every party of a round, sender, share holder or receiver, follows them):

1. A round starts in ``ADVERTISE`` and moves forward one phase at a time:
   ADVERTISE -> SHARE -> MASKED -> UNMASK -> DONE.
2. Any phase before ``DONE`` may move to ``ABANDONED``; ``DONE`` and
   ``ABANDONED`` are final.
3. Nothing moves backwards and nothing is skipped: a call that would do so is
   our own misuse and raises ``LocalProtocolError``.

Each phase implements a step of Bonawitz et al. 2017, "Practical Secure
Aggregation for Privacy-Preserving Machine Learning" (CCS'17, Fig. 4, rounds
0-4), adapted to a receiver's neighbourhood with long-term ledger keys, and
optionally the sparse graph of Bell et al. 2020 (SecAgg+, CCS'20).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from protocols.errors import LocalProtocolError


class Phase(enum.Enum):
    """Where a party is in one (round, receiver) secure aggregation."""

    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED = "masked"
    UNMASK = "unmask"
    DONE = "done"
    ABANDONED = "abandoned"


CITATIONS: Mapping[Phase, str] = MappingProxyType(
    {
        Phase.ADVERTISE: (
            "Bonawitz et al. 2017, Round 0 (AdvertiseKeys): the X25519 keys are the long-term "
            "keys signed in the ledger's members map, so nothing is sent; the round's roster "
            "is the receiver's neighbourhood N(i)."
        ),
        Phase.SHARE: (
            "Round 1 (ShareKeys): each neighbour t-of-d Shamir-shares a fresh self-mask seed "
            "b_j and seals each share to its holder; the receiver relays them with the "
            "roster U2 of neighbours that shared. Pairwise keys need no sharing: survivors "
            "reveal per-(pair, round, receiver) seeds directly."
        ),
        Phase.MASKED: (
            "Round 2 (MaskedInputCollection): y_j = code(W_ij x_j) + PRG(b_j) "
            "+ sum over partners k of +/-PRG(s_jk); with SecAgg+ (Bell et al. 2020) the "
            "partners are a public k-regular graph instead of all of U2."
        ),
        Phase.UNMASK: (
            "Round 3 (ConsistencyCheck) is the receiver's signed dropout declaration recorded "
            "in the ledger; Round 4 (Unmasking): survivors reveal seeds shared with dropped "
            "peers and self-mask shares of survivors, never both for one peer."
        ),
        Phase.DONE: (
            "Round 4 output: the receiver removes the masks and decodes "
            "sum_j W_ij x_j over the survivors."
        ),
        Phase.ABANDONED: (
            "The protocol's abort: fewer than t survivors (or a disconnected survivor graph), "
            "so nothing more is revealed and the receiver keeps its own model."
        ),
    }
)

TRANSITIONS: Mapping[Phase, frozenset[Phase]] = MappingProxyType(
    {
        Phase.ADVERTISE: frozenset({Phase.SHARE, Phase.ABANDONED}),
        Phase.SHARE: frozenset({Phase.MASKED, Phase.ABANDONED}),
        Phase.MASKED: frozenset({Phase.UNMASK, Phase.ABANDONED}),
        Phase.UNMASK: frozenset({Phase.DONE, Phase.ABANDONED}),
        Phase.DONE: frozenset(),
        Phase.ABANDONED: frozenset(),
    }
)


def advance(current: Phase, target: Phase) -> Phase:
    """Return ``target`` if the table allows ``current -> target``, else raise."""
    if target not in TRANSITIONS[current]:
        raise LocalProtocolError(
            f"secure aggregation cannot go from {current.name} to {target.name}"
        )
    return target


def is_final(phase: Phase) -> bool:
    return not TRANSITIONS[phase]
