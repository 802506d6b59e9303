"""Gradient tracking and quasi-global momentum against closed forms, and as round cores.

The closed-form case: quadratic objectives f_i(x) = a_i / 2 |x - b_i|^2 on a ring,
one plain gradient step of size ``ALPHA`` per round. The minimiser of sum_i f_i is
sum_i a_i b_i / sum_i a_i. Gradient tracking reaches it; D-PSGD with a constant step
stops at the fixed point of x = W (x - alpha grad F(x)), which is not it; QG-DSGDm
changes the path, not that fixed point (its buffer vanishes there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import networkx as nx
import numpy as np
import pytest
from gossip_harness import metropolis_weights
from test_round_cores import Net, hoods, names, secure_cores, secure_tolerance, small_graph

from protocols.errors import LocalProtocolError
from protocols.gossip import SyncGossip
from protocols.momentum import QuasiGlobalMomentum
from protocols.rounds import GossipRoundCore, RoundCore, RoundRule, TrackedRoundCore
from protocols.tracking import GradientTracking

N, DIM, ALPHA = 6, 3, 0.1
W = metropolis_weights(nx.cycle_graph(N))
A = np.array([1.0, 2.0, 0.5, 3.0, 1.5, 0.8])[:, None]
B = np.random.default_rng(0).normal(size=(N, DIM)) * 3
OPTIMUM = (A * B).sum(axis=0) / A.sum()


def gradient_step(x: Any, i: int, scale: float = 1.0) -> Any:
    """One SGD step of size ``scale`` ALPHA on f_i: the node's local training."""
    return (x - scale * ALPHA * A[i] * (x - B[i])).astype(np.float32)


def cosine(rounds: int) -> Callable[[int], float]:
    """A decaying learning-rate scale over ``rounds`` (as ``training.lr_schedule = 'cosine'``)."""
    return lambda r: 0.5 * (1 + np.cos(np.pi * min(r, rounds - 1) / rounds))


def run_rules(
    make: Callable[[], RoundRule],
    rounds: int,
    w: Any = W,
    scale: Callable[[int], float] = lambda r: 1.0,
) -> Any:
    """Every node's rule, mixed by the exact matrix product; the models after ``rounds``.

    Round r's local step is ``scale(r)`` times ALPHA, and the rules are told so.
    """
    rules = [make() for _ in range(N)]
    x = np.zeros((N, DIM), np.float32)
    for r in range(rounds):
        s = scale(r)
        out = np.stack([rules[i].outgoing(x[i], gradient_step(x[i], i, s), s) for i in range(N)])
        mixed = (w @ out.astype(np.float64)).astype(np.float32)
        x = np.stack([rules[i].incoming(mixed[i]) for i in range(N)])
    return x


def dpsgd(rounds: int) -> Any:
    x = np.zeros((N, DIM))
    for _ in range(rounds):
        x = W @ np.stack([gradient_step(x[i], i) for i in range(N)]).astype(np.float64)
    return x


def dpsgd_fixed_point() -> Any:
    """Solve x = W (x - alpha A (x - b)) for the stacked x, coordinate by coordinate."""
    m = np.eye(N) - W @ (np.eye(N) - ALPHA * np.diag(A[:, 0]))
    return np.linalg.solve(m, W @ (ALPHA * A * B))


def test_gradient_tracking_reaches_the_exact_optimum_and_dpsgd_does_not() -> None:
    tracked = run_rules(GradientTracking, 600)
    assert np.abs(tracked - OPTIMUM).max() < 1e-4
    plain = dpsgd(600)
    assert np.abs(plain - dpsgd_fixed_point()).max() < 1e-4  # D-PSGD has converged ...
    assert np.abs(plain - OPTIMUM).max() > 0.1  # ... to a point that is not the optimum


def test_qgm_reaches_dpsgds_fixed_point_the_momentum_changes_the_path() -> None:
    x = run_rules(lambda: QuasiGlobalMomentum(0.5), 600)
    assert np.abs(x - dpsgd_fixed_point()).max() < 1e-4
    # after a few rounds the momentum has moved further towards it than D-PSGD
    early = run_rules(lambda: QuasiGlobalMomentum(0.5), 10)
    target = dpsgd_fixed_point()
    assert np.abs(early - target).max() < np.abs(dpsgd(10) - target).max()


def test_the_average_tracker_is_the_average_step_every_round() -> None:
    rules = [GradientTracking() for _ in range(N)]
    x = np.random.default_rng(1).normal(size=(N, DIM)).astype(np.float32)
    for _ in range(5):
        trained = np.stack([gradient_step(x[i], i) for i in range(N)])
        out = np.stack([rules[i].outgoing(x[i], trained[i]) for i in range(N)])
        trackers = out[:, DIM:]
        assert np.allclose(trackers.mean(axis=0), (x - trained).mean(axis=0), atol=1e-5)
        mixed = (W @ out.astype(np.float64)).astype(np.float32)
        x = np.stack([rules[i].incoming(mixed[i]) for i in range(N)])


def test_under_a_decaying_rate_tracking_follows_base_rate_steps_and_reaches_the_optimum() -> None:
    rules = [GradientTracking() for _ in range(N)]
    x = np.random.default_rng(2).normal(size=(N, DIM)).astype(np.float32)
    scale = cosine(8)
    for r in range(8):
        s = scale(r)
        trained = np.stack([gradient_step(x[i], i, s) for i in range(N)])
        out = np.stack([rules[i].outgoing(x[i], trained[i], s) for i in range(N)])
        trackers = out[:, DIM:]
        # the average tracker is the average gradient step at the base rate ...
        assert np.allclose(trackers.mean(axis=0), (x - trained).mean(axis=0) / s, atol=1e-4)
        # ... and each node steps along its tracker at this round's rate
        assert np.allclose(out[:, :DIM], x - s * trackers, atol=1e-5)
        mixed = (W @ out.astype(np.float64)).astype(np.float32)
        x = np.stack([rules[i].incoming(mixed[i]) for i in range(N)])
    decayed = run_rules(GradientTracking, 600, scale=cosine(600))
    assert np.abs(decayed - OPTIMUM).max() < 1e-4


def test_a_core_tells_its_rule_each_rounds_scale() -> None:
    scale = cosine(8)
    hood_of = hoods(W)
    cores: dict[str, RoundCore] = {}
    for name in names(N):
        sync = SyncGossip(name, lambda r, name=name: hood_of(name, r))
        cores[name] = TrackedRoundCore(GossipRoundCore(sync), GradientTracking(), scale)

    class ScaledNet(TrainingNet):
        def start(self, name: str, round: int) -> None:
            core, x = self.cores[name], self.models[name]
            self.absorb(name, core.begin_round(round, self.now, x))
            trained = gradient_step(x, int(name), scale(round))
            self.absorb(name, core.start_round(round, trained, self.now))

    net = ScaledNet(cores, rounds=8).run(zeros(N))
    assert np.allclose(stack(net.models), run_rules(GradientTracking, 8, scale=scale), atol=1e-5)
    with pytest.raises(LocalProtocolError, match="scale"):
        GradientTracking().outgoing(np.zeros(DIM), np.zeros(DIM), 0.0)


def test_the_first_round_of_either_mode_is_dpsgds() -> None:
    assert np.allclose(run_rules(GradientTracking, 1), dpsgd(1), atol=1e-6)
    assert np.allclose(run_rules(lambda: QuasiGlobalMomentum(0.9), 1), dpsgd(1), atol=1e-6)


# --- as round cores, over frames ----------------------------------------------------------


class TrainingNet(Net):
    """The round-core scheduler, with one gradient step on f_i between the rounds."""

    def start(self, name: str, round: int) -> None:
        core, x = self.cores[name], self.models[name]
        self.absorb(name, core.begin_round(round, self.now, x))
        self.absorb(name, core.start_round(round, gradient_step(x, int(name)), self.now))


def plain_cores(w: Any, make: Callable[[], RoundRule]) -> dict[str, RoundCore]:
    hood_of = hoods(w)
    cores: dict[str, RoundCore] = {}
    for name in names(w.shape[0]):
        sync = SyncGossip(name, lambda r, name=name: hood_of(name, r))
        cores[name] = TrackedRoundCore(GossipRoundCore(sync), make())
    return cores


def zeros(n: int) -> dict[str, Any]:
    return {str(i): np.zeros(DIM, np.float32) for i in range(n)}


def stack(models: dict[str, Any]) -> Any:
    return np.stack([models[str(i)] for i in range(len(models))])


@pytest.mark.parametrize("make", [GradientTracking, lambda: QuasiGlobalMomentum(0.7)])
def test_cores_over_frames_equal_the_rules_mixed_by_the_matrix(make: Any) -> None:
    train = {str(i): 0.05 * i for i in range(N)}  # nodes at different speeds
    net = TrainingNet(plain_cores(W, make), rounds=8, train=train).run(zeros(N))
    assert np.allclose(stack(net.models), run_rules(make, 8), atol=1e-5)


@pytest.mark.parametrize("make", [GradientTracking, lambda: QuasiGlobalMomentum(0.7)])
def test_secure_tracked_rounds_equal_plain_ones_up_to_the_fixed_point_step(make: Any) -> None:
    w = metropolis_weights(small_graph())
    rule = make()
    inner = secure_cores(w, rule.width * DIM)
    cores: dict[str, RoundCore] = {n: TrackedRoundCore(c, make()) for n, c in inner.items()}
    secure = TrainingNet(cores, rounds=4).run(zeros(5))
    plain = TrainingNet(plain_cores(w, make), rounds=4).run(zeros(5))
    x = stack(plain.models)
    assert np.abs(stack(secure.models) - x).max() <= 8 * secure_tolerance(x)


def test_a_tracking_frame_carries_two_vectors_and_qgm_one() -> None:
    for make, width in ((GradientTracking, 2), (lambda: QuasiGlobalMomentum(0.9), 1)):
        core = plain_cores(W, make)["0"]
        core.begin_round(0, 0.0, np.zeros(DIM, np.float32))
        out = core.start_round(0, np.ones(DIM, np.float32), 0.0)
        plain = GossipRoundCore(SyncGossip("0", lambda r: hoods(W)("0", r)))
        model = np.ones(width * DIM, np.float32)
        reference = plain.start_round(0, model, 0.0)
        assert [len(f) for _, f in out.sends] == [len(f) for _, f in reference.sends]


@pytest.mark.parametrize("make", [GradientTracking, lambda: QuasiGlobalMomentum(0.7)])
def test_a_core_restarted_from_its_exported_state_continues_the_same(make: Any) -> None:
    whole = run_rules(make, 6)
    rules = [make() for _ in range(N)]
    x = np.zeros((N, DIM), np.float32)
    for k in range(6):
        if k == 3:  # restart every node from its exported arrays
            states = [r.export_state() for r in rules]
            rules = [make() for _ in range(N)]
            for r, s in zip(rules, states, strict=True):
                r.import_state(s)
        out = np.stack([rules[i].outgoing(x[i], gradient_step(x[i], i)) for i in range(N)])
        mixed = (W @ out.astype(np.float64)).astype(np.float32)
        x = np.stack([rules[i].incoming(mixed[i]) for i in range(N)])
    assert np.array_equal(x, whole)


def test_misuse_is_a_local_protocol_error() -> None:
    core = plain_cores(W, GradientTracking)["0"]
    with pytest.raises(LocalProtocolError, match="starts from"):
        core.begin_round(0, 0.0)
    with pytest.raises(LocalProtocolError, match="not begun"):
        core.start_round(0, np.zeros(DIM, np.float32), 0.0)
    with pytest.raises(LocalProtocolError, match="tracker and step"):
        GradientTracking().import_state({"tracker": np.zeros(2, np.float32)})
    with pytest.raises(LocalProtocolError, match="beta"):
        QuasiGlobalMomentum(1.0)
