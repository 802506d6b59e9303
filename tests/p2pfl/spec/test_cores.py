"""The core a daemon builds from a plan runs the plan's robust rule.

``build_core`` is what the daemon and the protocol engine call; a plan with
``gossip.robust`` must give a core whose mix ignores a NaN neighbour and clips
a far one, where the plain core would take both in.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from p2pfl.spec import Graph, Rehearsal, RunSpec
from p2pfl.spec.cores import build_core
from p2pfl.spec.sections import GossipSection, TopologySection
from protocols.gossip import RoundMixed
from protocols.wire import GossipMessage, dense, encode

NAMES = ["n0", "n1", "n2", "n3"]


def mixed_model(spec: RunSpec) -> np.ndarray:
    graph = Graph.build(spec, NAMES)
    core = build_core(
        spec, graph, "n0", dim=2, federation=bytes(32), randomness=Rehearsal(spec.seed)
    )
    core.start_round(0, np.zeros(2, dtype=np.float32), 0.0)
    sent = {"n1": [math.nan, 1.0], "n2": [30.0, 40.0], "n3": [0.0, 0.0]}
    events = []
    for peer, values in sent.items():
        frame = encode(GossipMessage(peer, 0, dense(np.asarray(values, dtype=np.float32))))
        events += core.receive(peer, frame, 0.0).events
    (mixed,) = [e for e in events if isinstance(e, RoundMixed)]
    return np.asarray(mixed.model)


def test_a_robust_plan_gives_a_core_that_clips_and_ignores_nan() -> None:
    topo = TopologySection(kind="complete")
    robust = RunSpec(topology=topo, gossip=GossipSection(robust="clipped", clip_radius=1.0))
    # complete graph of 4, Metropolis: W_ij = 1/4; (30, 40) clipped to (0.6, 0.8)
    np.testing.assert_allclose(mixed_model(robust), [0.15, 0.2], rtol=1e-6)
    trimmed = RunSpec(topology=topo, gossip=GossipSection(robust="trimmed", robust_byzantine=1))
    np.testing.assert_allclose(mixed_model(trimmed), [0.0, 0.5], rtol=1e-6)
    plain = mixed_model(RunSpec(topology=topo))
    assert np.isnan(plain[0]) and plain[1] == pytest.approx(10.25)
