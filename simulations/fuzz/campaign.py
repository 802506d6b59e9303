"""A fuzz campaign: every target run for a number of cases by a pool of worker processes.

Each worker is one ``run.py --worker TARGET`` process (one libFuzzer loop; atheris
fuzzes one target per process) that shares its target's corpus directory with
the target's other workers (libFuzzer reloads it). A worker counts its cases in
a small shared file (``Counter``): the campaign reads it for progress and for a
target's total, and sets its stop byte once the target has its cases or the
time is up. A worker ended by a failing input is restarted for the cases left,
until the target has had ``MAX_CRASHES`` crashes (workers already running finish).
A free slot goes to a target not yet started, else to the one with the most CPU
time left per worker, from the rates measured so far; with fewer jobs than
targets, a worker is ended after its slice (``_share``) while a target waits.

CPU seconds and peak resident memory come from the kernel (``os.wait4``) when a
worker ends; exec/s is cases per CPU second of fuzzing (the set-up excluded):
on a shared machine that says more of what one free core gives than wall time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_CRASHES = 3
SETUP_SECONDS = 20.0  # no new worker for a target that would be done sooner than this
FIRST_RATE = 1000.0  # cases per second assumed for a target not yet measured
POLL = 0.25
STATUS_EVERY = 10.0


class Counter:
    """A worker's count, in 24 mapped bytes: cases, fuzzing CPU seconds, and a stop byte."""

    SIZE = 24

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if create:
            path.write_bytes(bytes(self.SIZE))
        self._file = open(path, "r+b")  # noqa: SIM115 (kept open for the mapping's lifetime)
        self._map = mmap.mmap(self._file.fileno(), self.SIZE)
        self._cpu0: float | None = None

    def tick(self, cases: int) -> None:
        """Record ``cases`` done so far (a worker calls it after each input)."""
        now = time.process_time()
        if self._cpu0 is None:
            self._cpu0 = now
        struct.pack_into("<Qd", self._map, 0, cases, now - self._cpu0)

    @property
    def cases(self) -> int:
        return int(struct.unpack_from("<Q", self._map, 0)[0])

    @property
    def cpu(self) -> float:
        return float(struct.unpack_from("<d", self._map, 8)[0])

    @property
    def stopped(self) -> bool:
        return self._map[16] != 0

    def stop(self) -> None:
        self._map[16] = 1

    def close(self) -> None:
        self._map.close()
        self._file.close()


@dataclass
class Worker:
    target: str
    process: subprocess.Popen[bytes]
    counter: Counter
    log: Path
    started: float


@dataclass
class Tally:
    """What a target's workers did, finished and running."""

    name: str
    cases: int = 0  # by finished workers
    cpu: float = 0.0  # their fuzzing CPU seconds
    total_cpu: float = 0.0  # their CPU seconds, set-up included
    workers: int = 0
    peak_rss_mb: float = 0.0
    crashes: list[dict[str, Any]] = field(default_factory=list)
    running: list[Worker] = field(default_factory=list)

    def live(self) -> tuple[int, float]:
        cases = self.cases + sum(w.counter.cases for w in self.running)
        return cases, self.cpu + sum(w.counter.cpu for w in self.running)

    def rate(self) -> float | None:
        cases, cpu = self.live()
        return cases / cpu if cpu > 1.0 and cases else None


@dataclass(frozen=True)
class Plan:
    targets: list[str]
    cases: int
    jobs: int
    max_seconds: float
    corpus: Path
    crashes: Path
    work: Path
    max_len: int


class Campaign:
    def __init__(self, plan: Plan, run_py: Path) -> None:
        self.plan = plan
        self.run_py = run_py
        self.tallies = {name: Tally(name) for name in plan.targets}
        self.started = time.monotonic()
        self.deadline = self.started + plan.max_seconds
        self._serial = 0

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        last_status = self.started
        previous = signal.signal(signal.SIGTERM, _terminated)  # so that the workers end too
        try:
            while True:
                self._reap()
                over = time.monotonic() >= self.deadline
                for tally in self.tallies.values():
                    if over or tally.live()[0] >= self.plan.cases:
                        for worker in tally.running:
                            worker.counter.stop()
                if not over:
                    self._share()
                    self._fill()
                if not any(t.running for t in self.tallies.values()):
                    break
                if over and time.monotonic() > self.deadline + 15:
                    self._kill_all()
                if time.monotonic() - last_status >= STATUS_EVERY:
                    last_status = time.monotonic()
                    self._status()
                time.sleep(POLL)
        finally:
            signal.signal(signal.SIGTERM, previous)
            self._kill_all()
            self._reap(block=True)
        self._status()
        return self.report()

    def _free(self) -> int:
        return self.plan.jobs - sum(len(t.running) for t in self.tallies.values())

    def _fill(self) -> None:
        while self._free() > 0:
            choice = self._neediest()
            if choice is None:
                return
            self._spawn(choice)

    def _share(self) -> None:
        """With fewer jobs than targets, end workers past their slice while a target waits.

        A slice is the campaign's time times jobs over targets (60 s at least), so
        that every target gets some of a short campaign.
        """
        waiting = [t for t in self.tallies.values() if t.workers == 0 and len(t.crashes) == 0]
        if not waiting:
            return
        slice_ = max(60.0, self.plan.max_seconds * self.plan.jobs / len(self.tallies))
        now = time.monotonic()
        for tally in self.tallies.values():
            for worker in tally.running:
                if now - worker.started > slice_ and not worker.counter.stopped:
                    worker.counter.stop()
                    waiting.pop()
                    if not waiting:
                        return

    def _neediest(self) -> str | None:
        """A target not yet started, else the one with the most CPU time left per worker."""
        best, best_need = None, (False, 0.0)
        left_wall = self.deadline - time.monotonic()
        for tally in self.tallies.values():
            if len(tally.crashes) >= MAX_CRASHES:
                continue
            remaining = self.plan.cases - tally.live()[0]
            if remaining <= 0:
                continue
            seconds = remaining / (tally.rate() or FIRST_RATE)
            if tally.running and (seconds / len(tally.running) < SETUP_SECONDS or left_wall < 30):
                continue
            need = (tally.workers == 0, seconds / (len(tally.running) + 1))
            if best is None or need > best_need:
                best, best_need = tally.name, need
        return best

    def _spawn(self, name: str) -> None:
        self._serial += 1
        work = self.plan.work
        counter_path = work / f"{name}-{self._serial}.count"
        counter = Counter(counter_path, create=True)
        log = work / f"{name}-{self._serial}.log"
        command = self._command(name, counter_path)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        tally = self.tallies[name]
        tally.workers += 1
        tally.running.append(Worker(name, process, counter, log, time.monotonic()))

    def _command(self, name: str, counter_path: Path) -> list[str]:
        """The worker's command line: ``run.py TARGET --worker COUNTER``, bounded in time."""
        left = max(1, int(self.deadline - time.monotonic()) + 5)
        return [
            sys.executable,
            str(self.run_py),
            name,
            "--worker",
            str(counter_path),
            "--seconds",
            str(left),
            "--corpus",
            str(self.plan.corpus / name),
            "--crashes",
            str(self.plan.crashes / name),
            "--artifacts",
            str(self.plan.work / "artifacts" / name),
            "--max-len",
            str(self.plan.max_len),
        ]

    def _reap(self, *, block: bool = False) -> None:
        for tally in self.tallies.values():
            for worker in list(tally.running):
                pid, status, usage = os.wait4(worker.process.pid, 0 if block else os.WNOHANG)
                if pid == 0:
                    continue
                tally.running.remove(worker)
                tally.cases += worker.counter.cases
                tally.cpu += worker.counter.cpu
                tally.total_cpu += usage.ru_utime + usage.ru_stime
                tally.peak_rss_mb = max(tally.peak_rss_mb, usage.ru_maxrss / 1024)
                code = os.waitstatus_to_exitcode(status)
                worker.process.returncode = code  # reaped here, not by Popen
                if not (code == 0 or (worker.counter.stopped and code == -signal.SIGKILL)):
                    self._crashed(tally, worker, code)
                worker.counter.close()

    def _crashed(self, tally: Tally, worker: Worker, code: int) -> None:
        """Keep the inputs the worker failed on, under ``crashes/TARGET/`` by content hash."""
        kept = _collect(self.plan.work / "artifacts" / tally.name, self.plan.crashes / tally.name)
        known = {path for crash in tally.crashes for path in crash["inputs"]}
        tail = worker.log.read_text(errors="replace").splitlines()[-25:]
        tally.crashes.append(
            {
                "exit": code,
                "inputs": sorted(str(p) for p in kept if str(p) not in known),
                "log": str(worker.log),
                "log_tail": tail,
            }
        )
        print(f"!! {tally.name}: worker ended with {code}; log {worker.log}", flush=True)

    def _kill_all(self) -> None:
        for tally in self.tallies.values():
            for worker in tally.running:
                worker.counter.stop()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGKILL)

    # -- reporting --------------------------------------------------------------------

    def _status(self) -> None:
        elapsed = time.monotonic() - self.started
        done = sum(min(t.live()[0], self.plan.cases) for t in self.tallies.values())
        goal = self.plan.cases * len(self.tallies)
        jobs = sum(len(t.running) for t in self.tallies.values())
        crashes = sum(len(t.crashes) for t in self.tallies.values())
        finished = sum(t.live()[0] >= self.plan.cases for t in self.tallies.values())
        parts = []
        for tally in self.tallies.values():
            if tally.running:
                cases, rate = tally.live()[0], tally.rate()
                speed = f"{rate:.0f}/s" if rate else "starting"
                parts.append(f"{tally.name} {cases:,} x{len(tally.running)} {speed}")
        print(
            f"[{elapsed:4.0f}s] {done:,}/{goal:,} cases, {finished}/{len(self.tallies)} targets "
            f"done, {jobs} jobs, {crashes} crashes | " + ", ".join(parts),
            flush=True,
        )

    def report(self) -> dict[str, Any]:
        targets = {}
        for tally in self.tallies.values():
            rate = tally.cases / tally.cpu if tally.cpu > 0 else None
            targets[tally.name] = {
                "cases": tally.cases,
                "reached": tally.cases >= self.plan.cases,
                "exec_per_cpu_s": round(rate, 1) if rate else None,
                "fuzz_cpu_s": round(tally.cpu, 1),
                "total_cpu_s": round(tally.total_cpu, 1),
                "workers": tally.workers,
                "peak_rss_mb": round(tally.peak_rss_mb, 1),
                "crashes": tally.crashes,
            }
        return {
            "cases_per_target": self.plan.cases,
            "jobs": self.plan.jobs,
            "max_seconds": self.plan.max_seconds,
            "wall_s": round(time.monotonic() - self.started, 1),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "all_reached": all(t["reached"] for t in targets.values()),
            "crashes": sum(len(t["crashes"]) for t in targets.values()),
            "targets": targets,
        }


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _collect(artifacts: Path, crashes: Path) -> list[Path]:
    """Copy libFuzzer's artifacts (crash-, timeout-, oom-...) into ``crashes`` by content hash."""
    crashes.mkdir(parents=True, exist_ok=True)
    for path in sorted(artifacts.glob("*")) if artifacts.is_dir() else []:
        data = path.read_bytes()
        kept = crashes / hashlib.sha1(data).hexdigest()
        if not kept.exists():
            kept.write_bytes(data)
    return sorted(p for p in crashes.iterdir() if p.suffix == "")


def table(report: dict[str, Any]) -> str:
    """The report as a plain table."""
    rows = [
        f"{'target':22s} {'cases':>10s} {'exec/s/core':>11s} {'workers':>7s} "
        f"{'peak MB':>8s} {'crashes':>7s}"
    ]
    for name, t in report["targets"].items():
        rate = f"{t['exec_per_cpu_s']:.0f}" if t["exec_per_cpu_s"] else "-"
        rows.append(
            f"{name:22s} {t['cases']:>10,} {rate:>11s} {t['workers']:>7d} "
            f"{t['peak_rss_mb']:>8.0f} {len(t['crashes']):>7d}"
        )
    return "\n".join(rows)


def write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
