"""Secure aggregation over one receiver's neighbourhood (SecAgg / SecAgg+), sans I/O.

Receiver ``i`` learns ``sum_{j in N(i)} W_ij x_j`` and nothing about a single
``x_j``, against an honest-but-curious receiver colluding with fewer than
``t`` neighbours; up to ``d - t`` neighbours may drop out (see
:func:`dropout_tolerance`). Each neighbour sends ``W_ij x_j`` in fixed point
plus masks that cancel in the sum:

- pairwise masks ``+/-PRG(s_jk)`` for its partners ``k`` (all other roster
  members, or a public sparse graph with SecAgg+), where ``s_jk`` is HKDF of
  the X25519 secret of the ledger keys of ``j`` and ``k``, bound to the
  federation, round and receiver (:func:`pair_seed`);
- a self mask ``PRG(b_j)`` with a fresh ``b_j``, Shamir-shared ``t``-of-``d``
  among the neighbourhood, each share sealed to its holder in a NaCl box.

On dropouts, survivors reveal the seeds they shared with dropped peers and
their shares of survivors' ``b``, never both for one peer (:class:`ShareHolder`).
Revealing a per-(pair, round, receiver) seed says nothing about other rounds
or receivers. The PRG is AES-256-CTR keyed with the full 256-bit seed.

Not covered: poisoned or malformed updates (a malicious neighbour can bias the
sum), a malicious receiver that equivocates (the runtime's ledger record of
the declaration is what prevents that), and what the aggregate itself reveals.

Drive a round with :class:`MaskingSender` (one per neighbour) and
:class:`AggregatingReceiver`; the engines never touch masks directly.
"""

from protocols.secagg.config import (
    RoundContext,
    SecAggConfig,
    check_config,
    dropout_tolerance,
    threshold_for,
)
from protocols.secagg.events import (
    Abandoned,
    Aggregated,
    DropoutsDeclared,
    Ignored,
    Output,
    Send,
)
from protocols.secagg.fixedpoint import decode_fixed, encode_and_mask, encode_fixed, error_bound
from protocols.secagg.graph import mask_partners
from protocols.secagg.holder import RevealKind, ShareHolder
from protocols.secagg.keys import PairKeys, box_public_key, pair_seed
from protocols.secagg.messages import (
    Abandon,
    DropoutDeclaration,
    MaskedInput,
    Message,
    Reveal,
    ShareKeys,
    ShareRelay,
    decode,
)
from protocols.secagg.phases import CITATIONS, TRANSITIONS, Phase
from protocols.secagg.prg import add_prg_stream, add_prg_streams
from protocols.secagg.receiver import AggregatingReceiver, Timeouts
from protocols.secagg.sender import MaskingSender

__all__ = [
    "CITATIONS",
    "TRANSITIONS",
    "Abandon",
    "Abandoned",
    "Aggregated",
    "AggregatingReceiver",
    "DropoutDeclaration",
    "DropoutsDeclared",
    "Ignored",
    "MaskedInput",
    "MaskingSender",
    "Message",
    "Output",
    "PairKeys",
    "Phase",
    "Reveal",
    "RevealKind",
    "RoundContext",
    "SecAggConfig",
    "Send",
    "ShareHolder",
    "ShareKeys",
    "ShareRelay",
    "Timeouts",
    "add_prg_stream",
    "add_prg_streams",
    "box_public_key",
    "check_config",
    "decode",
    "decode_fixed",
    "dropout_tolerance",
    "encode_and_mask",
    "encode_fixed",
    "error_bound",
    "mask_partners",
    "pair_seed",
    "threshold_for",
]
