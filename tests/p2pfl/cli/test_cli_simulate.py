"""``p2pfl simulate``: the files it writes, --json, and errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from p2pfl.cli import main
from p2pfl.models import build_model, parameter_count
from p2pfl.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[3]
TINY = str(ROOT / "simulations" / "tiny.toml")
PNG = b"\x89PNG\r\n\x1a\n"
ROUND_KEYS = {"acc_mean", "acc_min", "acc_max", "consensus", "bytes_per_node", "wall"}
SITE_KEYS = {"site", "train_samples", "test_samples", "gossip", "pooled", "local", "personalised"}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """One run of the command, shared by the tests that read its files."""
    out = tmp_path_factory.mktemp("sim")
    code = main(["simulate", TINY, "--out", str(out), "--set", "training.rounds=2"])
    assert code == 0
    return out


def test_metrics_json(out):
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scenario"] == "tiny"
    assert len(metrics["runs"]) == 1
    run = metrics["runs"][0]
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    for record in run["rounds"]:
        assert record.keys() >= ROUND_KEYS
        assert 0 <= record["acc_min"] <= record["acc_mean"] <= record["acc_max"] <= 1
        assert record["consensus"] >= 0
        assert record["bytes_per_node"] > 0
        assert record["wall"] >= 0
    assert run["nodes"] == 6
    baselines = run["baselines"]
    assert 0 < baselines["pooled"] <= 1
    assert len(baselines["local"]) == 6
    assert len(run["sites"]) == 6
    for site in run["sites"]:
        assert site.keys() >= SITE_KEYS
        for key in ("gossip", "pooled", "local", "personalised"):
            assert 0 <= site[key] <= 1


def test_scenario_toml_loads_back_with_the_override(out):
    again = load_scenario(out / "scenario.toml")
    original = load_scenario(TINY, {"training.rounds": 2})
    assert again == original
    assert again.training.rounds == 2


@pytest.mark.parametrize("name", ["accuracy.png", "consensus.png"])
def test_plots_are_png(out, name):
    data = (out / name).read_bytes()
    assert data[:8] == PNG
    assert len(data) > 1000


def test_model_state_dict_loads_into_the_model(out):
    (path,) = out.glob("model-*.pt")
    state = torch.load(path, weights_only=True)
    sc = load_scenario(TINY)
    model = build_model(sc.model.name, (64,), 10, seed=123)
    model.load_state_dict(state)
    assert sum(v.numel() for v in state.values()) == parameter_count(model) == 650
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["runs"][0]["parameters"] == 650


def test_no_temporary_files_left(out):
    names = sorted(p.name for p in out.iterdir())
    assert all(not n.startswith(".") and not n.endswith(".tmp") for n in names), names


def test_json_prints_the_metrics(tmp_path, capsys):
    code = main(
        [
            "simulate",
            TINY,
            "--out",
            str(tmp_path),
            "--set",
            "training.rounds=1",
            "--set",
            "baselines.pooled=false",
            "--engine",
            "protocol",
            "--json",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["engine"] == "protocol"
    assert printed["runs"][0]["engine"] == "protocol"
    assert printed["runs"][0]["baselines"]["pooled"] is None
    assert printed["runs"][0]["baselines"]["minibatch"] is None  # not asked for
    assert printed == json.loads((tmp_path / "metrics.json").read_text())


def test_sweep_gives_one_line_and_one_model_per_value(tmp_path, capsys):
    code = main(
        [
            "simulate",
            TINY,
            "--out",
            str(tmp_path),
            "--set",
            "training.rounds=1",
            "--set",
            'sweep={"topology.kind" = ["ring", "complete"]}',
            "--json",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in printed["runs"]] == [
        "topology.kind=ring",
        "topology.kind=complete",
    ]
    assert [r["topology"] for r in printed["runs"]] == ["ring", "complete"]
    assert len(list(tmp_path.glob("model-*.pt"))) == 2


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "training.roundz=2"], "roundz"),
        (["--set", "nosuch=1"], "nosuch"),
        (["--set", "training.rounds=many"], "rounds"),
        (["--set", "training.rounds"], "training.rounds"),
    ],
)
def test_bad_set_exits_2_naming_the_key(tmp_path, capsys, args, named):
    code = main(["simulate", TINY, "--out", str(tmp_path / "o"), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert named in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_missing_scenario_exits_2(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "nope.toml")]) == 2
    assert "nope" in capsys.readouterr().err


def test_unknown_key_in_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nepochs = 3\n")
    assert main(["simulate", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "epochs" in err and "bad.toml" in err
