"""The two engines: they agree in sync mode, and every mode runs and learns in both.

The scenarios are ``simulations/tiny.toml`` (six nodes on scikit-learn's
digits) with overrides; the data are loaded once per data section.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import topology
from p2pfl.engines import RunResult, prepare, run_engine
from p2pfl.engines.common import Setup
from p2pfl.errors import ConfigError
from p2pfl.scenario import Scenario, load_scenario
from p2pfl.spec import RunSpec
from topology.weights import push_sum_weights

TINY = Path(__file__).resolve().parents[3] / "simulations" / "tiny.toml"
CHANCE = 0.1  # ten classes


@pytest.fixture(scope="module")
def data_cache() -> dict[str, object]:
    return {}


def tiny(**overrides: object) -> Scenario:
    return load_scenario(TINY, dict(overrides))


def setup_of(scenario: Scenario, cache: dict[str, object]) -> Setup:
    key = repr(scenario.data) + str(scenario.seed)
    setup = prepare(scenario, cache.get(key))  # type: ignore[arg-type]
    cache[key] = setup.data
    return setup


def run(scenario: Scenario, engine: str, cache: dict[str, object]) -> RunResult:
    setup = setup_of(scenario, cache)
    return run_engine(engine, setup, engine)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


def final_accuracy(result: RunResult) -> float:
    acc = result.rounds[-1].acc_mean
    assert acc is not None
    return acc


# -- sync: the engines agree -------------------------------------------------------------


@pytest.fixture(scope="module")
def sync_runs(data_cache):
    sc = tiny()
    return {engine: run(sc, engine, data_cache) for engine in ("protocol", "vectorized")}


def test_sync_engines_agree_on_final_parameters(sync_runs):
    p, v = sync_runs["protocol"], sync_runs["vectorized"]
    assert p.final_params.shape == v.final_params.shape == (6, 64 * 10 + 10)
    assert p.node_names == v.node_names
    rel = relative(p.final_params, v.final_params)
    print(f"relative difference of the engines' final parameters: {rel:.2e}")
    assert rel <= 1e-4
    torch.testing.assert_close(p.final_params, v.final_params, rtol=1e-4, atol=1e-5)
    # and they did move: training happened, and the nodes still differ on a ring
    assert relative(v.final_params, v.final_params.mean(0, keepdim=True).expand_as(v.final_params))


def test_sync_engines_agree_round_by_round(sync_runs):
    p, v = sync_runs["protocol"], sync_runs["vectorized"]
    assert [r.round for r in p.rounds] == [r.round for r in v.rounds] == [1, 2, 3, 4]
    for a, b in zip(p.rounds, v.rounds, strict=True):
        assert a.acc_mean == pytest.approx(b.acc_mean, abs=1e-6)
        assert a.consensus == pytest.approx(b.consensus, rel=1e-3)


def test_sync_bytes_per_node_positive_and_equal(sync_runs):
    p, v = sync_runs["protocol"], sync_runs["vectorized"]
    for a, b in zip(p.rounds, v.rounds, strict=True):
        assert a.bytes_per_node > 0
        assert a.bytes_per_node == pytest.approx(b.bytes_per_node, rel=1e-9)
    # a ring: two dense float32 models out per node and round, plus headers
    dim = p.final_params.shape[1]
    assert 2 * 4 * dim < p.rounds[0].bytes_per_node < 2 * (4 * dim + 200)


def test_sync_learns(sync_runs):
    for result in sync_runs.values():
        assert final_accuracy(result) > 0.7
        assert result.stragglers == 0
        assert result.wall_total >= result.wall_train > 0


def test_bytes_per_node_equal_with_two_digit_names(data_cache):
    """With ten nodes or more, senders are named n10, n11...: the frames are longer."""
    sc = tiny(**{"data.nodes": 12, "training.rounds": 1, "eval.every": 1})
    p, v = (run(sc, e, data_cache) for e in ("protocol", "vectorized"))
    assert p.rounds[0].bytes_per_node == pytest.approx(v.rounds[0].bytes_per_node, rel=1e-9)


# -- choco -------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["protocol", "vectorized"])
def test_choco_without_compression_equals_sync(engine, sync_runs, data_cache):
    sc = tiny(**{"gossip.mode": "choco", "gossip.compression": "none", "gossip.gamma": 1.0})
    choco = run(sc, engine, data_cache)
    torch.testing.assert_close(
        choco.final_params, sync_runs[engine].final_params, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    ("engine", "compression"),
    [("vectorized", "quantize"), ("vectorized", "topk"), ("protocol", "quantize")],
)
def test_choco_with_compression_learns(engine, compression, data_cache, sync_runs):
    """The scenario defaults (4 bits, gamma 1) must learn, not drift back to chance."""
    sc = tiny(
        **{
            "gossip.mode": "choco",
            "gossip.compression": compression,
            "gossip.topk_fraction": 0.1,
            "training.rounds": 6,
        }
    )
    result = run(sc, engine, data_cache)
    accuracy = [r.acc_mean for r in result.rounds]
    print(f"choco {compression} on {engine}: accuracy per round {accuracy}")
    assert final_accuracy(result) > 5 * CHANCE
    assert final_accuracy(result) >= max(a for a in accuracy if a is not None) - 0.05
    dense = sync_runs[engine].rounds[0].bytes_per_node
    assert 0 < result.rounds[-1].bytes_per_node < 0.5 * dense


def test_choco_topk_engines_agree(data_cache):
    """Top-k is deterministic, so the engines must agree as closely as in sync mode."""
    sc = tiny(**{"gossip.mode": "choco", "gossip.compression": "topk", "gossip.topk_fraction": 0.1})
    p, v = (run(sc, e, data_cache) for e in ("protocol", "vectorized"))
    assert relative(p.final_params, v.final_params) <= 1e-4


@pytest.mark.parametrize("compression", ["quantize", "topk"])
def test_choco_compressed_bytes_agree_between_engines(compression, data_cache):
    sc = tiny(**{"gossip.mode": "choco", "gossip.compression": compression, "training.rounds": 1})
    p, v = (run(sc, e, data_cache) for e in ("protocol", "vectorized"))
    assert p.rounds[0].bytes_per_node == pytest.approx(v.rounds[0].bytes_per_node, rel=0.02)


# -- async -------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["protocol", "vectorized"])
def test_async_runs(engine, data_cache):
    result = run(tiny(**{"gossip.mode": "async"}), engine, data_cache)
    assert len(result.rounds) == 4
    assert torch.isfinite(result.final_params).all()
    assert final_accuracy(result) > 3 * CHANCE
    assert all(r.bytes_per_node > 0 for r in result.rounds)


@pytest.mark.parametrize("engine", ["protocol", "vectorized"])
def test_async_on_a_directed_graph(engine, data_cache):
    sc = tiny(**{"gossip.mode": "async", "topology.kind": "exponential-directed"})
    result = run(sc, engine, data_cache)
    assert final_accuracy(result) > 3 * CHANCE


# -- the protocol engine's clock -----------------------------------------------------------


def test_slow_node_with_timeout_gives_stragglers_and_completes(data_cache):
    rounds = 4
    sc = tiny(
        **{
            "clock.speeds": [1.0, 1.0, 1.0, 1.0, 1.0, 0.01],
            "gossip.round_timeout": 0.05,
            "training.rounds": rounds,
        }
    )
    result = run(sc, "protocol", data_cache)
    assert result.stragglers > 0
    assert [r.round for r in result.rounds] == list(range(1, rounds + 1))
    assert torch.isfinite(result.final_params).all()
    assert final_accuracy(result) > 3 * CHANCE
    # the slow node's 5 steps take 5 * 0.002 / 0.01 = 1 virtual second per round
    assert result.extra["virtual_time"] >= rounds * 1.0


def test_protocol_engine_is_deterministic(sync_runs, data_cache):
    again = run(tiny(), "protocol", data_cache)
    assert torch.equal(again.final_params, sync_runs["protocol"].final_params)


def test_bad_speeds_are_refused(data_cache):
    with pytest.raises(ConfigError, match="speeds"):
        run(tiny(**{"clock.speeds": [1.0, 2.0]}), "protocol", data_cache)


# -- combinations refused up front ---------------------------------------------------------


def test_choco_on_a_time_varying_topology_is_refused(data_cache):
    sc = tiny(**{"gossip.mode": "choco", "topology.kind": "one-peer-exponential", "data.nodes": 8})
    with pytest.raises(ConfigError, match="choco") as info:
        setup_of(sc, data_cache)
    assert "one-peer-exponential" in str(info.value)


def test_choco_on_random_per_round_graphs_is_refused(data_cache):
    sc = tiny(
        **{
            "gossip.mode": "choco",
            "topology.kind": "random-regular-per-round",
            "topology.degree": 2,
        }
    )
    with pytest.raises(ConfigError, match="choco"):
        setup_of(sc, data_cache)


def column_stochastic_only(n: int) -> topology.Topology:
    """A directed ring with one chord (0 -> 3): push-sum weights, not row-stochastic."""
    arcs = np.array([[i, (i + 1) % n] for i in range(n)] + [[0, 3]], dtype=np.int64)
    w = push_sum_weights(n, arcs)
    return topology.Topology.static(
        "ring-with-chord", w, directed=True, weights="push-sum", params={}
    )


@pytest.mark.parametrize("mode", ["sync", "choco"])
def test_directed_column_stochastic_topology_needs_async(mode, data_cache, monkeypatch):
    monkeypatch.setattr(RunSpec, "build_topology", lambda sc, n: column_stochastic_only(n))
    with pytest.raises(ConfigError, match="directed"):
        setup_of(tiny(**{"gossip.mode": mode}), data_cache)
    setup = setup_of(tiny(**{"gossip.mode": "async"}), data_cache)
    assert setup.topo.kind == "ring-with-chord"


def test_doubly_stochastic_directed_schedule_runs_in_sync(data_cache):
    """One-peer exponential is directed but doubly stochastic: D-PSGD is exact on it."""
    sc = tiny(**{"topology.kind": "one-peer-exponential", "data.nodes": 8})
    p, v = (run(sc, e, data_cache) for e in ("protocol", "vectorized"))
    assert relative(p.final_params, v.final_params) <= 1e-4
    assert final_accuracy(v) > 5 * CHANCE
