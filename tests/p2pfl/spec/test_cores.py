"""The core a daemon builds from a plan runs the plan's robust rule.

``build_core`` is what the daemon and the protocol engine call; a plan with
``gossip.robust`` must give a core whose mix clips (or trims) a far neighbour,
where the plain core takes it in. A NaN or infinite payload never reaches a mix:
every core refuses it as the sender's protocol error. The tracked modes build a
tracked core over the sync or the secure one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from p2pfl.errors import ConfigError
from p2pfl.spec import Graph, Rehearsal, RunSpec
from p2pfl.spec.cores import build_core
from p2pfl.spec.sections import GossipSection, SecureSection, TopologySection
from protocols.errors import PeerProtocolError
from protocols.gossip import RoundMixed
from protocols.momentum import QuasiGlobalMomentum
from protocols.rounds import SecureRoundCore, TrackedRoundCore
from protocols.tracking import GradientTracking
from protocols.wire import GossipMessage, dense, encode

NAMES = ["n0", "n1", "n2", "n3"]


def mixed_model(spec: RunSpec) -> np.ndarray:
    graph = Graph.build(spec, NAMES)
    core = build_core(
        spec, graph, "n0", dim=2, federation=bytes(32), randomness=Rehearsal(spec.seed)
    )
    core.start_round(0, np.zeros(2, dtype=np.float32), 0.0)
    sent = {"n1": [0.0, 50.0], "n2": [30.0, 40.0], "n3": [0.0, 0.0]}
    events = []
    for peer, values in sent.items():
        frame = encode(GossipMessage(peer, 0, dense(np.asarray(values, dtype=np.float32))))
        events += core.receive(peer, frame, 0.0).events
    (mixed,) = [e for e in events if isinstance(e, RoundMixed)]
    return np.asarray(mixed.model)


def test_a_robust_plan_gives_a_core_that_clips_or_trims() -> None:
    topo = TopologySection(kind="complete")
    robust = RunSpec(topology=topo, gossip=GossipSection(robust="clipped", clip_radius=1.0))
    # complete graph of 4, Metropolis: W_ij = 1/4; (0, 50) clipped to (0, 1), (30, 40) to
    # (0.6, 0.8)
    np.testing.assert_allclose(mixed_model(robust), [0.15, 0.45], rtol=1e-6)
    # per coordinate, the largest and the smallest neighbour dropped: {0} and {40} stay,
    # each averaged with the node's own 0
    trimmed = RunSpec(topology=topo, gossip=GossipSection(robust="trimmed", robust_byzantine=1))
    np.testing.assert_allclose(mixed_model(trimmed), [0.0, 20.0], rtol=1e-6)
    plain = mixed_model(RunSpec(topology=topo))
    np.testing.assert_allclose(plain, [7.5, 22.5], rtol=1e-6)


@pytest.mark.parametrize("robust", ["none", "clipped", "trimmed"])
def test_every_core_refuses_a_nan_payload_as_the_senders_error(robust: str) -> None:
    spec = RunSpec(
        topology=TopologySection(kind="complete"),
        gossip=GossipSection(robust=robust, robust_byzantine=1),
    )
    core = build_core(
        spec, Graph.build(spec, NAMES), "n0", dim=2, federation=bytes(32),
        randomness=Rehearsal(spec.seed),
    )  # fmt: skip
    core.start_round(0, np.zeros(2, dtype=np.float32), 0.0)
    frame = encode(GossipMessage("n1", 0, dense(np.asarray([math.nan, 1.0], np.float32))))
    with pytest.raises(PeerProtocolError, match="NaN"):
        core.receive("n1", frame, 0.0)


def test_the_tracked_modes_build_a_tracked_core_plain_or_secure_and_choco_is_refused() -> None:
    topo = TopologySection(kind="complete")
    for mode, rule in (("tracking", GradientTracking), ("qgm", QuasiGlobalMomentum)):
        for secure in (False, True):
            spec = RunSpec(
                topology=topo,
                gossip=GossipSection(mode=mode, qgm_beta=0.6),
                secure=SecureSection(enabled=secure),
            )
            graph = Graph.build(spec, NAMES)
            keys = Rehearsal(0).key_ring("n0", NAMES) if secure else None
            core = build_core(
                spec, graph, "n0", dim=3, federation=bytes(32), randomness=Rehearsal(0), keys=keys
            )
            assert isinstance(core, TrackedRoundCore) and isinstance(core.rule, rule)
            assert isinstance(core.inner, SecureRoundCore) == secure
    assert RunSpec(gossip=GossipSection(mode="qgm")).digest() != RunSpec().digest()
    assert RunSpec(gossip=GossipSection(qgm_beta=0.9)).digest() == RunSpec().digest()
    with pytest.raises(ConfigError, match=r"needs gossip\.mode"):
        RunSpec(gossip=GossipSection(mode="choco"), secure=SecureSection(enabled=True))
    with pytest.raises(ConfigError, match="qgm_beta"):
        GossipSection(qgm_beta=1.0)
