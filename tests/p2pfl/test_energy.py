"""Energy estimates: hand-computed joules, and factors that cannot be right refused by name."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from p2pfl.energy import JOULES_PER_KWH, EnergySection, round_energy, run_energy
from p2pfl.errors import ConfigError
from p2pfl.tables import build

# 1 µJ per byte, 10 W per core, 2 cores, PUE 1.5: one second of training is 30 J.
FACTORS = EnergySection(joules_per_byte=1e-6, watts_per_core=10.0, cores=2, pue=1.5)


def test_round_energy_prices_bytes_and_core_seconds() -> None:
    result = round_energy(1_000_000, 3.0, FACTORS)
    assert result == pytest.approx({"network_j": 1.0, "compute_j": 90.0, "total_j": 91.0})


def test_the_defaults_are_the_documented_ones() -> None:
    factors = EnergySection()
    assert (factors.joules_per_byte, factors.watts_per_core, factors.cores, factors.pue) == (
        6.75e-6,
        12.0,
        1,
        1.0,
    )
    # 1 GB at the default is 0.06 kWh/GB halved five times (Aslan et al.'s 2015 figure, 2025).
    network = round_energy(1e9, 0.0, factors)["network_j"]
    assert network / JOULES_PER_KWH == pytest.approx(0.06 / 2**5)
    assert round_energy(0, 60.0, factors)["compute_j"] == pytest.approx(720.0)  # 12 W, 1 min


def test_run_energy_sums_rounds_over_all_nodes() -> None:
    rounds = [{"round": 1, "bytes_per_node": 1000.0}, {"round": 2, "bytes_per_node": 3000.0}]
    result = run_energy(rounds, nodes=4, train_seconds=10.0, factors=FACTORS)
    # Bytes: (1000 + 3000) × 4 nodes; compute: 10 node-seconds × 2 cores × 10 W × 1.5.
    assert result["bytes"] == pytest.approx(16_000)
    assert result["network_j"] == pytest.approx(0.016)
    assert result["compute_j"] == pytest.approx(300.0)
    assert result["total_j"] == pytest.approx(300.016)
    assert result["per_node_j"] == pytest.approx(75.004)
    assert result["total_kwh"] == pytest.approx(300.016 / 3.6e6)
    first, second = result["per_round"]
    assert first == pytest.approx(
        {
            "round": 1,
            "bytes": 4000.0,
            "compute_seconds": 5.0,
            "network_j": 0.004,
            "compute_j": 150.0,
            "total_j": 150.004,
        }
    )
    assert second["round"] == 2 and second["network_j"] == pytest.approx(0.012)
    assert result["factors"] == dataclasses.asdict(FACTORS)


def test_run_energy_takes_round_records_as_the_engines_make_them() -> None:
    from p2pfl.engines.common import RoundRecord

    records = [
        dataclasses.asdict(RoundRecord(r, None, None, None, None, 0.0, 2000.0, 0.1))
        for r in (1, 2, 3)
    ]
    result = run_energy(records, nodes=5, train_seconds=3.0, factors=FACTORS)
    assert [row["round"] for row in result["per_round"]] == [1, 2, 3]
    assert result["bytes"] == pytest.approx(30_000)
    assert result["compute_j"] == pytest.approx(90.0)


def test_a_run_without_rounds_still_counts_its_training() -> None:
    result = run_energy([], nodes=2, train_seconds=1.0, factors=FACTORS)
    assert result["per_round"] == [] and result["bytes"] == 0
    assert result["compute_j"] == pytest.approx(30.0) and result["total_j"] == pytest.approx(30.0)


def test_zero_factors_leave_a_term_out() -> None:
    factors = EnergySection(joules_per_byte=0.0, watts_per_core=0.0)
    assert round_energy(1e9, 100.0, factors)["total_j"] == 0.0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("joules_per_byte", -1e-9),
        ("joules_per_byte", math.nan),
        ("watts_per_core", -5.0),
        ("watts_per_core", math.inf),
        ("pue", 0.9),
        ("pue", True),
        ("cores", 0),
        ("cores", 1.5),
        ("cores", True),
    ],
)
def test_bad_factors_are_refused_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"energy\.{key} "):
        EnergySection(**{key: value})  # type: ignore[arg-type]


def test_the_section_builds_from_a_toml_table() -> None:
    section = build(EnergySection, {"joules_per_byte": 1e-7, "cores": 4}, "s.toml [energy]")
    assert section == EnergySection(joules_per_byte=1e-7, cores=4)
    with pytest.raises(ConfigError, match="unknown key 'watts'"):
        build(EnergySection, {"watts": 10}, "s.toml [energy]")
    with pytest.raises(ConfigError, match=r"energy\.pue"):
        build(EnergySection, {"pue": 0.5}, "s.toml [energy]")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: round_energy(-1, 0.0, FACTORS), "bytes_sent"),
        (lambda: round_energy(0, math.nan, FACTORS), "compute_seconds"),
        (lambda: run_energy([{"round": 1}], 2, 1.0, FACTORS), "bytes_per_node"),
        (lambda: run_energy([], 0, 1.0, FACTORS), "nodes"),
        (lambda: run_energy([], 2, -1.0, FACTORS), "train_seconds"),
    ],
)
def test_bad_measurements_are_a_value_error(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_measured_training_seconds_per_round_replace_the_even_spread() -> None:
    factors = EnergySection(joules_per_byte=0.0, watts_per_core=10.0)
    rounds = [
        {"round": 1, "bytes_per_node": 0.0, "train_seconds": 3.0},
        {"round": 2, "bytes_per_node": 0.0, "train_seconds": 1.0},
    ]
    result = run_energy(rounds, 2, 100.0, factors)  # the total is ignored when measured
    assert [r["compute_j"] for r in result["per_round"]] == [30.0, 10.0]
    partly = [rounds[0], {"round": 2, "bytes_per_node": 0.0, "train_seconds": None}]
    spread = run_energy(partly, 2, 4.0, factors)
    assert [r["compute_j"] for r in spread["per_round"]] == [20.0, 20.0]


def test_every_engine_measures_training_per_round() -> None:
    from p2pfl.scenario import load_scenario
    from p2pfl.simulate import simulate

    tiny = Path(__file__).resolve().parents[2] / "simulations" / "tiny.toml"
    for engine in ("vectorized", "protocol"):
        scenario = load_scenario(tiny, {"training.rounds": 2, "engine": engine})
        (run,) = simulate(scenario)["runs"]
        seconds = [r["train_seconds"] for r in run["rounds"]]
        assert all(s is not None and s > 0 for s in seconds), (engine, seconds)
        assert [r["compute_seconds"] for r in run["energy"]["per_round"]] == seconds
