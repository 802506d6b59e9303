"""A small federation of real ``p2pfl node run`` daemons on 127.0.0.1, one through ``killer.py``.

Heart-disease sites (logistic regression, one thread each), a complete graph, sync
gossip. ``start`` runs a plain daemon, ``start_faulty`` the same daemon with a fault
armed (``killer.py``); ``check_disk`` reads back what a site left on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loopback import free_ports

from p2pfl.cli import main
from p2pfl.ledger_file import load_ledger
from p2pfl.node.audit import read_entries
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.checkpoint import list_checkpoints, read_checkpoint

ROOT = Path(__file__).resolve().parents[3]
KILLER = Path(__file__).with_name("killer.py")
ROUNDS = 3
SITES = ("Cleveland", "Hungary", "Switzerland")


def plan(*, secure: bool) -> dict[str, Any]:
    table: dict[str, Any] = {
        "seed": 0,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "logreg"},
        "training": {"rounds": ROUNDS, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "topology": {"kind": "complete"},
        "gossip": {"mode": "sync", "round_timeout": 90.0},  # the neighbours outwait a restart
    }
    if secure:
        # Three sites tolerate no dropout: a round a node dies in is abandoned by its
        # neighbours after these timeouts, and the restarted node joins the next one.
        table["secure"] = {
            "enabled": True,
            "share_timeout": 8.0,
            "masked_timeout": 8.0,
            "allow_no_dropout": True,
        }
    return table


LIMITS = {"threads": 1, "status_interval": 0.2, "backoff_max": 0.5}
"""A test daemon's limits: one torch thread, a status every 0.2 s, quick redials."""


def heart_plan(rounds: int, *, round_timeout: float, lr: float = 0.05, **sections: Any) -> Any:
    """A heart-disease plan (logistic regression, complete graph, sync) with ``sections`` more."""
    return {
        "seed": 0,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "logreg"},
        "training": {"rounds": rounds, "local_epochs": 1, "batch_size": 32, "lr": lr},
        "topology": {"kind": "complete"},
        "gossip": {"mode": "sync", "round_timeout": round_timeout},
        **sections,
    }


def federation(root: Path, *, sites: int, secure: bool = False) -> list[SiteFiles]:
    ports = free_ports(sites)
    return local_federation(
        root,
        [
            Site(
                name.lower(),
                f"ws://127.0.0.1:{port}",
                "p2pfl.node.examples:heart_site",
                [name],
                limits={"threads": 1, "status_interval": 0.2, "backoff_max": 0.5},
            )
            for name, port in zip(SITES[:sites], ports, strict=True)
        ],
        plan(secure=secure),
        tls=False,
    )


def _popen(argv: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def start(site: SiteFiles) -> subprocess.Popen[str]:
    return _popen(["-m", "p2pfl", "node", "run", "--config", str(site.config), "--insecure"])


def start_logged(site: SiteFiles) -> subprocess.Popen[bytes]:
    """``node run`` logging to ``daemon.log`` (a pipe nobody reads fills in a long run)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with (site.directory / "daemon.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "p2pfl", "node", "run", "--config", str(site.config),
             "--insecure"],
            stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=ROOT,
        )  # fmt: skip


def log_tail(site: SiteFiles) -> str:
    return (site.directory / "daemon.log").read_text(errors="replace")[-3000:]


def audited(site: SiteFiles, event: str) -> list[dict[str, Any]]:
    """The whole lines of ``event`` in a (running) node's audit log so far."""
    try:
        lines = (site.directory / "audit.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the line being written
    return [e for e in entries if e.get("event") == event]


def start_faulty(site: SiteFiles, point: str, n: int) -> subprocess.Popen[str]:
    return _popen([str(KILLER), str(site.config), point, str(n)])


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    """Wait for ``proc`` (killing it after ``timeout`` s); its exit status and log."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"still running after {timeout} s:\n{err[-3000:]}") from None
    return proc.returncode, err


def finish_all(procs: list[subprocess.Popen[str]], timeout: float) -> None:
    """Wait until every daemon has exited 0; fail at the first that does not."""
    deadline = time.monotonic() + timeout
    waiting = list(procs)
    while waiting and time.monotonic() < deadline:
        for proc in list(waiting):
            if proc.poll() is not None:
                waiting.remove(proc)
                code, log = finish(proc, timeout=30)
                assert code == 0, log[-3000:]
        time.sleep(0.2)
    for proc in waiting:
        finish(proc, timeout=0.1)  # raises, with its log


def reap(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def check_disk(site: SiteFiles) -> int:
    """Every checkpoint reads back, the ledger loads; the newest round on disk (0: none)."""
    load_ledger(site.directory / "ledger")
    rounds = [0]
    for r, path in list_checkpoints(site.directory / "checkpoints"):
        assert read_checkpoint(path).round == r
        rounds.append(r)
    return max(rounds)


def leftovers(site: SiteFiles) -> list[Path]:
    """Temporary files a killed write left (hidden ``.tmp`` files)."""
    places = (site.directory, site.directory / "checkpoints")
    return sorted(p for d in places if d.is_dir() for p in d.glob(".*.tmp"))


def audit_verifies(site: SiteFiles) -> bool:
    return main(["audit", "verify", str(site.directory / "audit.jsonl")]) == 0


def events(site: SiteFiles, name: str) -> list[dict[str, Any]]:
    return [e for e in read_entries(site.directory / "audit.jsonl") if e["event"] == name]


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False
