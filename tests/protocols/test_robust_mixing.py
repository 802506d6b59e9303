"""Byzantine-robust mixing as pure functions: closed-form cases on numpy and torch.

Clipped gossip (``clip``, ``adaptive_radius``, ``clipped_mix``), the trimmed
mean (``trimmed_mix``), the rule that picks between them (``robust_mix``), the
secure bound (``bound_deviation``) and the sync core that runs them: each is
checked on small vectors whose answer is written out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protocols.errors import LocalProtocolError, PeerProtocolError
from protocols.gossip import Neighbourhood, RoundMixed, SyncGossip
from protocols.mixing import (
    RobustRule,
    adaptive_radius,
    bound_deviation,
    clip,
    clipped_mix,
    mix,
    robust_mix,
    trimmed_mix,
)
from protocols.wire import GossipMessage, dense

BACKENDS = [
    pytest.param(lambda a: np.asarray(a, dtype=np.float32), id="numpy"),
    pytest.param(lambda a: torch.tensor(a, dtype=torch.float32), id="torch"),
]


def close(a: object, b: object) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b, dtype=np.float32), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arr", BACKENDS)
def test_clip_scales_a_row_to_the_radius_and_leaves_a_short_one(arr) -> None:
    z = arr([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    close(clip(z, 1.0), [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])
    close(clip(z, arr([[10.0], [0.25], [1.0]])), [[3.0, 4.0], [0.15, 0.2], [0.0, 0.0]])


@pytest.mark.parametrize("arr", BACKENDS)
def test_clip_gives_a_non_finite_row_no_contribution(arr) -> None:
    z = arr([[math.nan, 1.0], [math.inf, 0.0], [3e30, 4e30]])
    close(clip(z, 1.0), [[0.0, 0.0], [0.0, 0.0], [0.6, 0.8]])  # a huge finite row still clips


@pytest.mark.parametrize("arr", BACKENDS)
def test_adaptive_radius_is_the_distance_of_the_b_plus_first_farthest(arr) -> None:
    distances = arr([1.0, 5.0, math.nan, 2.0])
    assert adaptive_radius(distances, 1) == 5.0  # NaN counts as the farthest
    assert adaptive_radius(distances, 2) == 2.0
    assert adaptive_radius(distances, 0) == math.inf
    assert adaptive_radius(distances, 4) == 0.0  # everybody suspect: nobody pulls


@pytest.mark.parametrize("arr", BACKENDS)
def test_clipped_mix_pulls_each_neighbour_by_at_most_its_weight_times_tau(arr) -> None:
    own = arr([1.0, 1.0])
    neighbours = arr([[4.0, 5.0], [1.0, 2.0]])  # differences (3, 4), norm 5, and (0, 1)
    weights = arr([0.5, 0.25])
    # x + 0.5 * (0.6, 0.8) + 0.25 * (0, 1)
    close(clipped_mix(own, neighbours, weights, 1.0), [1.3, 1.65])


@pytest.mark.parametrize("arr", BACKENDS)
def test_clipped_mix_equals_plain_mixing_when_nobody_is_past_the_radius(arr) -> None:
    rng = np.random.default_rng(0)
    own = rng.normal(size=6).astype(np.float32)
    neighbours = (own + 0.1 * rng.normal(size=(3, 6))).astype(np.float32)
    weights = [0.2, 0.3, 0.1]  # W_ii = 0.4
    plain = mix(own, 0.4, list(zip(weights, neighbours, strict=True)))
    robust = clipped_mix(arr(own), arr(neighbours), arr(weights), 10.0)
    close(robust, plain)
    rule = RobustRule("clipped", byzantine=0)  # adaptive with b = 0: tau is infinite
    close(robust_mix(arr(own), arr(neighbours), arr(weights), rule), plain)


@pytest.mark.parametrize("arr", BACKENDS)
def test_a_nan_neighbour_never_reaches_the_result(arr) -> None:
    own = arr([1.0, 2.0])
    neighbours = arr([[math.nan, 0.0], [2.0, 2.0]])
    weights = arr([0.25, 0.25])
    close(clipped_mix(own, neighbours, weights, 100.0), [1.25, 2.0])
    close(robust_mix(own, neighbours, weights, RobustRule("clipped", byzantine=1)), [1.25, 2.0])
    # trimmed: the NaN becomes the node's own value, then b = 0 keeps everything
    close(trimmed_mix(own, neighbours, 0), [(1 + 1 + 2) / 3, (2 + 0 + 2) / 3])


@pytest.mark.parametrize("arr", BACKENDS)
def test_trimmed_mean_drops_b_values_at_each_end_of_every_coordinate(arr) -> None:
    own = arr([0.0, 10.0])
    neighbours = arr([[1.0, 100.0], [2.0, -50.0], [3.0, 11.0], [1000.0, 12.0], [4.0, 13.0]])
    # column 0 keeps 2, 3, 4 (drops 1 and 1000); column 1 keeps 11, 12, 13
    close(trimmed_mix(own, neighbours, 1), [(0 + 2 + 3 + 4) / 4, (10 + 11 + 12 + 13) / 4])
    close(robust_mix(own, neighbours, arr([0.2] * 5), RobustRule("trimmed", 1)), [2.25, 11.5])
    with pytest.raises(LocalProtocolError, match="leaves none"):
        trimmed_mix(own, neighbours[:2], 1)


@pytest.mark.parametrize("arr", BACKENDS)
def test_the_secure_bound_moves_a_node_at_most_the_radius(arr) -> None:
    own = arr([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    mixed = arr([[30.0, 40.0], [1.1, 1.0], [math.nan, 0.0]])
    close(bound_deviation(own, mixed, 2.0), [[1.2, 1.6], [1.1, 1.0], [5.0, 5.0]])


def test_a_rule_that_cannot_be_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        RobustRule("median")
    with pytest.raises(LocalProtocolError):
        RobustRule("clipped", radius=0.0)
    assert not RobustRule("trimmed", 2).fits(4) and RobustRule("trimmed", 2).fits(5)


def test_the_sync_core_mixes_with_its_robust_rule() -> None:
    hood = Neighbourhood(0.5, {"a": 0.25, "b": 0.25}, {"a": 0.25, "b": 0.25})
    core = SyncGossip("me", lambda r: hood, robust=RobustRule("clipped", radius=1.0))
    own = np.array([0.0, 0.0], dtype=np.float32)
    core.start_round(0, own, 0.0)
    nan = GossipMessage("a", 0, dense(np.array([math.nan, 1.0], np.float32)))
    with pytest.raises(PeerProtocolError, match="NaN"):  # refused before any mix
        core.receive("a", nan, 0.0)
    core.receive("a", GossipMessage("a", 0, dense(np.array([0.0, 50.0], np.float32))), 0.0)
    out = core.receive("b", GossipMessage("b", 0, dense(np.array([30.0, 40.0], np.float32))), 0.0)
    (mixed,) = [e for e in out.events if isinstance(e, RoundMixed)]
    close(mixed.model, [0.15, 0.45])  # (0, 50) is clipped to (0, 1), (30, 40) to (0.6, 0.8)
