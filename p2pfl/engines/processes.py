"""The processes engine: one real node daemon per node, as OS processes on loopback.

``p2pfl simulate SCENARIO --engine processes`` sets up a federation in a
working directory (``p2pfl.node.bootstrap``): a key per node, a self-signed
TLS pair each, one ledger where the founder admitted every member and all
approved the plan made from the scenario; then it starts ``p2pfl node run``
per node, over wss with the full handshake, and waits for them. Each daemon
loads its data with ``p2pfl.node.examples:scenario_node``, so it trains on
exactly the rows the other engines give node i, and node i of the scenario is
the i-th member by node id (the keys are sorted before they are assigned), so
the topology and the batch order match too: in sync mode, with no straggler,
the result equals the protocol engine's. A scenario's own dataset or model
module is found by the daemons as by the simulator: the folders it is looked
up in (the scenario's, the current one) lead their ``PYTHONPATH``.

Metrics are read back from the daemons' per-round checkpoints and evaluated
as the protocol engine does (global test set, consensus distance, bytes sent
per node, wall time per round). Time here is real: the scenario's timeouts
(``gossip.round_timeout``, ``secure.*_timeout``) are taken as seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
import torch

import p2pfl
from p2pfl.engines.attack import refuse_attack
from p2pfl.engines.common import Progress, RoundRecord, RunResult, Setup, round_record
from p2pfl.engines.epochs import epochs_summary
from p2pfl.entrypoints import is_reference
from p2pfl.errors import ConfigError, P2PFLError
from p2pfl.events import timeline
from p2pfl.identity import Identity, create_identity
from p2pfl.ledger_file import load_ledger, save_ledger
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.checkpoint import list_checkpoints, read_checkpoint
from p2pfl.node.numbering import index, number
from p2pfl.node.status import read_status
from p2pfl.scenario import search_folders, to_table
from p2pfl.training import evaluate

log = logging.getLogger(__name__)


def plan_of(setup: Setup) -> dict[str, Any]:
    """The training plan table (as ``p2pfl federation create --plan`` reads it) of a scenario."""
    sc = setup.scenario
    if sc.dropouts.schedule:
        raise ConfigError(
            "dropouts.schedule is not scheduled by the processes engine: "
            "kill a daemon to make one drop out"
        )
    if sc.drift.inject:
        raise ConfigError(
            "drift.inject changes a simulated node's data; the daemons read their real data"
        )
    return setup.plan().table()


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports the system had free a moment ago (a small race remains)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Federation:
    """A federation of daemons set up on this machine (``prepare_federation``)."""

    root: Path
    sites: list[SiteFiles]
    scenario_file: Path
    procs: dict[int, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    python_path: list[str] = dataclasses.field(default_factory=list)

    def start(self, i: int) -> subprocess.Popen[bytes]:
        """Start (or restart) daemon ``i``; its output goes to ``node.log`` in its directory."""
        site = self.sites[i]
        package_root = str(Path(p2pfl.__file__).resolve().parent.parent)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (*self.python_path, package_root, env.get("PYTHONPATH", "")) if p
        )
        with open(site.directory / "node.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "p2pfl", "node", "run", "--config", str(site.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=site.directory,
            )
        self.procs[i] = proc
        return proc

    def completed(self, i: int) -> int:
        """Rounds node ``i`` has completed, by its status file (0 before it writes one)."""
        try:
            return int(read_status(self.sites[i].directory).get("completed", 0))
        except (P2PFLError, TypeError, ValueError):
            return 0

    def log_tail(self, i: int, chars: int = 3000) -> str:
        path = self.sites[i].directory / "node.log"
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def prepare_federation(
    setup: Setup,
    root: str | os.PathLike[str],
    *,
    limits: dict[str, Any] | None = None,
    unreachable: Collection[int] = (),
) -> Federation:
    """Keys, TLS pairs, ledger, configs and the scenario file for ``setup``, under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    scenario_file = root / "scenario.toml"
    table = to_table(setup.scenario)
    table.pop("sweep", None)
    table["engine"] = "protocol"
    scenario_file.write_text(tomli_w.dumps(table))
    plan = plan_of(setup)
    identities = sorted((create_identity() for _ in range(setup.n)), key=lambda i: i.node_id)
    ports = free_ports(setup.n)
    site_limits = {
        "keep_checkpoints": 0,
        "linger_timeout": 120.0,
        "start_timeout": 300.0,
        "threads": 1,
        **(limits or {}),
    }
    sites = [
        Site(
            name,
            f"wss://127.0.0.1:{port}",
            "p2pfl.node.examples:scenario_node",
            kwargs={"scenario": str(scenario_file.resolve()), "index": i},
            limits=site_limits,
            sections=_site_sections(setup, i),
            reachable=i not in unreachable,
        )
        for i, (name, port) in enumerate(zip(setup.names(), ports, strict=True))
    ]
    files = local_federation(root, sites, plan, name=setup.scenario.name, identities=identities)
    _sign_leaves(setup, files, identities)
    own = is_reference(setup.scenario.data.dataset) or is_reference(setup.scenario.model.name)
    python_path = search_folders(setup.scenario) if own else []
    return Federation(root, files, scenario_file, python_path=python_path)


def _sign_leaves(setup: Setup, files: list[SiteFiles], identities: list[Identity]) -> None:
    """Each scenario ``leave`` as its member signs it before the start, in every ledger copy.

    A leave named in round i (counted from 0, its last round) is ``leave --after-round``
    its number, i + 1: the daemons acknowledge it in their first round, so its boundary
    is the next round, where the rehearsal puts it.
    """
    leaves = [(e.round, i) for e in setup.scenario.events if e.kind == "leave" for i in e.nodes]
    if not leaves:
        return
    ledger = load_ledger(files[0].directory / "ledger")
    for round_, i in leaves:
        ledger.leave(identities[i].signing_key, number(round_), clock=ledger.next_clock())
    for site in files:
        save_ledger(ledger, site.directory / "ledger")


def _site_sections(setup: Setup, i: int) -> dict[str, dict[str, Any]]:
    """A site's own ``[privacy]`` choice (from ``privacy.opt_in``) and its ``[drift]`` watch."""
    sc = setup.scenario
    drift = {k: v for k, v in dataclasses.asdict(sc.drift).items() if k != "inject"}
    share = setup.data.nodes[i].name in sc.privacy.opt_in
    return {"privacy": {"share_metrics": share}, "drift": drift}


def wait_for(
    federation: Federation,
    rounds: int,
    *,
    timeout: float,
    progress: Progress | None = None,
    watch: Callable[[Federation], None] | None = None,
) -> None:
    """Wait until every daemon exited (raising if one failed) or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    reported = 0
    while True:
        running = [i for i, p in federation.procs.items() if p.poll() is None]
        failed = [i for i, p in federation.procs.items() if p.poll() not in (None, 0)]
        if failed:
            i = failed[0]
            raise P2PFLError(
                f"daemon {federation.sites[i].name} exited with status "
                f"{federation.procs[i].returncode}; its log ends with:\n{federation.log_tail(i)}"
            )
        if progress is not None:
            done = min(federation.completed(i) for i in range(len(federation.sites)))
            if done > reported:
                reported = done
                progress(min(done, rounds))
        if watch is not None:
            watch(federation)
        if not running:
            return
        if time.monotonic() > deadline:
            raise P2PFLError(
                f"the daemons did not finish {rounds} rounds in {timeout:.0f} s; "
                f"log of {federation.sites[running[0]].name}:\n{federation.log_tail(running[0])}"
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            federation.procs[running[0]].wait(timeout=0.1)


def collect(setup: Setup, federation: Federation, label: str, wall_total: float) -> RunResult:
    """Per-round metrics from the daemons' checkpoints, evaluated as the protocol engine does."""
    sc = setup.scenario
    rounds = sc.training.rounds
    n = setup.n
    ckpts: list[dict[int, Any]] = []
    for site in federation.sites:
        read = [read_checkpoint(p) for _, p in list_checkpoints(site.directory / "checkpoints")]
        ckpts.append({index(c.round): c for c in read})  # keyed as the engines count rounds
    params = setup.initial.clone().unsqueeze(0).repeat(n, 1)
    roster = sorted(site.node_id for site in federation.sites)
    ledgers = (
        [load_ledger(site.directory / "ledger") for site in federation.sites]
        if sc.privacy.private_metrics
        else []
    )
    records: list[RoundRecord] = []
    t_eval = t_train = 0.0
    stragglers = abandoned = 0
    previous_end = min(
        (c.meta["finished_at"] - c.meta["seconds"] for found in ckpts for c in found.values()),
        default=0.0,
    )
    for r in range(rounds):
        sent = 0
        trained = 0.0
        ends = []
        for i in range(n):
            ckpt = ckpts[i].get(r)
            if ckpt is None:
                continue  # skipped by a node that was down: it keeps its model
            params[i].copy_(torch.from_numpy(ckpt.model))
            sent += int(ckpt.meta.get("bytes_sent", 0))
            ends.append(float(ckpt.meta["finished_at"]))
            stragglers += len(ckpt.meta.get("stragglers", ()))
            trained += float(ckpt.meta.get("train_seconds", 0.0))
        acc = loss = aggregate = None
        t0 = time.perf_counter()
        if sc.privacy.private_metrics:
            aggregate = ledger_summary(ledgers, roster, number(r))
        elif (r + 1) % sc.eval.every == 0 or r == rounds - 1:
            data = setup.data
            acc, loss = evaluate(setup.model, params, data.x_global_test, data.y_global_test)
        t_eval += time.perf_counter() - t0
        end = max(ends, default=previous_end)
        wall = max(0.0, end - previous_end)
        t_train += trained
        records.append(round_record(r, acc, loss, params, sent / n, wall, aggregate, trained))
        previous_end = end
    for found in ckpts:
        if found:
            abandoned += int(found[max(found)].meta.get("abandoned", 0))
    train = t_train / n
    members, epochs = None, {}
    if sc.events:  # the rule the daemons followed, from the same events
        line = timeline(sc.events, setup.names(), rounds)
        members = list(line.epoch_at(rounds - 1).members)
        epochs = epochs_summary(line, 0)
        epochs.pop("late_frames", None)  # the rehearsal's count; daemons hold such frames
    return RunResult(
        label,
        "processes",
        records,
        params.clone(),
        setup.names(),
        [nd.name for nd in setup.data.nodes],
        wall_train=train,
        wall_mix=max(0.0, wall_total - train - t_eval),
        wall_eval=t_eval,
        wall_total=wall_total,
        stragglers=stragglers,
        extra={
            "abandoned": abandoned,
            "node_ids": [s.node_id for s in federation.sites],
            **drift_from_audit(setup, federation),
            **epochs,
        },
        members=members,
    )


def ledger_summary(
    ledgers: list[Any], roster: list[str], r: int
) -> tuple[float | None, float | None] | None:
    """Round number ``r``'s accuracy and loss from the masked records in the sites' ledgers.

    What any member can compute: the sum of every member's masked figures; a round
    some member never published has no figure (None).
    """
    from p2pfl.node.privacy import federation_sum
    from p2pfl.privacy.metrics import summary

    for ledger in ledgers:
        total = federation_sum(ledger.metrics(r), roster)
        if total is not None:
            return summary(total)
    return None


def drift_from_audit(setup: Setup, federation: Federation) -> dict[str, Any]:
    """The daemons' drift events (from their audit logs), as the simulators report them."""
    if not setup.scenario.drift.enabled:
        return {}
    from p2pfl.engines.drift import public_event
    from p2pfl.node.audit import read_entries

    sites = [nd.name for nd in setup.data.nodes]
    opt_in = setup.scenario.privacy.opt_in
    events = []
    for i, site in enumerate(federation.sites):
        for entry in read_entries(site.directory / "audit.jsonl"):
            if entry.get("event") == "drift":
                entry = {**entry, "round": index(entry["round"])}  # as the simulators count
                events.append(public_event(entry, sites[i], opt_in))
    events.sort(key=lambda e: e["round"])
    return {"drift": {"events": events, "injected": []}}


def run_processes(
    setup: Setup,
    label: str,
    progress: Progress | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    limits: dict[str, Any] | None = None,
    watch: Callable[[Federation], None] | None = None,
    unreachable: Collection[int] = (),
) -> RunResult:
    """Run ``setup`` with one daemon per node; ``root`` keeps the working directory.

    ``unreachable``: the nodes that accept no connection (``[node] reachable = false``):
    they dial out, and a reachable member relays the links between two of them.
    """
    refuse_attack(setup, "the processes engine (real daemons)")
    keep = root is not None
    workdir = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="p2pfl-procs-"))
    rounds = setup.scenario.training.rounds
    timeout = timeout if timeout is not None else 300.0 + 30.0 * rounds
    federation = prepare_federation(setup, workdir, limits=limits, unreachable=unreachable)
    start = time.perf_counter()
    try:
        for i in range(setup.n):
            federation.start(i)
        wait_for(federation, rounds, timeout=timeout, progress=progress, watch=watch)
        total = time.perf_counter() - start
        result = collect(setup, federation, label, total)
    finally:
        federation.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if keep:
        result.extra["workdir"] = str(workdir)
    return result


def run(setup: Setup, label: str, progress: Progress | None = None) -> RunResult:
    """The engine entry point (``p2pfl.engines.ENGINES['processes']``)."""
    return run_processes(setup, label, progress)
