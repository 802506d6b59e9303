"""The soak's harness: a federation of node daemons behind fault proxies, run and measured.

``soak(root, settings)`` builds ``settings.nodes`` sites in ``root``
(``local_federation``, TLS, the heart-disease logistic regression, secure
aggregation on a complete graph), puts a ``FaultProxy`` in front of every
daemon's listener (the ledger records the proxy's address, ``[node]
advertise``, so every link crosses one), runs every daemon as ``python -m
p2pfl node run`` with ``PYTHONPATH`` set to the repository (nothing needs to
be installed), samples their RSS, open descriptors and completed rounds from
/proc and their status files while they run, and reads back what they left:
checkpoints, audit logs, saved ledgers. ``Settings.reset_on_round`` also
resets every proxied connection at once whenever a daemon completes a round
(the moment when a node that finished its round still owes a slower
neighbour frames).

simulations/bench/soak_bench.py prints and saves the figures;
tests/p2pfl/node/test_soak_short.py and test_soak_resets.py run it small.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import statistics
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from p2pfl.engines.processes import free_ports  # noqa: E402
from p2pfl.ledger_file import load_ledger  # noqa: E402
from p2pfl.node.audit import entries_in, verify_data  # noqa: E402
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation  # noqa: E402
from p2pfl.node.checkpoint import list_checkpoints, read_checkpoint  # noqa: E402
from p2pfl.node.status import read_status  # noqa: E402
from p2pfl.spec import plan_from_table  # noqa: E402
from p2pfl.transport.faultproxy import FaultProxy, LinkFaults  # noqa: E402
from protocols.ledger import Ledger  # noqa: E402
from protocols.ledger_doc import MAPS  # noqa: E402
from protocols.secagg.config import threshold_for  # noqa: E402

HOSPITALS = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")


@dataclass(frozen=True)
class Settings:
    nodes: int = 16
    rounds: int = 200
    seed: int = 0
    faults: LinkFaults = field(
        default_factory=lambda: LinkFaults(
            latency=0.005, jitter=0.005, bandwidth=20e6, resets_per_second=0.02
        )
    )
    warmup: int = 20  # the round from which growth is measured
    interval: float = 0.5  # seconds between samples
    timeout: float = 7200.0
    round_timeout: float = 60.0  # the plan's round and secure (share, masked, unmask) timeouts
    reset_on_round: bool = False  # reset every proxied connection when a daemon ends a round


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the daemons started
    round: int  # the daemon's last completed round (status file), -1 before its first
    rss: int  # bytes
    fds: int
    cpu: float = 0.0  # seconds of CPU the daemon used so far (user + system)


@dataclass
class NodeResult:
    name: str
    returncode: int | None
    completed: list[int]  # rounds with a checkpoint
    stragglers: int  # the most neighbours missing from one round
    abandoned: int  # rounds its secure receiver abandoned
    skipped: list[dict[str, Any]]  # rounds-skipped / round-abandoned audit records
    audit_intact: bool
    peer_faults: int  # protocol faults it counted against neighbours (replayed duplicates)
    banned: int  # neighbours it disconnected for too many of them
    slowest: float  # seconds of its slowest round (checkpoint meta)
    samples: list[Sample] = field(default_factory=list)
    log_tail: str = ""


@dataclass
class Result:
    settings: Settings
    wall: float
    tolerance: int  # neighbours a secure round may lose (d - t)
    nodes: list[NodeResult]
    records_converged: bool
    state_vectors_converged: bool
    resets: int  # connections the proxies reset
    proxied_bytes: int
    ledger_hashes: list[str] = field(default_factory=list)  # per node: its saved records


Progress = Callable[[float, list[int]], None]
"""(seconds since the daemons started, each daemon's last completed round or -1)."""


def plan(settings: Settings) -> dict[str, Any]:
    return {
        "seed": settings.seed,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "logreg"},
        "training": {"rounds": settings.rounds, "local_epochs": 1, "batch_size": 32, "lr": 0.02},
        "topology": {"kind": "complete"},
        "gossip": {"mode": "sync", "round_timeout": settings.round_timeout},
        "secure": {
            "enabled": True,
            "share_timeout": settings.round_timeout,
            "masked_timeout": settings.round_timeout,
            "unmask_timeout": settings.round_timeout,
        },
    }


def tolerance(settings: Settings) -> int:
    """Neighbours a node's secure round may lose and still complete: d - t."""
    degree = settings.nodes - 1
    return degree - threshold_for(plan_from_table(plan(settings)).secagg_config(), degree)


def build(root: Path, settings: Settings) -> tuple[list[SiteFiles], list[int], list[int]]:
    """The federation's files; each daemon's listen port and its proxy's port."""
    ports = free_ports(2 * settings.nodes)
    listen, proxied = ports[: settings.nodes], ports[settings.nodes :]
    sites = [
        Site(
            f"n{i:02d}",
            f"wss://127.0.0.1:{listen[i]}",
            "p2pfl.node.examples:heart_site",
            [HOSPITALS[i % len(HOSPITALS)]],
            address=f"wss://127.0.0.1:{proxied[i]}",
            limits={
                "threads": 1,
                "keep_checkpoints": 0,
                "status_interval": 0.5,
                "backoff_max": 1.0,
                "linger_timeout": 60.0,
            },
        )
        for i in range(settings.nodes)
    ]
    files = local_federation(root, sites, plan(settings), tls=True, name="soak")
    for site in files:  # peers dial the proxy: the ledger's address is advertised
        table = tomllib.loads(site.config.read_text())
        table["node"]["advertise"] = site.address
        site.config.write_text(tomli_w.dumps(table))
    return files, listen, proxied


def sample(pid: int, directory: Path, at: float) -> Sample | None:
    """The daemon's RSS, descriptors and round now; ``None`` once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    ticks = stat.rsplit(")", 1)[1].split()[11:13]  # utime, stime (fields 14 and 15)
    cpu = sum(int(t) for t in ticks) / os.sysconf("SC_CLK_TCK")
    found = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
    if not found:  # exited, not yet reaped: no memory left to show
        return None
    rss = int(found[0]) * 1024
    done = -1
    with contextlib.suppress(Exception):
        done = int(read_status(directory).get("completed", -1))
    return Sample(at, done, rss, fds, cpu)


async def _daemons(
    files: list[SiteFiles],
    settings: Settings,
    proxies: list[FaultProxy],
    progress: Progress | None,
) -> tuple[list[int | None], list[list[Sample]]]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    procs = []
    for site in files:
        log = (site.directory / "daemon.log").open("wb")
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "p2pfl",
                "node",
                "run",
                "--config",
                str(site.config),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=ROOT,
            )
        )
        log.close()
    samples: list[list[Sample]] = [[] for _ in files]
    latest = [-1] * len(files)
    t0 = time.monotonic()
    try:
        while any(p.returncode is None for p in procs):
            if time.monotonic() - t0 > settings.timeout:
                break
            ended = False
            for i, (proc, site) in enumerate(zip(procs, files, strict=True)):
                if proc.returncode is None:
                    found = sample(proc.pid, site.directory, time.monotonic() - t0)
                    if found is not None:
                        samples[i].append(found)
                        ended |= found.round > latest[i] >= 0
                        latest[i] = max(latest[i], found.round)
            if ended and settings.reset_on_round:
                for proxy in proxies:
                    proxy.reset_all()
            if progress is not None:
                progress(time.monotonic() - t0, latest)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.interval):
                    await asyncio.gather(*(p.wait() for p in procs))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return [p.returncode for p in procs], samples


async def soak_async(root: Path, settings: Settings, progress: Progress | None = None) -> Result:
    files, listen, proxied = build(root, settings)
    proxies = [
        FaultProxy(("127.0.0.1", port), settings.faults, seed=settings.seed * 1000 + i, port=front)
        for i, (port, front) in enumerate(zip(listen, proxied, strict=True))
    ]
    async with contextlib.AsyncExitStack() as stack:
        for proxy in proxies:
            await stack.enter_async_context(proxy)
        t0 = time.perf_counter()
        codes, samples = await _daemons(files, settings, proxies, progress)
        wall = time.perf_counter() - t0
    nodes = [
        node_result(site, code, kept)
        for site, code, kept in zip(files, codes, samples, strict=True)
    ]
    records, vectors, hashes = converged(files)
    return Result(
        settings, wall, tolerance(settings), nodes, records, vectors,
        sum(len(p.resets) for p in proxies), sum(p.forwarded for p in proxies), hashes,
    )  # fmt: skip


def soak(root: Path, settings: Settings, progress: Progress | None = None) -> Result:
    return asyncio.run(soak_async(root, settings, progress))


def node_result(site: SiteFiles, code: int | None, samples: list[Sample]) -> NodeResult:
    metas = [read_checkpoint(p).meta for _, p in list_checkpoints(site.directory / "checkpoints")]
    audit = (site.directory / "audit.jsonl").read_bytes()
    entries = entries_in(audit)
    skipped = [dict(e) for e in entries if e.get("event") in ("rounds-skipped", "round-abandoned")]
    log = (site.directory / "daemon.log").read_text(errors="replace")
    faults = sum(int(e.get("count", 1)) for e in entries if e.get("event") == "peer-protocol-error")
    return NodeResult(
        site.name,
        code,
        sorted(int(m["round"]) for m in metas),
        max((len(m.get("stragglers", [])) for m in metas), default=0),
        max((int(m.get("abandoned", 0)) for m in metas), default=0),
        skipped,
        verify_data(audit).ok,
        faults,
        sum(1 for e in entries if e.get("event") == "peer-banned"),
        max((float(m.get("seconds", 0.0)) for m in metas), default=0.0),
        samples,
        log[-3000:],
    )


def records_hash(records: dict[str, dict[str, object]]) -> str:
    """A digest of a ledger's records, map by map and key by key (sha256, hex)."""
    digest = hashlib.sha256()
    for name in sorted(records):
        for key in sorted(records[name]):
            value = records[name][key]
            raw = bytes(value) if isinstance(value, bytes | bytearray) else repr(value).encode()
            for part in (name.encode(), key.encode(), raw):
                digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def ledger_records(ledger: Ledger) -> dict[str, dict[str, object]]:
    """Every record a ledger holds, map by map (what ``records_hash`` digests)."""
    return {name: ledger.entries(name) for name in MAPS}


def converged(files: list[SiteFiles]) -> tuple[bool, bool, list[str]]:
    """Whether every saved ledger holds the same records and state vector; each one's hash."""
    ledgers = [load_ledger(site.directory / "ledger") for site in files]
    records = [ledger_records(ledger) for ledger in ledgers]
    vectors = {ledger.state_vector() for ledger in ledgers}
    hashes = [records_hash(r) for r in records]
    return all(r == records[0] for r in records), len(vectors) == 1, hashes


def training(samples: list[Sample], warmup: int, rounds: int) -> list[Sample]:
    """The samples from round ``warmup`` until the last round completed (not the linger)."""
    return [s for s in samples if warmup <= s.round < rounds]


def growth(samples: list[Sample], key: str) -> tuple[float, float] | None:
    """(end, highest) against the start of ``samples``, as fractions.

    Start and end are the medians of the first and last tenth of the samples (at
    least three each): a descriptor opened for a moment by a reconnection, or a
    collection about to run, is not growth, while a leak moves the medians too.
    """
    if len(samples) < 6:
        return None
    values = [float(getattr(s, key)) for s in samples]
    tenth = max(3, len(values) // 10)
    base = statistics.median(values[:tenth])
    end = statistics.median(values[-tenth:])
    return (end - base) / base, (max(values) - base) / base


def cpu_per_round(samples: list[Sample]) -> float | None:
    """CPU seconds the daemon used per round completed, over ``samples``."""
    if len(samples) < 2 or samples[-1].round <= samples[0].round:
        return None
    return (samples[-1].cpu - samples[0].cpu) / (samples[-1].round - samples[0].round)
