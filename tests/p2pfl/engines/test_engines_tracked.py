"""Gradient tracking and quasi-global momentum in both simulators, plain and secure.

The protocol engine drives the round cores (``protocols.rounds.tracked``) over
frames; the vectorized engine applies the same rules to stacked rows
(``p2pfl.engines.tracked``). They must end with the same parameters, count the
same bytes (gradient tracking's frames carry two vectors), and secure mode must
equal plain mixing up to the fixed-point step. Scenarios: ``simulations/tiny.toml``
(six nodes on a ring, digits) with overrides.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from p2pfl.engines import RunResult, prepare, run_engine
from p2pfl.engines.sharded import _refuse_unsupported
from p2pfl.errors import ConfigError
from p2pfl.scenario import Scenario, load_scenario

TINY = Path(__file__).resolve().parents[3] / "simulations" / "tiny.toml"
MODES = ("tracking", "qgm")
SECURE = {"secure.enabled": True}


def tiny(mode: str, **overrides: object) -> Scenario:
    return load_scenario(TINY, {"gossip.mode": mode, "gossip.qgm_beta": 0.5, **overrides})


@pytest.fixture(scope="module")
def cache() -> dict[str, object]:
    return {}


def run(scenario: Scenario, engine: str, cache: dict[str, object]) -> RunResult:
    key = repr(scenario.data) + str(scenario.seed)
    setup = prepare(scenario, cache.get(key))  # type: ignore[arg-type]
    cache[key] = setup.data
    return run_engine(engine, setup, engine)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


@pytest.fixture(scope="module")
def runs(cache: dict[str, object]) -> dict[tuple[str, str, bool], RunResult]:
    out = {}
    for mode in (*MODES, "sync"):
        for engine in ("protocol", "vectorized"):
            out[mode, engine, False] = run(tiny(mode), engine, cache)
    for mode in MODES:
        for engine in ("protocol", "vectorized"):
            out[mode, engine, True] = run(tiny(mode, **SECURE), engine, cache)
    return out


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_the_engines_agree(mode: str, secure: bool, runs: dict) -> None:
    p, v = runs[mode, "protocol", secure], runs[mode, "vectorized", secure]
    assert relative(p.final_params, v.final_params) <= 1e-4
    for a, b in zip(p.rounds, v.rounds, strict=True):
        if secure:  # the vectorized engine counts the masked inputs alone, not the shares
            assert a.bytes_per_node > b.bytes_per_node > 0
        else:
            assert a.bytes_per_node == pytest.approx(b.bytes_per_node, rel=1e-9)
    assert p.stragglers == v.stragglers == 0


@pytest.mark.parametrize("mode", MODES)
def test_the_engines_agree_under_a_cosine_rate(mode: str, cache: dict[str, object]) -> None:
    scenario = tiny(mode, **{"training.lr_schedule": "cosine"})
    p, v = run(scenario, "protocol", cache), run(scenario, "vectorized", cache)
    assert relative(p.final_params, v.final_params) <= 1e-4
    constant = run(tiny(mode), "vectorized", cache)
    assert relative(v.final_params, constant.final_params) > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_is_its_own_and_learns(mode: str, runs: dict) -> None:
    ours, sync = runs[mode, "vectorized", False], runs["sync", "vectorized", False]
    assert relative(ours.final_params, sync.final_params) > 1e-3  # not D-PSGD under a name
    acc = ours.rounds[-1].acc_mean
    assert acc is not None and acc > 0.7


@pytest.mark.parametrize("mode", MODES)
def test_secure_equals_plain_within_the_fixed_point_step(mode: str, runs: dict) -> None:
    error = relative(
        runs[mode, "protocol", True].final_params, runs[mode, "protocol", False].final_params
    )
    assert 0 < error < 1e-3


def test_gradient_tracking_sends_two_vectors_and_qgm_one(runs: dict) -> None:
    sync = runs["sync", "protocol", False].rounds[0].bytes_per_node
    dim = runs["sync", "protocol", False].final_params.shape[1]
    tracking = runs["tracking", "protocol", False].rounds[0].bytes_per_node
    qgm = runs["qgm", "protocol", False].rounds[0].bytes_per_node
    assert qgm == sync
    assert tracking - sync == pytest.approx(2 * 4 * dim, rel=1e-6)  # ring: two frames a node


def test_the_sharded_engine_refuses_the_tracked_modes(cache: dict[str, object]) -> None:
    setup = prepare(tiny("tracking"), cache.get(repr(tiny("tracking").data) + "1"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not simulated sharded"):
        _refuse_unsupported(setup)
