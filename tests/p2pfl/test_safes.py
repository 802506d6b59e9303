"""The Five Safes, through the CLI: approved projects, private settings, checked data, safe outputs.

Each refusal is exercised the way an operator meets it: ``main([...])``, its
exit status and what it prints. Daemons run in this process and stop at the
refusal, before any round.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch

from p2pfl.cli import main
from p2pfl.cli.federation import read_plan
from p2pfl.ledger_file import load_ledger
from p2pfl.node.bootstrap import Site, local_federation
from p2pfl.node.checkpoint import write_checkpoint
from p2pfl.node.examples import heart_schema
from p2pfl.node.status import read_status

ROOT = Path(__file__).resolve().parents[2]
HEART_PLAN = ROOT / "simulations" / "plans" / "heart_disease.toml"

PLAN: dict[str, Any] = {
    "seed": 0,
    "data": {"input_shape": [37], "num_classes": 2, "schema": heart_schema()},
    "model": {"name": "logreg"},
    "training": {"rounds": 2, "local_epochs": 1, "lr": 0.05},
    "topology": {"kind": "complete"},
    "gossip": {"mode": "sync", "round_timeout": 30.0},
}

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


class Cli:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.dir = tmp_path
        self.capsys = capsys

    def __call__(self, *argv: object) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *argv: object) -> str:
        code, out, err = self(*argv)
        assert code == 0, err
        return out


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path, capsys)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_id(cli: Cli, key: Path) -> str:
    return str(json.loads(cli.ok("keys", "show", key, "--json"))["node_id"])


def plan_file(directory: Path, plan: dict[str, Any]) -> Path:
    path = directory / "plan.toml"
    path.write_text(tomli_w.dumps(plan))
    return path


def set_limit(config: Path, key: str, value: str) -> None:
    lines = config.read_text().splitlines()
    lines = [f"{key} = {value}" if line.startswith(f"{key} =") else line for line in lines]
    config.write_text("\n".join(lines) + "\n")


# -- safe projects: nobody trains until every member approved this plan hash ---------------


def two_members(cli: Cli) -> tuple[Path, Path, str, str]:
    """Sites a (founder) and b (invited, joined), each with its ledger; nobody approved yet."""
    ports = free_port(), free_port()
    sites = [cli.dir / "a", cli.dir / "b"]
    for site, port in zip(sites, ports, strict=True):
        cli.ok("node", "init", site, "--listen", f"ws://127.0.0.1:{port}")
    a, b = sites
    ids = node_id(cli, a / "node.key"), node_id(cli, b / "node.key")
    (cli.dir / "b.json").write_text(cli.ok("keys", "show", b / "node.key", "--json"))
    cli.ok("federation", "create", "--key", a / "node.key", "--name", "safe",
           "--plan", plan_file(cli.dir, PLAN), "--out", a / "ledger",
           "--address", f"ws://127.0.0.1:{ports[0]}")  # fmt: skip
    cli.ok("federation", "invite", "--key", a / "node.key", "--ledger", a / "ledger",
           "--member", cli.dir / "b.json", "--address", f"ws://127.0.0.1:{ports[1]}",
           "--out", cli.dir / "b.invitation")  # fmt: skip
    cli.ok("federation", "join", "--key", b / "node.key", "--invitation",
           cli.dir / "b.invitation", "--out", b / "ledger")  # fmt: skip
    return a, b, ids[0], ids[1]


def test_show_lists_the_members_who_have_not_approved_the_plan(cli: Cli) -> None:
    a, b, id_a, id_b = two_members(cli)
    shown = json.loads(cli.ok("federation", "show", a / "ledger", "--json"))
    assert shown["approved_by"] == [] and shown["awaiting_approval"] == sorted([id_a, id_b])
    cli.ok("federation", "approve", "--key", a / "node.key", "--ledger", a / "ledger")
    text = cli.ok("federation", "show", a / "ledger")
    assert "approved by 1 of 2 valid members" in text
    assert "not yet approved by 1 (no node trains until they do)" in text
    waiting = text.split("not yet approved by")[1]
    assert id_b in waiting and id_a not in waiting
    cli.ok("federation", "approve", "--key", b / "node.key", "--ledger", a / "ledger")
    text = cli.ok("federation", "show", a / "ledger")
    assert "approved by every valid member" in text and "not yet approved" not in text
    assert (
        json.loads(cli.ok("federation", "show", a / "ledger", "--json"))["awaiting_approval"] == []
    )


def test_a_node_refuses_to_train_until_every_member_approved(cli: Cli) -> None:
    a, _, _, id_b = two_members(cli)
    set_limit(a / "node.toml", "start_timeout", "1.0")
    code, _, err = cli("node", "run", "--config", a / "node.toml", "--insecure")
    assert code == 2 and "has not approved the ledger's current plan" in err  # not even itself
    cli.ok("federation", "approve", "--key", a / "node.key", "--ledger", a / "ledger")
    code, _, err = cli("node", "run", "--config", a / "node.toml", "--insecure")
    assert code == 2, err
    assert f"the plan is not approved by {id_b}" in err and "federation approve" in err
    assert read_status(a)["phase"] == "failed" and read_status(a)["completed"] == 0
    assert not (a / "checkpoints").exists() or not any((a / "checkpoints").iterdir())


# -- safe people and settings: private secrets and data directory, TLS -------------------


def site(cli: Cli, *extra: str) -> Path:
    directory = cli.dir / "site"
    cli.ok("node", "init", directory, *extra)
    return directory


@posix_only
def test_node_init_makes_a_private_directory(cli: Cli) -> None:
    directory = site(cli, "--tls")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@posix_only
def test_run_refuses_a_key_file_open_to_others(cli: Cli) -> None:
    directory = site(cli, "--listen", "ws://127.0.0.1:7443")
    key = directory / "node.key"
    key.chmod(0o644)
    code, _, err = cli("node", "run", "--config", directory / "node.toml", "--insecure")
    assert code == 2
    assert f"{key}: the key file is readable or writable by group/others (mode 644)" in err
    assert f"run: chmod 600 {key}" in err


@posix_only
@pytest.mark.parametrize("mode", [0o755, 0o770, 0o701])
def test_run_refuses_a_data_directory_open_to_others(cli: Cli, mode: int) -> None:
    directory = site(cli, "--listen", "ws://127.0.0.1:7443")
    directory.chmod(mode)
    code, _, err = cli("node", "run", "--config", directory / "node.toml", "--insecure")
    assert code == 2
    assert f"{directory}: the data directory" in err and f"(mode {mode:o})" in err
    assert f"run: chmod 700 {directory}" in err


@posix_only
def test_run_refuses_a_tls_key_open_to_others(cli: Cli) -> None:
    directory = site(cli, "--tls")
    (directory / "tls-key.pem").chmod(0o640)
    code, _, err = cli("node", "run", "--config", directory / "node.toml")
    assert code == 2 and "the TLS private key" in err and "(mode 640)" in err
    assert f"chmod 600 {directory / 'tls-key.pem'}" in err


@posix_only
def test_the_embedded_peer_refuses_what_node_run_refuses(cli: Cli) -> None:
    import p2pfl
    from p2pfl.errors import ConfigError

    directory = site(cli, "--listen", "ws://127.0.0.1:7443")
    config = directory / "node.toml"
    with pytest.raises(ConfigError, match="cert and key are not set"):
        p2pfl.Peer(config)
    directory.chmod(0o755)
    with pytest.raises(ConfigError, match="the data directory"):
        p2pfl.Peer(config, insecure=True)


def test_run_refuses_plain_websockets_without_insecure(cli: Cli) -> None:
    directory = site(cli, "--listen", "ws://127.0.0.1:7443")  # no TLS pair
    config = directory / "node.toml"
    code, _, err = cli("node", "run", "--config", config)
    assert code == 2
    assert f"{config}: [tls] cert and key are not set" in err and "--insecure" in err
    # With the flag the safe-settings check passes; the run stops later (no ledger yet).
    code, _, err = cli("node", "run", "--config", config, "--insecure")
    assert code == 2 and "[tls]" not in err and "ledger" in err


def test_run_refuses_a_plain_listen_address_even_with_a_tls_pair(cli: Cli) -> None:
    directory = site(cli, "--tls", "--listen", "ws://127.0.0.1:7443")
    code, _, err = cli("node", "run", "--config", directory / "node.toml")
    assert code == 2 and "listen = 'ws://127.0.0.1:7443' is plain ws://" in err
    set_limit(directory / "node.toml", "listen", '"wss://127.0.0.1:7443"')
    code, _, err = cli("node", "run", "--config", directory / "node.toml")
    assert code == 2 and "ws://" not in err and "ledger" in err  # TLS fine; no ledger yet


# -- safe data: the plan's schema, checked locally before training -----------------------


def test_check_data_passes_the_real_example(cli: Cli) -> None:
    directory = site(cli, "--tls")  # the template's entrypoint: heart_site("Cleveland")
    out = cli.ok("node", "check-data", "--config", directory / "node.toml", "--plan", HEART_PLAN)
    assert "37 features checked against the plan's schema: no violations" in out


def test_check_data_reports_violations_with_counts_only(cli: Cli) -> None:
    directory = site(cli, "--tls")
    plan = read_plan(str(HEART_PLAN))
    plan["data"]["schema"]["features"][0]["max"] = 0.0  # age above the mean is "out of range"
    path = plan_file(cli.dir, plan)
    code, out, _ = cli("node", "check-data", "--config", directory / "node.toml", "--plan", path)
    assert code == 1
    assert "1 violations" in out and "age: " in out and "out of range" in out
    assert "allowed [-5, 0]" in out
    code, out, _ = cli(
        "node", "check-data", "--config", directory / "node.toml", "--plan", path, "--json"
    )
    summary = json.loads(out)
    assert code == 1 and not summary["ok"] and summary["rows"] == 304
    (violation,) = summary["violations"]
    assert violation["feature"] == "age" and 0 < violation["count"] < 304
    assert set(violation) == {"feature", "kind", "count", "fraction", "rule"}  # no values


def test_check_data_reads_the_plan_from_the_ledger(cli: Cli) -> None:
    a, _, _, _ = two_members(cli)
    out = cli.ok("node", "check-data", "--config", a / "node.toml")
    assert "no violations" in out
    code, _, err = cli("node", "check-data", "--config", a / "node.toml", "--plan", "absent.toml")
    assert code == 2 and "absent.toml: no such plan file" in err


def test_a_node_refuses_to_train_on_data_outside_the_schema(cli: Cli) -> None:
    schema = heart_schema()
    schema["features"][2]["min"] = 0.0  # chol below the mean is refused
    plan = {**PLAN, "data": {**PLAN["data"], "schema": schema}}
    sites = [
        Site(name, f"ws://127.0.0.1:{free_port()}", "p2pfl.node.examples:heart_site", [name])
        for name in ("Cleveland", "Hungary")
    ]
    files = local_federation(cli.dir, sites, plan, tls=False)
    directory = files[0].directory
    before = sorted(p.name for p in directory.iterdir())
    code, _, err = cli("node", "run", "--config", files[0].config, "--insecure")
    assert code == 2 and err.count("\n") == 1  # one line, at start, before any link
    assert "do not fit the plan's data schema" in err and "nothing was sent" in err
    assert "chol: " in err and "out of range" in err and "p2pfl node check-data" in err
    assert sorted(p.name for p in directory.iterdir()) == before  # no audit, status, checkpoint


# -- safe outputs: the aggregated model and metrics, nothing per-site -----------------------


def simulation_dir(root: Path) -> Path:
    """What ``p2pfl simulate --out`` leaves, with the per-site fields it really writes."""
    out = root / "run"
    out.mkdir()
    rounds = [
        {"round": 1, "acc_mean": 0.7, "acc_min": 0.61, "acc_max": 0.8, "loss_mean": 0.5,
         "consensus": 0.01, "bytes_per_node": 1000.0, "wall": 0.2},
    ]  # fmt: skip
    run = {
        "label": "ring", "engine": "vectorized", "topology": "ring", "mode": "sync",
        "nodes": 4, "parameters": 76, "rounds": rounds,
        "final": {"acc_mean": 0.7, "acc_min": 0.61, "acc_max": 0.8, "consensus": 0.01},
        "bytes_per_node": 1000.0, "stragglers": 0,
        "wall": {"total": 1.0, "train": 0.5, "mix": 0.3, "eval": 0.2},
        "baselines": {"pooled": 0.75, "local": [0.6, 0.7, 0.8, 0.65]},
        "sites": [{"site": "Cleveland", "train_samples": 228, "test_samples": 76,
                   "gossip": 0.8, "pooled": 0.8, "local": 0.7, "personalised": None}],
        "secure": {"dropout_tolerance": {"0": 1}, "abandoned": 0, "stragglers": 0},
        "extra": {"workdir": "/tmp/nodes"},
    }  # fmt: skip
    report = {"scenario": "heart", "engine": "vectorized", "seed": 0, "runs": [run]}
    (out / "metrics.json").write_text(json.dumps(report))
    (out / "model-ring.pt").write_bytes(b"averaged state_dict")
    (out / "scenario.toml").write_text('name = "heart"\n')
    return out


def test_export_keeps_the_averaged_model_and_aggregate_metrics_only(cli: Cli) -> None:
    source, out = simulation_dir(cli.dir), cli.dir / "out"
    printed = cli.ok("export", "--from", source, "--to", out)
    assert "model-ring.pt" in printed
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "metrics.json", "model-ring.pt"]
    assert (out / "model-ring.pt").read_bytes() == b"averaged state_dict"
    metrics = json.loads((out / "metrics.json").read_text())
    (run,) = metrics["runs"]
    assert "sites" not in run and "extra" not in run
    assert run["baselines"] == {"pooled": 0.75}
    assert run["final"] == {"acc_mean": 0.7, "consensus": 0.01}
    assert set(run["rounds"][0]) == {"round", "acc_mean", "loss_mean", "consensus",
                                     "bytes_per_node", "wall"}  # fmt: skip
    assert run["secure"] == {"abandoned": 0, "stragglers": 0}
    text = (out / "metrics.json").read_text()
    assert "Cleveland" not in text and "0.61" not in text and "/tmp/nodes" not in text
    manifest = json.loads((out / "export.json").read_text())
    assert {"runs[].sites", "runs[].baselines.local", "runs[].extra"} <= set(manifest["stripped"])
    code, _, err = cli("export", "--from", source, "--to", out)
    assert code == 2 and "already there" in err  # never overwrites


@pytest.mark.parametrize(
    "what", ["sites", "site-metrics", "local-model", "data", "checkpoints", "audit", "model,sites"]
)
def test_export_refuses_per_site_artefacts(cli: Cli, what: str) -> None:
    source, out = simulation_dir(cli.dir), cli.dir / "out"
    code, _, err = cli("export", "--from", source, "--to", out, "--include", what)
    assert code == 2 and "per-site artefact" in err and "refusing to export" in err
    assert not out.exists()  # nothing written at all


def test_export_refuses_unknown_artefacts_and_per_site_files(cli: Cli) -> None:
    source, out = simulation_dir(cli.dir), cli.dir / "out"
    code, _, err = cli("export", "--from", source, "--to", out, "--include", "plots")
    assert code == 2 and "exportable are model, metrics" in err
    ckpt = write_checkpoint(cli.dir / "node" / "checkpoints", 1, np.zeros(4, np.float32))
    for path in (ckpt, ckpt.parent):
        code, _, err = cli("export", "--from", path, "--to", out)
        assert code == 2 and "refusing to export" in err
    assert not out.exists()


def finished_node(cli: Cli, round_: int) -> Path:
    sites = [Site(n, f"ws://127.0.0.1:{free_port()}", "p2pfl.node.examples:heart_site", [n])
             for n in ("Cleveland", "Hungary")]  # fmt: skip
    directory = local_federation(cli.dir / "fed", sites, PLAN, tls=False)[0].directory
    plan_hash = load_ledger(directory / "ledger").plan_hash()
    model = np.arange(76, dtype=np.float32)  # logreg: 2 x 37 weights and 2 biases
    meta = {"plan_hash": plan_hash, "accuracy": 0.9, "roster": ["x", "y"]}
    write_checkpoint(directory / "checkpoints", round_, model, meta)
    return directory


def test_export_from_a_node_writes_its_final_mixed_model_only(cli: Cli) -> None:
    directory, out = finished_node(cli, 2), cli.dir / "out"
    cli.ok("export", "--from", directory, "--to", out)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model-final.pt"]
    state = torch.load(out / "model-final.pt", weights_only=True)
    flat = torch.cat([v.reshape(-1) for v in state.values()])
    assert torch.equal(flat, torch.arange(76, dtype=torch.float32))
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["source"]["kind"] == "node" and manifest["stripped"] == ["metrics (per-site)"]
    assert "0.9" not in (out / "export.json").read_text()
    code, _, err = cli(
        "export", "--from", directory, "--to", cli.dir / "o2", "--include", "metrics"
    )
    assert code == 2 and "only the final aggregated model" in err


def test_export_refuses_an_unfinished_node_run(cli: Cli) -> None:
    directory, out = finished_node(cli, 1), cli.dir / "out"
    code, _, err = cli("export", "--from", directory, "--to", out)
    assert code == 2 and "round 1 of 2" in err and "not the federation's result" in err
    assert not out.exists()
