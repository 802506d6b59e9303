"""Scenario files: unknown keys and wrong types rejected by name, overrides, sweeps, round trip."""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path

import pytest
import tomli_w

from p2pfl.errors import ConfigError
from p2pfl.scenario import (
    Scenario,
    expand_sweep,
    load_scenario,
    parse_value,
    scenario_from_table,
    to_table,
)

SIMULATIONS = Path(__file__).resolve().parents[2] / "simulations"
SHIPPED = sorted(SIMULATIONS.glob("*.toml"))


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# -- unknown keys and types ------------------------------------------------------------


def test_unknown_key_in_a_section_names_key_and_file(tmp_path):
    path = write(
        tmp_path,
        """
        [training]
        rounds = 3
        learning_rate = 0.1
        """,
        "typo.toml",
    )
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    message = str(info.value)
    assert "learning_rate" in message
    assert "typo.toml" in message
    assert "[training]" in message


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    path = write(tmp_path, 'nmae = "x"\nseed = 1\n', "top.toml")
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert "nmae" in str(info.value)
    assert "top.toml" in str(info.value)


def test_unknown_section_is_an_unknown_key(tmp_path):
    path = write(tmp_path, "[trainig]\nrounds = 3\n")
    with pytest.raises(ConfigError, match="trainig"):
        load_scenario(path)


def test_section_that_is_not_a_table(tmp_path):
    path = write(tmp_path, "training = 3\n")
    with pytest.raises(ConfigError, match="training"):
        load_scenario(path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[training]\nrounds = "ten"\n', "rounds"),
        ("[training]\nrounds = 2.5\n", "rounds"),
        ("[training]\nrounds = true\n", "rounds"),
        ('[training]\nlr = "fast"\n', "lr"),
        ("[data]\nnodes = [4]\n", "nodes"),
        ('[clock]\nspeeds = ["fast"]\n', "speeds"),
        ("[clock]\nspeeds = 1.0\n", "speeds"),
        ("[baselines]\npooled = 1\n", "pooled"),
        ("seed = 1.5\n", "seed"),
        ("name = 3\n", "name"),
        ('[model]\nhidden = [16, "x"]\n', "hidden"),
        ('[data]\nmax_train_samples = "all"\n', "max_train_samples"),
    ],
)
def test_wrong_types_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key):
        load_scenario(write(tmp_path, text))


def test_ints_are_accepted_for_floats_and_none_for_optionals(tmp_path):
    sc = load_scenario(write(tmp_path, "[training]\nlr = 1\n[clock]\nspeeds = [1, 0.5]\n"))
    assert sc.training.lr == 1.0 and isinstance(sc.training.lr, float)
    assert sc.clock.speeds == [1.0, 0.5]
    assert sc.data.max_train_samples is None


@pytest.mark.parametrize(
    "text",
    [
        'engine = "gpu"\n',
        '[gossip]\nmode = "gossipy"\n',
        "[training]\nrounds = 0\n",
        "[eval]\nevery = 0\n",
    ],
)
def test_invalid_values(tmp_path, text):
    with pytest.raises(ConfigError):
        load_scenario(write(tmp_path, text))


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_scenario(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(write(tmp_path, "[training\n"))


# -- overrides ---------------------------------------------------------------------------


def test_dotted_overrides(tmp_path):
    path = write(tmp_path, '[training]\nrounds = 3\n[topology]\nkind = "ring"\n')
    sc = load_scenario(
        path,
        {
            "training.rounds": 7,
            "training.lr": 0.5,
            "topology.kind": "complete",
            "seed": 9,
            "clock.speeds": [1.0, 2.0],
        },
    )
    assert sc.training.rounds == 7
    assert sc.training.lr == 0.5
    assert sc.topology.kind == "complete"
    assert sc.seed == 9
    assert sc.clock.speeds == [1.0, 2.0]


def test_override_creates_a_missing_section():
    sc = scenario_from_table({}, "t", {"gossip.compression": "topk"})
    assert sc.gossip.compression == "topk"


def test_override_with_unknown_key_is_rejected(tmp_path):
    path = write(tmp_path, "[training]\nrounds = 3\n")
    with pytest.raises(ConfigError, match="roundz"):
        load_scenario(path, {"training.roundz": 2})
    with pytest.raises(ConfigError, match="nosuch"):
        load_scenario(path, {"nosuch.rounds": 2})


def test_override_through_a_non_table_is_rejected():
    with pytest.raises(ConfigError, match="seed"):
        scenario_from_table({"seed": 1}, "t", {"seed.x": 2})


def test_override_type_checked():
    with pytest.raises(ConfigError, match="rounds"):
        scenario_from_table({}, "t", {"training.rounds": "many"})


def test_override_does_not_mutate_the_table():
    table = {"training": {"rounds": 3}}
    scenario_from_table(table, "t", {"training.rounds": 5})
    assert table == {"training": {"rounds": 3}}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("0.5", 0.5),
        ("true", True),
        ("[1, 2]", [1, 2]),
        ('"ring"', "ring"),
        ("ring", "ring"),
        ("one-peer-exponential", "one-peer-exponential"),
    ],
)
def test_parse_value(text, value):
    assert parse_value(text) == value


# -- sweeps ------------------------------------------------------------------------------


def test_no_sweep_is_one_base_run():
    sc = scenario_from_table({"training": {"rounds": 2}})
    assert expand_sweep(sc) == [("base", sc)]


def test_sweep_expansion_labels_and_values():
    sc = scenario_from_table(
        {
            "training": {"rounds": 2},
            "sweep": {"topology.kind": ["ring", "complete"], "training.lr": [0.1, 0.2, 0.3]},
        }
    )
    runs = expand_sweep(sc)
    assert [label for label, _ in runs] == [
        f"topology.kind={k}, training.lr={lr}"
        for k in ("ring", "complete")
        for lr in (0.1, 0.2, 0.3)
    ]
    for label, run in runs:
        assert not run.sweep
        assert run.training.rounds == 2
        assert f"topology.kind={run.topology.kind}" in label
        assert f"training.lr={run.training.lr}" in label


def test_sweep_over_a_top_level_key():
    runs = expand_sweep(scenario_from_table({"sweep": {"seed": [1, 2]}}))
    assert [(label, run.seed) for label, run in runs] == [("seed=1", 1), ("seed=2", 2)]


@pytest.mark.parametrize(
    "key", ["topology.kinds", "nosuch.kind", "sweep.x", "training", "seed.x", "name.x"]
)
def test_unknown_sweep_keys(tmp_path, key):
    path = write(tmp_path, f'[sweep]\n"{key}" = [1, 2]\n', "sweepy.toml")
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert key in str(info.value)
    assert "sweepy.toml" in str(info.value)


def test_sweep_values_are_type_checked():
    sc = scenario_from_table({"sweep": {"training.rounds": [2, "x"]}})
    with pytest.raises(ConfigError, match="rounds"):
        expand_sweep(sc)


# -- round trip and shipped files --------------------------------------------------------


def test_to_table_round_trip_through_toml(tmp_path):
    sc = scenario_from_table(
        {
            "name": "rt",
            "seed": 3,
            "model": {"name": "mlp", "hidden": [8, 4]},
            "training": {"rounds": 5, "lr": 0.3},
            "clock": {"speeds": [1.0, 0.5]},
            "gossip": {"round_timeout": 0.2},
            "sweep": {"topology.kind": ["ring", "complete"]},
        }
    )
    table = to_table(sc)
    assert "max_train_samples" not in table["data"]  # None values are left out
    path = tmp_path / "rt.toml"
    path.write_text(tomli_w.dumps(table))
    again = load_scenario(path)
    assert again == sc
    assert tomllib.loads(path.read_text()) == table


def test_defaults_round_trip():
    assert scenario_from_table(to_table(Scenario())) == Scenario()


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_scenarios_load_and_round_trip(path):
    sc = load_scenario(path)
    assert scenario_from_table(to_table(sc)) == sc
    assert expand_sweep(sc)


def test_shipped_scenarios_exist():
    names = {p.name for p in SHIPPED}
    assert {"tiny.toml", "hospitals.toml", "fashion_topologies.toml"} <= names
