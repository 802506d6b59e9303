"""Differential privacy: the accountant, the config checks, the budget per node, the noise.

- ``p2pfl.privacy.accountant`` reports what opacus's accountants report for the same
  schedule, and ``calibrate`` finds the smallest noise that meets a target;
- settings that cannot work are refused, saying why (in the scenario, or when the run
  is prepared and the schedule is known);
- a heart-disease simulation reports, per node, the epsilon opacus gives for that node's
  (noise multiplier, sample rate, steps), for DP-SGD and for the delta mechanism in
  plain and in secure mode; both engines train the same under DP;
- ``privatize_`` clips and noises row by row, and ``share_ratio`` is the hand-computed
  worst-survivor ratio.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

import topology
from p2pfl.engines import prepare, run_engine
from p2pfl.errors import ConfigError
from p2pfl.privacy import accountant
from p2pfl.privacy.noise import privatize_, share_ratio, worst_survivor_norm
from p2pfl.scenario import Scenario, scenario_from_table
from p2pfl.simulate import simulate

DELTA = 1e-5
SCHEDULES = [(1.1, 1.0, 20), (0.9, 0.05, 400)]  # whole-delta rounds; Poisson-sampled steps


@pytest.fixture(scope="module")
def data_cache() -> dict[str, object]:
    return {}


def heart(**sections: object) -> Scenario:
    """Four hospitals on a ring, a few rounds; ``sections`` replace whole tables."""
    table: dict[str, object] = {
        "name": "dp",
        "seed": 0,
        "device": "cpu",
        "data": {"dataset": "heart", "partition": "natural", "nodes": 4, "test_fraction": 0.25},
        "training": {"rounds": 5, "batch_size": 32, "lr": 0.02},
        "topology": {"kind": "ring"},
        "privacy": {"mechanism": "dp-sgd", "epsilon": 8.0, "clip": 1.0},
    }
    table.update(sections)
    return scenario_from_table(table)


def setup_of(scenario: Scenario, cache: dict[str, object]):
    key = repr(scenario.data) + str(scenario.seed)
    setup = prepare(scenario, cache.get(key))  # type: ignore[arg-type]
    cache[key] = setup.data
    return setup


def opacus_epsilon(schedule: list[tuple[float, float, int]], delta: float, kind: str) -> float:
    acc = RDPAccountant() if kind == "rdp" else PRVAccountant()
    for z, q, steps in schedule:
        for _ in range(steps):
            acc.step(noise_multiplier=z, sample_rate=q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus's note on the RDP order grid
        return float(acc.get_epsilon(delta))


# --- the accountant ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rdp", "prv"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=["q=1", "q<1"])
def test_epsilon_is_opacus_value_for_the_schedule(kind, schedule):
    ours = accountant.epsilon([schedule], DELTA, kind)
    theirs = opacus_epsilon([schedule], DELTA, kind)
    assert ours > 0
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_epsilon_of_a_mixed_history_and_of_nothing():
    history = [(1.1, 1.0, 10), (2.0, 0.1, 50)]
    assert accountant.epsilon(history, DELTA) == pytest.approx(
        opacus_epsilon(history, DELTA, "rdp"), rel=1e-6
    )
    assert accountant.epsilon([], DELTA) == 0.0
    assert accountant.epsilon([(1.0, 1.0, 0)], DELTA) == 0.0


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_calibrate_finds_the_smallest_noise_meeting_the_target(kind):
    target, q, steps = 4.0, 0.05, 300
    z = accountant.calibrate(target, DELTA, q, steps, accountant=kind)
    spent = opacus_epsilon([(z, q, steps)], DELTA, kind)
    assert spent <= target
    assert spent >= target - 0.011  # opacus's binary search stops within 0.01
    assert opacus_epsilon([(0.99 * z, q, steps)], DELTA, kind) > target


def test_calibrate_refuses_a_target_past_the_noise_limit():
    with pytest.raises(ConfigError, match="cannot meet the target"):
        accountant.calibrate(0.5, DELTA, 1.0, 100, max_noise_multiplier=2.0)
    with pytest.raises(ConfigError, match="more than 10\\^6"):
        accountant.calibrate(1e-6, DELTA, 1.0, 100, max_noise_multiplier=100.0)


def test_check_meets_returns_the_spend_or_refuses():
    spent = accountant.check_meets(1.1, 100.0, DELTA, 1.0, 20)
    assert spent == pytest.approx(opacus_epsilon([(1.1, 1.0, 20)], DELTA, "rdp"), rel=1e-6)
    with pytest.raises(ConfigError, match=r"more than the target 1\.0"):
        accountant.check_meets(1.1, 1.0, DELTA, 1.0, 20)


# --- what is refused ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        ({"mechanism": "dp-sgd", "epsilon": 8.0}, "noise without clipping"),
        ({"mechanism": "delta", "epsilon": 8.0}, "noise without clipping"),
        ({"mechanism": "delta", "noise_multiplier": 1.0}, "noise without clipping"),
        ({"mechanism": "delta", "epsilon": 0.0, "clip": 1.0}, "epsilon must be positive"),
        ({"mechanism": "delta", "epsilon": -1.0, "clip": 1.0}, "epsilon must be positive"),
        ({"mechanism": "delta", "epsilon": 8.0, "clip": 1.0, "delta": 1.0}, r"delta must be"),
        ({"mechanism": "delta", "epsilon": 8.0, "clip": 1.0, "delta": 0.0}, r"delta must be"),
        ({"mechanism": "gaussian", "epsilon": 8.0, "clip": 1.0}, "mechanism must be one of"),
        ({"mechanism": "delta", "epsilon": 8.0, "clip": 1.0, "accountant": "gdp"}, "accountant"),
        ({"mechanism": "none", "epsilon": 8.0}, "mechanism is 'none'"),
        ({"mechanism": "delta", "clip": 1.0}, "needs privacy.epsilon"),
        ({"mechanism": "delta", "clip": 0.0, "epsilon": 8.0}, "noise without clipping"),
        ({"mechanism": "dp-sgd", "clip": 1.0, "noise_multiplier": 0.0}, "noise_multiplier"),
    ],
)
def test_scenario_refuses_privacy_that_cannot_work(privacy, message):
    with pytest.raises(ConfigError, match=message):
        heart(privacy=privacy)


def test_scenario_refuses_an_unknown_privacy_key():
    with pytest.raises(ConfigError, match="unknown key 'epsilonn'"):
        heart(privacy={"mechanism": "delta", "epsilonn": 8.0, "clip": 1.0})


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        # 5 whole-delta rounds at epsilon 1e-4 need a noise multiplier far past 100
        ({"mechanism": "delta", "epsilon": 1e-4, "clip": 1.0}, "cannot meet the target"),
        (
            {"mechanism": "delta", "epsilon": 0.5, "clip": 1.0, "max_noise_multiplier": 2.0},
            "past privacy.max_noise_multiplier = 2.0",
        ),
        (
            {"mechanism": "delta", "epsilon": 1.0, "noise_multiplier": 1.0, "clip": 1.0},
            "noise multiplier 1.0 over 5 steps .* more than the target 1.0",
        ),
        (
            {"mechanism": "dp-sgd", "epsilon": 0.5, "noise_multiplier": 0.5, "clip": 1.0},
            "more than the target 0.5",
        ),
        (
            {"mechanism": "delta", "epsilon": 8.0, "clip": 1.0, "opt_in": ["Atlantis"]},
            r"privacy.opt_in names \['Atlantis'\], which are not sites",
        ),
    ],
)
def test_prepare_refuses_a_schedule_that_cannot_meet_the_target(privacy, message, data_cache):
    scenario = heart(privacy=privacy)  # valid on its own: the schedule decides
    with pytest.raises(ConfigError, match=message):
        setup_of(scenario, data_cache)


def test_epsilon_inf_is_the_no_dp_run(data_cache):
    no_dp = {"mechanism": "dp-sgd", "epsilon": math.inf, "clip": 1.0}
    setup = setup_of(heart(privacy=no_dp), data_cache)
    assert setup.budget is None
    report = simulate(heart(privacy=no_dp))
    p = report["runs"][0]["privacy"]
    assert p["mechanism"] == "none" and p["target_epsilon"] is None and "nodes" not in p


# --- the budget a simulation reports ----------------------------------------------


def test_dpsgd_report_states_opacus_epsilon_per_node(data_cache):
    scenario = heart()
    setup = setup_of(scenario, data_cache)
    report = simulate(scenario)
    p = report["runs"][0]["privacy"]
    assert p["mechanism"] == "dp-sgd" and p["target_epsilon"] == 8.0 and p["delta"] == DELTA
    nodes = p["nodes"]
    assert [n["node"] for n in nodes] == [nd.name for nd in setup.data.nodes]
    assert len(nodes) == 4
    sizes = [int(nd.x_train.shape[0]) for nd in setup.data.nodes]
    assert len(set(sizes)) == 4  # sites of different sizes ...
    assert len({n["sample_rate"] for n in nodes}) == 4  # ... spend at different rates
    for n, size in zip(nodes, sizes, strict=True):
        assert n["sample_rate"] == pytest.approx(32 / size)
        assert n["steps"] == 5 * setup.schedule.steps_for(size)
        assert n["noise_std"] == 0.0
        assert 8.0 - 0.011 <= n["epsilon"] <= 8.0
        theirs = opacus_epsilon(
            [(n["noise_multiplier"], n["sample_rate"], n["steps"])], DELTA, "rdp"
        )
        assert n["epsilon"] == pytest.approx(theirs, rel=1e-6)
    assert p["epsilon_max"] == max(n["epsilon"] for n in nodes)


def test_fixed_noise_reports_what_it_spends(data_cache):
    scenario = heart(privacy={"mechanism": "dp-sgd", "noise_multiplier": 1.3, "clip": 1.0})
    report = simulate(scenario)
    for n in report["runs"][0]["privacy"]["nodes"]:
        assert n["noise_multiplier"] == 1.3
        theirs = opacus_epsilon([(1.3, n["sample_rate"], n["steps"])], DELTA, "rdp")
        assert n["epsilon"] == pytest.approx(theirs, rel=1e-6)


def delta_privacy(**extra: object) -> dict[str, object]:
    return {"mechanism": "delta", "epsilon": 8.0, "clip": 0.5, **extra}


def test_delta_mechanism_plain_every_node_adds_the_full_noise():
    report = simulate(heart(privacy=delta_privacy()))
    p = report["runs"][0]["privacy"]
    z = accountant.calibrate(8.0, DELTA, 1.0, 5)
    assert p["share_of_full_noise"] is None
    spent = opacus_epsilon([(z, 1.0, 5)], DELTA, "rdp")
    for n in p["nodes"]:
        assert (n["sample_rate"], n["steps"]) == (1.0, 5)
        assert n["noise_multiplier"] == pytest.approx(z)
        assert n["noise_std"] == pytest.approx(z * 2 * 0.5)
        assert n["epsilon"] == pytest.approx(spent, rel=1e-6)
        assert 0 < n["epsilon"] <= 8.0
    assert p["delta_norm_median"] > 0


@pytest.mark.parametrize("kind", ["ring", "complete"])
def test_delta_mechanism_secure_distributes_the_noise(kind):
    topo = {"kind": kind}
    plain = simulate(heart(privacy=delta_privacy(), topology=topo))["runs"][0]["privacy"]
    secure = simulate(heart(privacy=delta_privacy(), topology=topo, secure={"enabled": True}))[
        "runs"
    ][0]["privacy"]
    z = accountant.calibrate(8.0, DELTA, 1.0, 5)
    full = z * 2 * 0.5
    assert 0 < secure["share_of_full_noise"] < 1
    stds = {n["noise_std"] for n in secure["nodes"]}
    assert len(stds) == 1
    (share,) = stds
    assert share == pytest.approx(full * secure["share_of_full_noise"])
    assert share < min(n["noise_std"] for n in plain["nodes"])
    for n in secure["nodes"]:
        assert n["noise_multiplier"] >= z * (1 - 1e-9)
        theirs = opacus_epsilon([(n["noise_multiplier"], 1.0, 5)], DELTA, "rdp")
        assert n["epsilon"] == pytest.approx(theirs, rel=1e-6)
        assert 0 < n["epsilon"] <= 8.0


# --- both engines under DP ---------------------------------------------------------


@pytest.mark.parametrize(
    "privacy",
    [
        {"mechanism": "dp-sgd", "epsilon": 8.0, "clip": 1.0},
        {"mechanism": "delta", "epsilon": 8.0, "clip": 0.5},
    ],
    ids=["dp-sgd", "delta"],
)
def test_engines_agree_under_dp(privacy, data_cache):
    scenario = heart(privacy=privacy)
    vec = run_engine("vectorized", setup_of(scenario, data_cache), "v")
    pro = run_engine("protocol", setup_of(scenario, data_cache), "p")
    torch.testing.assert_close(vec.final_params, pro.final_params, rtol=1e-4, atol=1e-5)
    assert vec.rounds[-1].acc_mean == pytest.approx(pro.rounds[-1].acc_mean, abs=1e-6)
    no_dp = run_engine(
        "vectorized", setup_of(heart(privacy={"mechanism": "none"}), data_cache), "n"
    )
    # the noise is there: without it the models are elsewhere
    assert float((no_dp.final_params - vec.final_params).abs().max()) > 1e-3


# --- privatize_ ----------------------------------------------------------------------


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_privatize_clips_large_deltas_and_keeps_small_ones():
    g = torch.Generator().manual_seed(0)
    before = torch.randn(2, 50, generator=g)
    direction = torch.randn(2, 50, generator=g)
    direction /= torch.linalg.vector_norm(direction, dim=1, keepdim=True)
    after = before + direction * torch.tensor([[5.0], [0.5]])
    expected_small = after[1].clone()
    norms = privatize_(after, before, 1.0, [0.0, 0.0], generators(1, 2))
    assert norms == pytest.approx([5.0, 0.5], rel=1e-5)
    clipped = after[0] - before[0]
    assert float(torch.linalg.vector_norm(clipped)) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(clipped, direction[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after[1], expected_small)


def test_privatize_noise_has_the_given_std():
    d = 200_000
    before = torch.zeros(2, d)
    after = before.clone()  # delta 0: nothing clipped, only noise
    privatize_(after, before, 1.0, [0.5, 0.0], generators(3, 4))
    assert float(after[0].std()) == pytest.approx(0.5, rel=0.01)
    assert abs(float(after[0].mean())) < 0.01
    assert torch.count_nonzero(after[1]) == 0  # std 0 adds nothing


def test_privatize_rows_use_their_own_generators():
    g = torch.Generator().manual_seed(5)
    before = torch.randn(3, 100, generator=g)
    after = before + 0.1 * torch.randn(3, 100, generator=g)
    forward = after.clone()
    privatize_(forward, before.clone(), 1.0, [0.3, 0.2, 0.1], generators(10, 11, 12))
    order = [2, 0, 1]
    backward = after[order].clone()
    std = [[0.3, 0.2, 0.1][i] for i in order]
    privatize_(backward, before[order].clone(), 1.0, std, generators(*[10 + i for i in order]))
    torch.testing.assert_close(backward, forward[order], rtol=0, atol=0)
    # and one shared stream would not give that
    shared = torch.Generator().manual_seed(10)
    again = after.clone()
    privatize_(again, before.clone(), 1.0, [0.3, 0.2, 0.1], [shared] * 3)
    assert not torch.equal(again, forward)


# --- the distributed noise share ---------------------------------------------------


def test_share_ratio_complete_graph_of_four_by_hand():
    # Metropolis on K4: every weight 1/(3+1), so the worst survivors of a sender are
    # the sender and t-1 others of the same weight: ratio 1/sqrt(t).
    w = topology.build("complete", 4, weights="metropolis").mixing(0)
    assert w.toarray() == pytest.approx(np.full((4, 4), 0.25))
    for t in (2, 3):
        ratio, per_sender = share_ratio([w], lambda d, t=t: t)
        assert ratio == pytest.approx(1 / math.sqrt(t))
        assert per_sender == pytest.approx([1 / math.sqrt(t)] * 4)


def test_share_ratio_uneven_weights_by_hand():
    # receiver 0 hears 1, 2, 3 with weights 0.1, 0.2, 0.3; receivers 1..3 hear 0 alone.
    w = np.array(
        [
            [0.4, 0.1, 0.2, 0.3],
            [0.1, 0.9, 0.0, 0.0],
            [0.2, 0.0, 0.8, 0.0],
            [0.3, 0.0, 0.0, 0.7],
        ]
    )
    ratio, per_sender = share_ratio([sp.csr_matrix(w)], lambda d: 2)
    # t = 2: the sender and the lightest other survive.
    from_0 = [0.1 / math.sqrt(0.01 + 0.04), 0.2 / math.sqrt(0.04 + 0.01), 0.3 / math.sqrt(0.1)]
    # a receiver with one neighbour: that neighbour is all it hears, ratio 1 for sender 0
    assert per_sender == pytest.approx([1.0, *from_0])
    assert ratio == pytest.approx(1.0)
    # without the single-neighbour receivers, t = 3 keeps everybody
    hub = w.copy()
    hub[1:, 0] = 0
    _, per_sender = share_ratio([sp.csr_matrix(hub)], lambda d: 3)
    assert per_sender == pytest.approx([0.0] + [v / math.sqrt(0.14) for v in (0.1, 0.2, 0.3)])
    assert worst_survivor_norm([0.1, 0.2], 0.3, 2) == pytest.approx(math.sqrt(0.1))


def test_share_ratio_takes_the_worst_step_of_a_schedule():
    a = sp.csr_matrix(np.full((4, 4), 0.25))
    b = sp.csr_matrix(
        np.array([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]])
    )
    ratio, _ = share_ratio([a, b], lambda d: 2)
    assert ratio == pytest.approx(1.0)  # step b: a single neighbour hides nothing
    ratio, _ = share_ratio([a], lambda d: 2)
    assert ratio == pytest.approx(1 / math.sqrt(2))


def test_dp_sgd_runs_on_the_cpu_when_the_device_is_auto():
    """opacus trains one small model at a time: ``auto`` must not pick a GPU for it."""
    from p2pfl.engines.common import _device_for

    assert _device_for(heart(device="auto")) == "cpu"
    assert _device_for(heart(device="auto", privacy={"mechanism": "none"})) == "auto"
    off = {"mechanism": "dp-sgd", "epsilon": math.inf, "clip": 1.0}
    assert _device_for(heart(device="auto", privacy=off)) == "auto"
