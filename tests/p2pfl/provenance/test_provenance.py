"""Provenance crates: a simulation's output directory and a node's ``crate/`` load back and check.

The simulation runs through the CLI (two rounds of the tiny scenario); the
nodes are three peers in one process over the in-memory transport. Each
crate is read back with the ``rocrate`` library, its parts are asserted one
by one, and ``check_crate`` must find nothing wrong with it, and must find
what was broken in a tampered copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from rocrate.rocrate import ROCrate

import p2pfl
from p2pfl.cli import main
from p2pfl.identity import load_identity
from p2pfl.ledger_file import load_ledger, save_ledger
from p2pfl.node import PlanError
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.config import load_config
from p2pfl.provenance import PROFILE, ProvenanceError, check_crate, now, write_simulation_crate
from p2pfl.scenario import load_scenario
from p2pfl.transport import MemoryNetwork

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "simulations" / "tiny.toml"
COMPLETED = "http://schema.org/CompletedActionStatus"
FAILED = "http://schema.org/FailedActionStatus"
SITES = ("Cleveland", "Hungary", "Switzerland")


# -- helpers --------------------------------------------------------------------------


def ids(entity: Any, key: str) -> list[str]:
    value = entity.properties().get(key, [])
    return [v["@id"] for v in (value if isinstance(value, list) else [value])]


def the_action(crate: ROCrate) -> Any:
    (action,) = crate.get_by_type("CreateAction")
    return action


def software(crate: ROCrate, action: Any) -> dict[str, str]:
    app = crate.get(ids(action, "instrument")[0])
    deps = [crate.get(i) for i in ids(app, "softwareRequirements")]
    versions = {d["name"]: d["softwareVersion"] for d in deps}
    versions[app["name"]] = app["softwareVersion"]
    return versions


def drop_from_graph(metadata: Path, kind: str) -> None:
    doc = json.loads(metadata.read_text())
    doc["@graph"] = [e for e in doc["@graph"] if e.get("@type") != kind]
    metadata.write_text(json.dumps(doc))


# -- simulations ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    code = main(["simulate", str(TINY), "--out", str(out), "--set", "training.rounds=2"])
    assert code == 0
    return out


def test_a_simulation_output_directory_is_a_process_run_crate(sim: Path) -> None:
    crate = ROCrate(sim)
    assert ids(crate.root_dataset, "conformsTo") == [PROFILE]
    assert crate.get(PROFILE) is not None
    action = the_action(crate)
    assert action.id in ids(crate.root_dataset, "mentions")
    assert ids(action, "actionStatus") == [COMPLETED]
    assert action["startTime"] <= action["endTime"]
    assert crate.get(ids(action, "agent")[0]) is not None

    objects = ids(action, "object")
    assert "inputs/tiny.toml" in objects
    assert (sim / "inputs" / "tiny.toml").read_bytes() == TINY.read_bytes()
    assert crate.get("inputs/tiny.toml")["alternateName"] == str(TINY)
    assert crate.get("#set-training.rounds")["value"] == 2
    topology = json.loads(crate.get("#topology-base")["value"])
    assert topology["kind"] == "ring"

    results = set(ids(action, "result"))
    expected = {"metrics.json", "scenario.toml", "accuracy.png", "consensus.png", "model-base.pt"}
    assert results == expected
    for name in results:
        assert (sim / name).is_file()
        assert crate.get(name)["contentSize"] == str((sim / name).stat().st_size)


def test_a_simulation_crate_records_the_software_that_ran(sim: Path) -> None:
    crate = ROCrate(sim)
    versions = software(crate, the_action(crate))
    for name in ("p2pfl", "torch", "numpy", "pycrdt", "websockets", "pynacl"):
        assert versions[name] == importlib.metadata.version(name)
    assert versions["Python"].count(".") == 2


def test_check_crate_accepts_the_simulation_crate(sim: Path) -> None:
    assert check_crate(sim) == []
    assert check_crate(sim / "ro-crate-metadata.json") == []


def rewrite_crate(out: Path) -> Path:
    report = json.loads((out / "metrics.json").read_text())
    return write_simulation_crate(
        out,
        scenario=load_scenario(TINY, {"training.rounds": 2}),
        scenario_file=TINY,
        report=report,
        started=now(),
        ended=now(),
    )


def test_writing_and_loading_a_crate_needs_no_network(
    sim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = shutil.copytree(sim, tmp_path / "copy")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    assert rewrite_crate(copy) == copy / "ro-crate-metadata.json"
    assert check_crate(copy) == []


def test_a_crate_listing_a_missing_output_is_not_written(sim: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(sim, tmp_path / "copy")
    (copy / "ro-crate-metadata.json").unlink()
    (copy / "accuracy.png").unlink()
    with pytest.raises(ProvenanceError, match=r"accuracy\.png"):
        rewrite_crate(copy)
    assert not (copy / "ro-crate-metadata.json").exists()


def test_a_failed_rerun_leaves_no_crate_describing_the_old_run(sim: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(sim, tmp_path / "copy")
    bad = ["--set", 'data.dataset="nosuch"']
    assert main(["simulate", str(TINY), "--out", str(copy), *bad]) == 2
    assert not (copy / "ro-crate-metadata.json").exists()


def test_check_crate_finds_a_removed_result(sim: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(sim, tmp_path / "copy")
    (copy / "model-base.pt").unlink()
    problems = check_crate(copy)
    assert any("model-base.pt" in p and "not there" in p for p in problems), problems


def test_check_crate_finds_a_changed_file(sim: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(sim, tmp_path / "copy")
    with (copy / "metrics.json").open("a") as handle:
        handle.write("\n")
    problems = check_crate(copy)
    assert any(p.startswith("metrics.json:") and "bytes" in p for p in problems), problems


def test_check_crate_finds_metadata_without_the_action(sim: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(sim, tmp_path / "copy")
    drop_from_graph(copy / "ro-crate-metadata.json", "CreateAction")
    problems = check_crate(copy)
    assert any("no CreateAction" in p for p in problems), problems


def test_check_crate_finds_a_missing_profile_and_missing_versions(
    sim: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(sim, tmp_path / "copy")
    metadata = copy / "ro-crate-metadata.json"
    doc = json.loads(metadata.read_text())
    for entity in doc["@graph"]:
        if entity["@id"] == "./":
            del entity["conformsTo"]
        if entity["@id"] == "https://pypi.org/project/torch/":
            del entity["softwareVersion"]
    metadata.write_text(json.dumps(doc))
    problems = check_crate(copy)
    assert any(PROFILE in p for p in problems), problems
    assert any("torch" in p and "softwareVersion" in p for p in problems), problems


def test_check_crate_says_when_there_is_no_crate(tmp_path: Path) -> None:
    (problem,) = check_crate(tmp_path)
    assert "cannot be loaded" in problem


# -- nodes ----------------------------------------------------------------------------


def federation(root: Path, rounds: int) -> list[SiteFiles]:
    plan = {
        "seed": 0,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "logreg"},
        "training": {"rounds": rounds, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "topology": {"kind": "complete"},
        "gossip": {"mode": "sync", "round_timeout": 60.0},
    }
    sites = [
        Site(s.lower(), f"memory://{s.lower()}", "p2pfl.node.examples:heart_site", [s])
        for s in SITES
    ]
    return local_federation(root, sites, plan, tls=False)


async def run_all(files: list[SiteFiles]) -> None:
    network = MemoryNetwork()

    async def one(site: SiteFiles) -> None:
        async with p2pfl.Peer(load_config(site.config), network=network) as peer:
            await peer.run()

    async with asyncio.timeout(120):
        await asyncio.gather(*(one(f) for f in files))


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> list[SiteFiles]:
    files = federation(tmp_path_factory.mktemp("nodes"), rounds=2)
    asyncio.run(run_all(files))
    return files


def test_every_node_leaves_a_crate_that_checks(nodes: list[SiteFiles]) -> None:
    for site in nodes:
        assert check_crate(site.directory / "crate") == []
        assert not list(site.directory.glob(".crate-*"))  # no staging left behind


def test_a_node_crate_holds_plan_model_metrics_audit_and_ledger_hash(
    nodes: list[SiteFiles],
) -> None:
    site = nodes[0]
    crate_dir = site.directory / "crate"
    crate = ROCrate(crate_dir)
    action = the_action(crate)
    assert ids(action, "actionStatus") == [COMPLETED]
    assert action["startTime"] <= action["endTime"]
    assert crate.get(ids(action, "agent")[0])["identifier"] == site.node_id

    ledger = load_ledger(site.directory / "ledger")
    plan_hash = ledger.plan_hash()
    assert plan_hash is not None
    assert json.loads((crate_dir / "plan.json").read_text()) == ledger.plan()
    assert crate.get("#plan-hash")["value"] == plan_hash.hex()
    assert {"plan.json", "#plan-hash"} <= set(ids(action, "object"))

    results = ids(action, "result")
    assert {"round-000002.ckpt", "metrics.json", "audit.jsonl", "#ledger-sha256"} == set(results)
    checkpoint = site.directory / "checkpoints" / "round-000002.ckpt"
    assert (crate_dir / "round-000002.ckpt").read_bytes() == checkpoint.read_bytes()
    assert (crate_dir / "audit.jsonl").read_bytes() == (site.directory / "audit.jsonl").read_bytes()
    ledger_bytes = (site.directory / "ledger").read_bytes()
    assert crate.get("#ledger-sha256")["value"] == hashlib.sha256(ledger_bytes).hexdigest()
    metrics = json.loads((crate_dir / "metrics.json").read_text())
    assert metrics["completed"] == 2 and [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert set(metrics["progress"].values()) == {2}
    for row in metrics["rounds"]:  # bytes and training time priced with the node's factors
        assert row["bytes_sent"] > 0 and row["train_seconds"] > 0
        assert row["energy"]["network_j"] == pytest.approx(row["bytes_sent"] * 6.75e-6)
        assert row["energy"]["total_j"] > row["energy"]["network_j"]
    assert software(crate, action)["pycrdt"] == importlib.metadata.version("pycrdt")


def test_a_node_crate_records_which_member_approved_which_plan(nodes: list[SiteFiles]) -> None:
    crate = ROCrate(nodes[1].directory / "crate")
    approvals = crate.get_by_type("EndorseAction")
    approvers = {crate.get(ids(a, "agent")[0])["identifier"] for a in approvals}
    assert approvers == {site.node_id for site in nodes}
    assert all(ids(a, "object") == ["plan.json"] for a in approvals)
    assert {a.id for a in approvals} <= set(ids(crate.root_dataset, "mentions"))


def test_check_crate_finds_a_node_crate_without_approvals_or_plan(
    nodes: list[SiteFiles], tmp_path: Path
) -> None:
    copy = shutil.copytree(nodes[2].directory / "crate", tmp_path / "crate")
    drop_from_graph(copy / "ro-crate-metadata.json", "EndorseAction")
    plan = json.loads((copy / "plan.json").read_text())
    plan["seed"] = 99
    (copy / "plan.json").write_text(json.dumps(plan))
    problems = check_crate(copy)
    assert any("no approval" in p for p in problems), problems
    assert any("not the recorded plan hash" in p for p in problems), problems


def test_a_failed_run_leaves_a_failed_crate_with_the_old_approvals(tmp_path: Path) -> None:
    files = federation(tmp_path, rounds=1)
    founder = load_identity(files[0].directory / "node.key")
    for site in files:  # a new plan (valid: it passes the start's checks) nobody approved yet
        ledger = load_ledger(site.directory / "ledger")
        table = {**ledger.plan(), "seed": 1}
        ledger.set_plan(founder.signing_key, table, clock=ledger.next_clock())
        save_ledger(ledger, site.directory / "ledger")
    site = files[1]

    async def attempt() -> None:
        async with p2pfl.Peer(load_config(site.config), network=MemoryNetwork()) as peer:
            await peer.run()

    with pytest.raises(PlanError, match="has not approved"):
        asyncio.run(attempt())

    crate_dir = site.directory / "crate"
    assert check_crate(crate_dir) == []
    crate = ROCrate(crate_dir)
    action = the_action(crate)
    assert ids(action, "actionStatus") == [FAILED]
    assert "has not approved" in action["error"]
    assert "round-000001.ckpt" not in ids(action, "result")
    for approval in crate.get_by_type("EndorseAction"):
        (old,) = ids(approval, "object")
        assert old.startswith("#plan-hash-") and old != "#plan-hash"
