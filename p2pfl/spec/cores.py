"""One factory for a node's round core, in a rehearsal and in a deployment.

``build_core`` reads the mode off the run spec and gives the node the core of
``protocols.rounds`` that runs it: sync, CHOCO or push-sum gossip behind a
``GossipRoundCore``, or ``SecureRoundCore`` for secure aggregation over sync.
Gradient tracking and quasi-global momentum are a ``TrackedRoundCore`` over the
sync or the secure core, which then mixes the rule's ``width`` model lengths;
with partial sharing, the sync or secure core sits behind a ``PartialRoundCore``
over the shared part.
What differs between a simulation and a daemon is passed in, never decided
here: the key ring (derived keys in a rehearsal, the identity's and the
ledger's in a deployment), the randomness (derived or the operating system's),
the federation the masks are bound to, and whether a dropout declaration must
wait for the ledger (a daemon) or is acted on at once (a simulation).
"""

from __future__ import annotations

import numpy as np

from p2pfl.errors import ConfigError
from p2pfl.spec.derive import KeyRing, Randomness
from p2pfl.spec.graph import Graph
from p2pfl.spec.run import RunSpec
from p2pfl.training import schedule_from
from protocols.compression import make_compressor
from protocols.gossip import ChocoGossip, GossipCore, PushSumGossip, SyncGossip
from protocols.momentum import QuasiGlobalMomentum
from protocols.partial import Selection
from protocols.rounds import (
    GossipRoundCore,
    PartialRoundCore,
    RoundCore,
    RoundRule,
    SecureRoundCore,
)
from protocols.rounds.tracked import TrackedRoundCore
from protocols.tracking import GradientTracking


def build_core(
    spec: RunSpec,
    graph: Graph,
    me: str,
    *,
    dim: int,
    federation: bytes,
    randomness: Randomness,
    keys: KeyRing | None = None,
    prefix: bytes = b"",
    drop_rounds: frozenset[int] = frozenset(),
    hold_declarations: bool = False,
    mix_in_place: bool = False,
    start_at: int = 0,
    selection: Selection | None = None,
) -> RoundCore:
    """Node ``me``'s round core for ``spec`` on ``graph``, its first round ``start_at``.

    ``prefix`` goes in front of every frame (a daemon's channel tag). Secure mode
    needs ``keys``; ``drop_rounds`` (a rehearsal's scheduled dropouts) are rounds in
    which the node deals its shares and then vanishes. ``mix_in_place`` lets a sync
    round mix over the trained model once its frames are encoded (one model-sized
    vector fewer, for a daemon that hands its model over and takes the mix back).
    ``selection`` (``RunSpec.selection``, partial sharing): the core mixes, sends and
    masks its shared coordinates only, behind a ``PartialRoundCore``.
    """
    if selection is not None:
        if selection.dim != dim:
            raise ConfigError(f"the selection covers {selection.dim} values, the model has {dim}")
        dim = selection.shared_dim
    core: RoundCore
    rule = round_rule(spec)
    if rule is not None:
        dim *= rule.width
    if spec.secure.enabled:
        if keys is None:
            raise ConfigError("secure aggregation needs the node's key ring")
        core = SecureRoundCore(
            me,
            graph.neighbourhood,
            spec.secagg_config(),
            federation_id=federation,
            box_private=keys.box_private,
            public_keys=dict(keys.public_keys),
            self_seed=lambda round, receiver: randomness.self_mask_seed(me, round, receiver),
            timeouts=spec.secagg_timeouts(),
            dim=dim,
            drop_rounds=drop_rounds,
            declarations_need_confirmation=hold_declarations,
            prefix=prefix,
            bound=spec.secure_bound(),
        )
    else:
        core = GossipRoundCore(
            gossip_core(spec, graph, me, mix_in_place=mix_in_place), prefix=prefix
        )
    if rule is not None:
        core = TrackedRoundCore(core, rule, schedule_from(spec.training).lr_scale)
    if start_at:
        core.resume_at(start_at)
    return core if selection is None else PartialRoundCore(core, selection)


def round_rule(spec: RunSpec) -> RoundRule | None:
    """What the mode mixes beyond the model (``protocols.rounds.tracked``), or ``None``."""
    if spec.gossip.mode == "tracking":
        return GradientTracking()
    if spec.gossip.mode == "qgm":
        return QuasiGlobalMomentum(spec.gossip.qgm_beta)
    return None


def gossip_core(spec: RunSpec, graph: Graph, me: str, *, mix_in_place: bool = False) -> GossipCore:
    """The message-level gossip core of the spec's mode (``protocols.gossip``)."""
    g = spec.gossip
    hood = graph.hood_fn(me)
    if g.mode in ("sync", "tracking", "qgm"):
        return SyncGossip(
            me,
            hood,
            round_timeout=g.round_timeout,
            mix_in_place=mix_in_place,
            robust=spec.robust_rule(),
        )
    if g.mode == "choco":
        compressor = make_compressor(g.compression, bits=g.bits, fraction=g.topk_fraction)
        return ChocoGossip(
            me,
            hood,
            compressor=compressor,
            gamma=g.gamma,
            seed=spec.seed + graph.index(me),
            round_timeout=g.round_timeout,
        )
    return PushSumGossip(me, hood, dtype=np.float32)
