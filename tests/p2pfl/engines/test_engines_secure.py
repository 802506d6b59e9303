"""Secure aggregation in the simulated federation: same learning, nothing else changed.

With ``[secure] enabled = true`` every node learns only the masked sum of its
neighbours' models. These scenario tests check what that must not change and
what it must add:

- the result equals plain sync gossip within the fixed-point step, and the two
  engines (real masks on the virtual clock; the same codes summed without
  masks) agree;
- a scheduled dropout is recovered (stragglers reported, nobody abandons, the
  survivors mix without the dropped model); more than ``d - t`` dropouts in a
  round make receivers abandon and keep their own model;
- what secure mode cannot serve is refused before training, naming why;
- the report gives, per node, how many dropouts it survives (``d - t``);
- hospitals and 16-node Fashion-MNIST reach plain gossip's accuracy within
  0.1 point (slow).

Scenarios are ``simulations/tiny.toml`` (six nodes on digits) with overrides.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from p2pfl.cli import main
from p2pfl.engines import RunResult, prepare, run_engine
from p2pfl.engines.common import Setup
from p2pfl.errors import ConfigError, DataError
from p2pfl.scenario import Scenario, load_scenario
from p2pfl.simulate import simulate
from p2pfl.training import StackedTrainer
from protocols.secagg import error_bound, threshold_for

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "simulations" / "tiny.toml"
HOSPITALS = ROOT / "simulations" / "hospitals.toml"
FASHION = ROOT / "simulations" / "fashion_secure.toml"
POINT = 0.01  # one accuracy point; the issue asks for 0.1 point
ENGINES = ("protocol", "vectorized")
SECURE = {"secure.enabled": True}
COMPLETE = {"topology.kind": "complete", **SECURE}  # d = 5, t = 3: survives 2 dropouts


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
    return run_engine(engine, setup_of(scenario, cache), engine)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


def final_accuracy(result: RunResult) -> float:
    acc = result.rounds[-1].acc_mean
    assert acc is not None
    return acc


def local_models(setup: Setup, start: torch.Tensor, round: int) -> torch.Tensor:
    """Each node's own model after local training in ``round`` from ``start`` (n, D), no mixing.

    Uses one single-node trainer per node, as the protocol engine does, so the
    result is bit-identical to what the engine's nodes train.
    """
    out = start.clone()
    for i, nd in enumerate(setup.data.nodes):
        trainer = StackedTrainer(
            setup.model,
            [(nd.x_train, nd.y_train)],
            [i],
            setup.schedule,
            seed=setup.scenario.seed,
        )
        row = out[i : i + 1].clone()
        trainer.train_round(row, round)
        out[i] = row[0]
    return out


# -- secure equals plain, and the engines agree ---------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs(data_cache):
    return {
        "plain": run(tiny(), "protocol", data_cache),
        "protocol": run(tiny(**SECURE), "protocol", data_cache),
        "vectorized": run(tiny(**SECURE), "vectorized", data_cache),
    }


def test_secure_final_parameters_equal_plain_within_fixed_point(tiny_runs):
    error = relative(tiny_runs["protocol"].final_params, tiny_runs["plain"].final_params)
    assert 0 < error < 1e-3  # not bit-identical (codes are rounded), but within the step


def test_secure_accuracy_equals_plain_within_a_tenth_of_a_point(tiny_runs):
    plain, secure = final_accuracy(tiny_runs["plain"]), final_accuracy(tiny_runs["protocol"])
    assert abs(secure - plain) <= 0.1 * POINT, (secure, plain)


@pytest.mark.parametrize("kind", ["ring", "complete"])
def test_one_secure_round_is_plain_mixing_within_the_error_bound(kind, data_cache):
    """After one round (identical local training) the only difference is the fixed-point sum."""
    plain = run(tiny(**{"topology.kind": kind, "training.rounds": 1}), "protocol", data_cache)
    sc = tiny(**{"topology.kind": kind, "training.rounds": 1, **SECURE})
    setup = setup_of(sc, data_cache)
    secure = run_engine("protocol", setup, "protocol")
    degree = 2 if kind == "ring" else setup.n - 1
    # the decoded sum is within error_bound; the mix then divides by sum W = 1 and
    # adds float32 rounding of values of order 1.
    bound = error_bound(setup.scenario.secagg_config(), degree) + 1e-6
    worst = float((secure.final_params - plain.final_params).abs().max())
    assert 0 < worst <= bound, (worst, bound)


def test_engines_agree_in_secure_mode(tiny_runs):
    protocol, vectorized = tiny_runs["protocol"], tiny_runs["vectorized"]
    assert relative(vectorized.final_params, protocol.final_params) <= 1e-4
    assert [r.acc_mean for r in vectorized.rounds] == pytest.approx(
        [r.acc_mean for r in protocol.rounds], abs=1e-6
    )


def test_secure_run_reports_no_abandon_and_no_straggler(tiny_runs):
    for engine in ENGINES:
        assert tiny_runs[engine].extra["abandoned"] == 0
        assert tiny_runs[engine].stragglers == 0


def test_secure_traffic_is_counted(tiny_runs):
    """Masked codes are as large as float32 models; shares and reveals come on top."""
    plain = tiny_runs["plain"].rounds[-1].bytes_per_node
    secure = tiny_runs["protocol"].rounds[-1].bytes_per_node
    assert secure > plain


# -- the dropout path --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dropout_runs(data_cache):
    sc = tiny(**COMPLETE, **{"dropouts.schedule": [[2, 1]]})
    return {engine: run(sc, engine, data_cache) for engine in ENGINES}


def test_scheduled_dropout_round_completes_without_abandon(dropout_runs):
    result = dropout_runs["protocol"]
    assert [r.round for r in result.rounds] == [1, 2, 3, 4]
    assert torch.isfinite(result.final_params).all()
    assert result.extra["abandoned"] == 0
    # each of the five other receivers closed round 1 without n2
    assert result.stragglers == 5
    assert final_accuracy(result) > 0.5


def test_a_dropout_costs_the_masked_timeout_in_virtual_time(tiny_runs, dropout_runs):
    masked_timeout = tiny().secure.masked_timeout
    assert tiny_runs["protocol"].extra["virtual_time"] < 1.0
    assert dropout_runs["protocol"].extra["virtual_time"] >= masked_timeout


def test_engines_agree_over_a_dropout(dropout_runs):
    protocol, vectorized = dropout_runs["protocol"], dropout_runs["vectorized"]
    assert vectorized.extra["abandoned"] == 0
    assert relative(vectorized.final_params, protocol.final_params) <= 1e-4


def test_two_dropouts_in_two_rounds_complete(data_cache):
    sc = tiny(**COMPLETE, **{"dropouts.schedule": [[2, 1], [4, 2]]})
    results = {engine: run(sc, engine, data_cache) for engine in ENGINES}
    assert results["protocol"].stragglers == 10
    assert all(r.extra["abandoned"] == 0 for r in results.values())
    assert relative(results["vectorized"].final_params, results["protocol"].final_params) <= 1e-4


def test_survivors_mix_without_the_dropped_model_and_it_keeps_its_own(data_cache):
    """An independent recomputation of the dropout round, the last one (round 1 of 2).

    Receivers re-weight: x_i <- (W_ii y_i + sum_{j alive} W_ij y_j) / (W_ii + sum_{j alive} W_ij),
    with y the locally trained models; the dropped node keeps its own y.
    """
    dropped = 2
    first = run(tiny(**COMPLETE, **{"training.rounds": 1}), "protocol", data_cache)
    sc = tiny(**COMPLETE, **{"training.rounds": 2, "dropouts.schedule": [[dropped, 1]]})
    setup = setup_of(sc, data_cache)
    result = run_engine("protocol", setup, "protocol")
    trained = local_models(setup, first.final_params, 1).double()
    w = torch.as_tensor(setup.topo.mixing(1).toarray(), dtype=torch.float64)
    alive = torch.ones(setup.n, dtype=torch.float64)
    alive[dropped] = 0
    weights = w * alive[None, :]
    weights.fill_diagonal_(0)
    weights += torch.diag(torch.diagonal(w))
    expected = (weights @ trained) / weights.sum(dim=1, keepdim=True)
    expected[dropped] = trained[dropped]
    kept = float(weights.sum(dim=1).min())  # the mix divides the decoded sum by this
    bound = error_bound(setup.scenario.secagg_config(), setup.n - 2) / kept + 1e-6
    worst = float((result.final_params.double() - expected).abs().max())
    assert worst <= bound, (worst, bound)
    assert torch.equal(result.final_params[dropped], trained[dropped].float())


# -- the abandoned path ------------------------------------------------------------------------

TOO_MANY = [[0, 1], [1, 1], [2, 1]]  # 3 > d - t = 2 in round 1


@pytest.fixture(scope="module")
def abandoned_runs(data_cache):
    sc = tiny(**COMPLETE, **{"dropouts.schedule": TOO_MANY})
    return {engine: run(sc, engine, data_cache) for engine in ENGINES}


def test_more_than_d_minus_t_dropouts_make_receivers_abandon(abandoned_runs):
    for engine, result in abandoned_runs.items():
        # n3, n4 and n5 see 2 of 5 masked inputs (threshold 3): each abandons round 1
        assert result.extra["abandoned"] == 3, engine
        assert [r.round for r in result.rounds] == [1, 2, 3, 4], engine
        assert torch.isfinite(result.final_params).all(), engine


def test_engines_agree_over_an_abandoned_round(abandoned_runs):
    protocol, vectorized = abandoned_runs["protocol"], abandoned_runs["vectorized"]
    assert relative(vectorized.final_params, protocol.final_params) <= 1e-4


def test_abandoning_receivers_keep_their_own_model(data_cache):
    first = run(tiny(**COMPLETE, **{"training.rounds": 1}), "protocol", data_cache)
    sc = tiny(**COMPLETE, **{"training.rounds": 2, "dropouts.schedule": TOO_MANY})
    setup = setup_of(sc, data_cache)
    for engine in ENGINES:
        result = run_engine(engine, setup, engine)
        trained = local_models(setup, first.final_params, 1)
        # nobody mixed in round 1: survivors abandoned, the dropped kept their own
        assert relative(result.final_params, trained) <= 1e-5, engine
        assert result.rounds[-1].consensus > 0


def test_simulate_reports_abandoned_rounds(data_cache):
    sc = tiny(**COMPLETE, **{"dropouts.schedule": TOO_MANY, "training.rounds": 2})
    report = simulate(sc, engine="protocol")
    assert report["runs"][0]["secure"]["abandoned"] == 3


# -- sparse masking (SecAgg+) ------------------------------------------------------------------


def test_sparse_masking_engines_agree(data_cache):
    sc = tiny(**COMPLETE, **{"secure.sparse_k": 2, "dropouts.schedule": [[2, 1]]})
    protocol, vectorized = (run(sc, engine, data_cache) for engine in ENGINES)
    assert protocol.extra["abandoned"] == vectorized.extra["abandoned"] == 0
    assert relative(vectorized.final_params, protocol.final_params) <= 1e-4


def test_sparse_masking_engines_agree_over_dropouts(data_cache):
    """Two dropouts: within d - t = 2, but past k - 1 = 1, the sparse graph's guarantee.

    The protocol receiver abandons where the survivors' partner graph is
    disconnected (else it would learn partial sums); the vectorized twin must too.
    """
    sc = tiny(**COMPLETE, **{"secure.sparse_k": 2, "dropouts.schedule": [[0, 1], [2, 1]]})
    protocol, vectorized = (run(sc, engine, data_cache) for engine in ENGINES)
    assert protocol.extra["abandoned"] > 0
    assert vectorized.extra["abandoned"] == protocol.extra["abandoned"]
    assert relative(vectorized.final_params, protocol.final_params) <= 1e-4


# -- refusals ----------------------------------------------------------------------------------


def cli(capsys, tmp_path, *settings: str) -> tuple[int, str]:
    argv = ["simulate", str(TINY), "--out", str(tmp_path / "out")]
    for setting in settings:
        argv += ["--set", setting]
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("kind", ["path", "star"])
def test_a_node_with_one_neighbour_is_refused_by_name_and_degree(kind, capsys, tmp_path):
    code, err = cli(capsys, tmp_path, f"topology.kind={kind}", "secure.enabled=true")
    assert code == 2
    match = re.search(r"node 'n(\d+)': degree 1\b", err)
    assert match, err
    topo = prepare(tiny(**{"topology.kind": kind})).topo
    w = topo.mixing(0).tocsr()
    node = int(match.group(1))
    assert w[node].nnz - 1 == 1  # the node named really has a single neighbour
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_single_neighbour_refusal_happens_before_training(data_cache):
    with pytest.raises(ConfigError, match=r"node 'n0': degree 1"):
        setup_of(tiny(**{"topology.kind": "path", **SECURE}), data_cache)


def test_a_schedule_with_a_single_neighbour_step_is_refused_before_training(data_cache):
    """base-k (k = 2) on six nodes: two neighbours at step 0, one at step 1."""
    with pytest.raises(ConfigError, match=r"at step 1 of its schedule: .*node 'n\d+': degree 1"):
        setup_of(tiny(**{"topology.kind": "base-k", "topology.k": 2, **SECURE}), data_cache)


def test_an_overflowing_configuration_is_refused_with_the_bound(capsys, tmp_path, data_cache):
    # five neighbours x clip 8192 x scale 2^16 = 5 * 2^29 codes > 2^31 - 1
    settings = (
        "topology.kind=complete",
        "secure.enabled=true",
        "secure.scale=65536",
        "secure.clip=8192",
    )
    code, err = cli(capsys, tmp_path, *settings)
    assert code == 2
    assert "overflow" in err and "2147483647" in err, err
    assert "at most 3 neighbours" in err, err
    match = re.search(r"clip <= ([0-9.e+]+) for 5 neighbours", err)
    assert match, err
    # the bound given is the real one: at it the run is accepted, just above refused
    bound = float(match.group(1))
    scale = {"secure.scale": 65536}
    setup_of(tiny(**COMPLETE, **scale, **{"secure.clip": bound}), data_cache)
    with pytest.raises(ConfigError, match="overflow"):
        setup_of(tiny(**COMPLETE, **scale, **{"secure.clip": bound * 1.001}), data_cache)


def test_a_huge_scale_is_refused_with_the_bound(data_cache):
    with pytest.raises(ConfigError, match=r"overflow.*2\^31 - 1 = 2147483647"):
        setup_of(tiny(**SECURE, **{"secure.scale": 1e30}), data_cache)


@pytest.mark.parametrize("mode", ["choco", "async"])
def test_secure_needs_sync_gossip(mode):
    with pytest.raises(ConfigError, match="sync"):
        tiny(**SECURE, **{"gossip.mode": mode})


@pytest.mark.parametrize(
    ("dropouts", "match"),
    [
        ([[6, 1]], r"\[6, 1\] names no node"),  # nodes are 0..5
        ([[1, 4]], r"\[1, 4\] names no node .* or no round \(0..3\)"),  # rounds are 0..3
    ],
)
def test_dropouts_naming_a_missing_node_or_round_are_refused(dropouts, match, data_cache):
    with pytest.raises(ConfigError, match=match):
        setup_of(tiny(**SECURE, **{"dropouts.schedule": dropouts}), data_cache)


@pytest.mark.parametrize("dropouts", [[[1]], [[1, 2, 3]], [[-1, 0]]])
def test_malformed_dropouts_are_refused(dropouts):
    with pytest.raises(ConfigError, match="dropouts"):
        tiny(**SECURE, **{"dropouts.schedule": dropouts})


# -- the report ----------------------------------------------------------------------------


def test_report_gives_each_nodes_dropout_tolerance():
    sc = tiny(
        **SECURE,
        **{"training.rounds": 1, "sweep": {"topology.kind": ["ring", "complete"]}},
    )
    report = simulate(sc)
    tolerance = {run["topology"]: run["secure"]["dropout_tolerance"] for run in report["runs"]}
    names = [f"n{i}" for i in range(6)]
    cfg = sc.secagg_config()
    for kind, degree in (("ring", 2), ("complete", 5)):
        assert sorted(tolerance[kind]) == names
        assert set(tolerance[kind].values()) == {degree - threshold_for(cfg, degree)}
    assert set(tolerance["ring"].values()) == {0}
    assert set(tolerance["complete"].values()) == {2}
    for run_report in report["runs"]:
        assert run_report["secure"]["abandoned"] == 0
        assert run_report["secure"]["stragglers"] == 0


def test_report_tolerance_follows_the_threshold():
    report = simulate(tiny(**COMPLETE, **{"training.rounds": 1, "secure.threshold": 2}))
    assert set(report["runs"][0]["secure"]["dropout_tolerance"].values()) == {3}


def test_plain_report_has_no_secure_entry():
    report = simulate(tiny(**{"training.rounds": 1}))
    assert report["runs"][0]["secure"] is None


# -- must show: hospitals and Fashion-MNIST reach plain gossip's accuracy ----------------------


@pytest.fixture(scope="module")
def hospitals():
    """Both topologies (ring, complete) without DP, plain and with ``secure.enabled=true``."""
    sweep = {"topology.kind": ["ring", "complete"]}
    return {
        secure: simulate(load_scenario(HOSPITALS, {"secure.enabled": secure, "sweep": sweep}))
        for secure in (False, True)
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ring", "complete"])
def test_hospitals_secure_reaches_plain_accuracy(hospitals, kind):
    def accuracy(secure: bool) -> float:
        (run_report,) = [r for r in hospitals[secure]["runs"] if r["topology"] == kind]
        return float(run_report["final"]["acc_mean"])

    plain, secure = accuracy(False), accuracy(True)
    print(f"hospitals {kind}: plain {plain:.5f}, secure {secure:.5f}")
    assert abs(secure - plain) <= 0.1 * POINT, f"{kind}: plain {plain:.5f}, secure {secure:.5f}"


@pytest.mark.slow
def test_fashion_mnist_secure_reaches_plain_accuracy():
    try:
        report = simulate(load_scenario(FASHION))
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST absent ({exc}); apt-get install dataset-fashion-mnist")
    runs = {r["label"]: r for r in report["runs"]}
    plain = runs["secure.enabled=False"]
    secure = runs["secure.enabled=True"]
    assert plain["secure"] is None
    assert set(secure["secure"]["dropout_tolerance"].values()) == {1}  # d = 4, t = 3
    assert secure["nodes"] == 16 and secure["parameters"] > 200_000
    a, b = plain["final"]["acc_mean"], secure["final"]["acc_mean"]
    print(f"fashion-mnist 16 nodes: plain {a:.5f}, secure {b:.5f}")
    assert math.isfinite(b)
    assert abs(b - a) <= 0.1 * POINT, f"plain {a:.5f}, secure {b:.5f}"
