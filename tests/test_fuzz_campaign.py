"""The fuzz campaign's bookkeeping (``simulations/fuzz/campaign.py``), without atheris.

The workers' counters, the choice of the next target, and the keeping of failing
inputs; a whole campaign under atheris runs where atheris is installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fuzz_campaign", ROOT / "simulations/fuzz/campaign.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


campaign = _load()


def _plan(tmp_path: Path, targets: list[str], cases: int = 1000) -> object:
    return campaign.Plan(targets, cases, 4, 600.0, tmp_path, tmp_path, tmp_path, 64)


def test_a_counter_is_shared_through_its_file(tmp_path: Path) -> None:
    worker = campaign.Counter(tmp_path / "c", create=True)
    reader = campaign.Counter(tmp_path / "c")
    worker.tick(1)
    sum(range(200_000))  # some CPU time
    worker.tick(7)
    assert reader.cases == 7 and reader.cpu > 0 and not worker.stopped
    reader.stop()
    assert worker.stopped
    worker.close()
    reader.close()


def test_the_next_worker_goes_where_most_cpu_time_is_left(tmp_path: Path) -> None:
    names = ["fast", "slow", "broken", "new"]
    run = campaign.Campaign(_plan(tmp_path, names, cases=100_000), ROOT)
    fast, slow, broken, new = (run.tallies[n] for n in names)
    fast.cases, fast.cpu, fast.workers = 10_000, 1.5, 1  # ~6,700/s: 13 s left
    slow.cases, slow.cpu, slow.workers = 1_000, 10.0, 1  # 100/s: 990 s left
    broken.crashes, broken.workers = [{"inputs": []}] * campaign.MAX_CRASHES, 3
    assert run._neediest() == "new"  # a target not yet started comes first
    new.workers, new.cases = 1, 100_000
    assert run._neediest() == "slow"
    slow.cases = 100_000
    assert run._neediest() == "fast"
    fast.cases = 100_000
    assert run._neediest() is None


def test_a_failing_input_is_kept_once_by_its_hash(tmp_path: Path) -> None:
    artifacts, crashes = tmp_path / "a", tmp_path / "c"
    artifacts.mkdir()
    (artifacts / "crash-1").write_bytes(b"boom")
    (artifacts / "timeout-2").write_bytes(b"boom")
    (artifacts / "oom-3").write_bytes(b"big")
    kept = campaign._collect(artifacts, crashes)
    assert sorted(p.name for p in kept) == sorted(p.name for p in crashes.iterdir())
    assert {p.read_bytes() for p in kept} == {b"boom", b"big"} and len(kept) == 2


def test_the_report_says_what_each_target_reached(tmp_path: Path) -> None:
    run = campaign.Campaign(_plan(tmp_path, ["a", "b"], cases=10), ROOT)
    run.tallies["a"].cases, run.tallies["a"].cpu = 12, 0.5
    report = run.report()
    assert report["targets"]["a"]["reached"] and report["targets"]["a"]["exec_per_cpu_s"] == 24
    assert not report["targets"]["b"]["reached"] and not report["all_reached"]
    assert "a" in campaign.table(report)


# A stand-in worker: counts 400 cases, then fails on an input (exit 77, as libFuzzer does)
# after writing it where libFuzzer writes its artifacts.
FAKE_WORKER = """
import sys
sys.path.insert(0, sys.argv[1])
import campaign
counter = campaign.Counter(campaign.Path(sys.argv[2]))
for n in range(1, 401):
    counter.tick(n)
artifacts = campaign.Path(sys.argv[3])
artifacts.mkdir(parents=True, exist_ok=True)
(artifacts / "crash-x").write_bytes(sys.argv[4].encode())
sys.exit(77)
"""


class FakeCampaign(campaign.Campaign):  # type: ignore[name-defined,misc]
    def _command(self, name: str, counter_path: Path) -> list[str]:
        artifacts = self.plan.work / "artifacts" / name
        here = str(ROOT / "simulations/fuzz")
        return [sys.executable, "-c", FAKE_WORKER, here, str(counter_path), str(artifacts), name]


def test_a_crashed_worker_is_restarted_and_its_input_kept(tmp_path: Path) -> None:
    plan = campaign.Plan(["t"], 10_000, 1, 60.0, tmp_path, tmp_path / "crashes", tmp_path, 64)
    report = FakeCampaign(plan, ROOT).run()
    t = report["targets"]["t"]
    assert len(t["crashes"]) == campaign.MAX_CRASHES and t["workers"] == campaign.MAX_CRASHES
    assert t["cases"] == 400 * campaign.MAX_CRASHES and not t["reached"]
    assert {c["exit"] for c in t["crashes"]} == {77}
    (kept,) = t["crashes"][0]["inputs"]
    assert Path(kept).read_bytes() == b"t" and Path(kept).parent == tmp_path / "crashes" / "t"
    assert report["crashes"] == campaign.MAX_CRASHES and t["peak_rss_mb"] > 0


def test_a_short_campaign_runs_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    out = tmp_path / "report.json"
    command = [sys.executable, str(ROOT / "simulations/fuzz/run.py"), "--jobs", "2"]
    command += ["--cases", "300", "--max-seconds", "90", "--targets", "wire_frame,audit_log"]
    command += ["--out", str(out), "--corpus", str(tmp_path / "corpus")]
    command += ["--crashes", str(tmp_path / "crashes")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    for name in ("wire_frame", "audit_log"):
        assert report["targets"][name]["cases"] >= 300
        assert report["targets"][name]["peak_rss_mb"] > 0
    assert "exec/s/core" in done.stdout
