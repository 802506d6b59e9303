"""From ``p2pfl node run`` to the first round: where a daemon's start-up goes.

    python simulations/bench/node_startup_bench.py [--runs 3] [--sites 3] [--plain] [--insecure]

Builds a federation in a temporary directory the way docs/node.md walks an operator
through it (``node init --tls``, ``keys show --json``, ``federation create``,
``invite``, ``join``, ``approve``, all through the CLI), with the plan of the docs
(logistic regression on the heart-disease hospitals, complete graph, secure
aggregation unless ``--plain``), then starts every site's ``p2pfl node run`` at
once: real subprocesses on loopback, one torch thread each (``[limits] threads =
1``). Each daemon's log lines carry their wall-clock time; for each site the
bench prints the time from its process start to:

- imports:   the node is built and starts (``starting the node`` in its log);
- listening: its listener is bound (``listening at``);
- links:     links to every neighbour are up (the last ``link to ... up``);
- synced:    ledgers exchanged with every neighbour (the last ``ledger synced with``);
- approved:  the plan seen approved by every member (``approved by every member``);
- round 0:   the first round started (``training from round``);
- round 1:   the first round completed (``round 1/``);
- exit:      the process ended (after the last round and the linger);
- cpu:       the user + system CPU seconds the daemon used in all (``wait4``): with
             more daemons than cores, the start-up is bound by their sum over the cores.

Each site's joining ledger knows only what its invitation held, so the other
sites' approvals (and the sites admitted after it) reach it through ledger sync:
"approved" includes that. The floor is measured in the same run, right before the
federation starts: ``python -c pass``, ``python -c "import torch"`` and ``python -c
"import p2pfl.cli"`` (best of three each), so the start-up can be read against
what the interpreter and torch cost anyway. With ``--runs N`` the federation is
built and started N times and the medians over runs are printed last. It prints
figures; it asserts nothing.

Measured with ``--runs 3`` on the 2-core development machine, shared with other
work (load averages 4 to 11 while it ran, so every figure is several times what
an idle machine gives; compare with the floor printed beside it):

- before the start-up changes (the log lines only): of 6 runs, 3 never started:
  the site that joined before the last invitation linked to nobody (its ledger knew
  two members, too few for the secure plan) and no member it knew dialled it; it
  refused the third site's dials as a stranger's, and their quick retries got the
  whole host rate-limited (a stall of its own in another run, seen while
  profiling). The 3 that did: start to first round
  (slowest site) 32.4, 20.3 and 15.6 s, with ``import torch`` at 5.5, 3.3 and 1.9 s
  (5.8, 6.2, 8.2 x); 6.2 to 6.6 CPU s per daemon for the whole run;
- after them: 3 of 3 runs started, 29.6, 28.3 and 31.0 s (median 29.6 s), with
  ``import torch`` at 3.6, 4.2 and 5.6 s; 6.7 to 7.4 CPU s per daemon. The three
  daemons share two loaded cores, so the start is bound by their CPU: on this
  machine the overlap of torch's warm-up with the waits and the quicker first
  dials show in no wall figure;
- later, at load averages of 0.9 to 1.2 (the plan now says ``allow_no_dropout``:
  three sites on a complete graph have no neighbour to spare, which secure plans
  refuse otherwise): 3 of 3 runs started, 4.77, 4.38 and 4.57 s, with ``import
  torch`` at 1.96, 1.73 and 1.60 s; each site listening 3.0 to 4.0 s after its
  start (three daemons importing on two cores, 3.5 to 4.0 CPU s each in all) and
  in its first round 0.3 to 0.6 s after the last site listens.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from p2pfl.cli import main as cli_main  # noqa: E402
from p2pfl.engines.processes import free_ports  # noqa: E402

HOSPITALS = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")
PLAN = """\
seed = 0
[data]
input_shape = [37]
num_classes = 2
[model]
name = "logreg"
[training]
rounds = {rounds}
local_epochs = 1
batch_size = 32
lr = 0.02
[topology]
kind = "complete"
[gossip]
mode = "sync"
round_timeout = 60.0
[secure]
enabled = {secure}
allow_no_dropout = true   # 3 sites: no neighbourhood can spare one; start-up is measured here
"""
PHASES = (
    "imports", "listening", "links", "synced", "approved", "round 0", "round 1", "exit", "cpu",
)  # fmt: skip
MARKS = {
    "imports": "starting the node",
    "listening": " listening at ",
    "approved": "approved by every member",
    "round 0": "training from round",
    "round 1": "round 1/",
}
PER_PEER = {
    "links": re.compile(r"link to (\S+) up"),
    "synced": re.compile(r"ledger synced with (\S+)"),
}
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def cli(*argv: object) -> str:
    """Run one ``p2pfl`` command in this process; what it printed. Fails loudly."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli_main([str(a) for a in argv])
    if status != 0:
        raise SystemExit(f"p2pfl {' '.join(map(str, argv))} failed ({status})")
    return out.getvalue()


def build(root: Path, sites: int, secure: bool, scheme: str, rounds: int) -> list[Path]:
    """The docs' walk-through for ``sites`` sites on loopback; their config files."""
    ports = free_ports(sites)
    names = [chr(ord("a") + i) for i in range(sites)]
    addresses = [f"{scheme}://127.0.0.1:{port}" for port in ports]
    dirs = [root / name for name in names]
    for directory, name, address, hospital in zip(dirs, names, addresses, HOSPITALS, strict=False):
        cli("node", "init", directory, "--tls", "--host", "127.0.0.1", "--listen", address)
        config = directory / "node.toml"
        text = config.read_text().replace('args = ["Cleveland"]', f'args = ["{hospital}"]')
        config.write_text(text)
        _set_threads(config)
        (root / f"{name}.json").write_text(cli("keys", "show", "--json", directory / "node.key"))
    plan = root / "plan.toml"
    plan.write_text(PLAN.format(rounds=rounds, secure="true" if secure else "false"))
    founder = dirs[0]
    cli("federation", "create", "--key", founder / "node.key", "--name", "bench",
        "--plan", plan, "--out", founder / "ledger", "--address", addresses[0])  # fmt: skip
    for name, address in zip(names[1:], addresses[1:], strict=True):
        cli("federation", "invite", "--key", founder / "node.key", "--ledger", founder / "ledger",
            "--member", root / f"{name}.json", "--address", address,
            "--out", root / f"{name}.invitation")  # fmt: skip
    for directory, name in zip(dirs[1:], names[1:], strict=True):
        cli("federation", "join", "--key", directory / "node.key",
            "--invitation", root / f"{name}.invitation", "--out", directory / "ledger")  # fmt: skip
    for directory in dirs:
        cli(
            "federation",
            "approve",
            "--key",
            directory / "node.key",
            "--ledger",
            directory / "ledger",
        )
    return [directory / "node.toml" for directory in dirs]


def _set_threads(config: Path) -> None:
    """One torch thread per daemon: ``threads = 1`` in the template's ``[limits]``."""
    text = config.read_text()
    text, count = re.subn(r"(?m)^#?\s*threads = \d+.*$", "threads = 1", text)
    if count != 1:
        raise SystemExit(f"{config}: no threads line in the template to set")
    config.write_text(text)


def _stamp(line: str) -> float | None:
    found = STAMP.match(line)
    if found is None:
        return None
    return datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


class Daemon:
    """One ``p2pfl node run`` process, its log lines collected by a reader thread."""

    def __init__(self, config: Path, extra: list[str]) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        self.config = config
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p2pfl", "node", "run", "--config", str(config), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self.ended = 0.0
        self.cpu = 0.0  # user + system seconds of the whole run
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
        try:
            _, status, usage = os.wait4(self.proc.pid, 0)
        except ChildProcessError:  # ``stop`` reaped it (a failed run): no figures kept
            self.proc.wait()
            self.ended = time.time()
            return
        self.ended = time.time()
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu = usage.ru_utime + usage.ru_stime

    def stop(self) -> None:
        """Kill the daemon if it still runs (another one failed)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self._reader.join(30)

    def wait(self, timeout: float) -> None:
        self._reader.join(timeout)
        if self._reader.is_alive():
            raise SystemExit(f"{self.config}: the daemon did not finish")
        if self.proc.returncode != 0:
            raise SystemExit(
                f"a daemon failed ({self.proc.returncode}):\n" + "".join(self.lines)[-3000:]
            )

    def phases(self, neighbours: int) -> dict[str, float]:
        """Seconds from the process start to each phase (module docstring)."""
        found: dict[str, float] = {}
        peers: dict[str, set[str]] = {name: set() for name in PER_PEER}
        for line in self.lines:
            when = _stamp(line)
            if when is None:
                continue
            for phase, needle in MARKS.items():
                if phase not in found and needle in line:
                    found[phase] = when - self.started
            for phase, pattern in PER_PEER.items():
                match = pattern.search(line)
                if match and phase not in found:
                    peers[phase].add(match.group(1))
                    if len(peers[phase]) == neighbours:
                        found[phase] = when - self.started
        found["exit"] = self.ended - self.started
        found["cpu"] = self.cpu
        return found


def floor() -> dict[str, float]:
    """Best of three wall seconds of the interpreter, torch and the CLI's import."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    figures = {}
    for name, code in (
        ("python", "pass"),
        ("torch", "import torch"),
        ("p2pfl.cli", "import p2pfl.cli"),
    ):
        walls = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
            walls.append(time.perf_counter() - t0)
        figures[name] = min(walls)
    return figures


def one_run(args: argparse.Namespace) -> tuple[dict[str, float], list[dict[str, float]] | None]:
    """Build a federation, start its daemons at once; the floor and each site's phases.

    ``None`` for the phases when a daemon failed or had not finished by ``--timeout``.
    """
    scheme = "ws" if args.insecure else "wss"
    extra = ["--insecure"] if args.insecure else []
    with tempfile.TemporaryDirectory(prefix="p2pfl-startup-bench-") as tmp:
        configs = build(Path(tmp), args.sites, not args.plain, scheme, args.rounds)
        base = floor()
        daemons = [Daemon(config, extra) for config in configs]
        deadline = time.monotonic() + args.timeout
        try:
            for daemon in daemons:
                daemon.wait(max(0.0, deadline - time.monotonic()))
        except SystemExit as exc:
            print(f"  failed: {exc}; the sites reached:", file=sys.stderr)
            for daemon in daemons:
                daemon.stop()
                last = [line for line in daemon.lines if "websockets" not in line][-4:]
                print(f"  {daemon.config.parent.name}: " + "    ".join(last), file=sys.stderr)
            return base, None
        return base, [daemon.phases(args.sites - 1) for daemon in daemons]


def show(base: dict[str, float], sites: list[dict[str, float]], title: str) -> None:
    print(title)
    print(
        f"  floor: python {base['python']:.2f} s, import torch {base['torch']:.2f} s, "
        f"import p2pfl.cli {base['p2pfl.cli']:.2f} s"
    )
    print("  site  " + "".join(f"{p:>10}" for p in PHASES))
    for i, figures in enumerate(sites):
        row = "".join(f"{figures[p]:>10.2f}" if p in figures else f"{'-':>10}" for p in PHASES)
        print(f"  {chr(ord('a') + i):<6}{row}")
    first = max(f.get("round 0", float("nan")) for f in sites)
    print(
        f"  start -> first round started (slowest site): {first:.2f} s = "
        f"{first / base['torch']:.1f} x import torch, "
        f"import torch + {first - base['torch']:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--sites", type=int, default=3, choices=range(2, len(HOSPITALS) + 1))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plain", action="store_true", help="no secure aggregation")
    parser.add_argument("--insecure", action="store_true", help="plain ws:// links, no TLS")
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds for a whole federation's run"
    )
    parser.add_argument("--json", action="store_true", help="also print every run as JSON")
    args = parser.parse_args()
    mode = "plain" if args.plain else "secure"
    links = "ws" if args.insecure else "wss"
    print(
        f"node start-up bench: {args.sites} sites, {mode} sync, {links}, on {os.cpu_count()} "
        f"cores, load {os.getloadavg()[0]:.2f}"
    )
    runs = []
    for i in range(args.runs):
        base, found = one_run(args)
        if found is None:
            print(f"run {i + 1}: did not finish within {args.timeout:.0f} s (above)")
            continue
        runs.append((base, found))
        show(base, found, f"run {i + 1} (load {os.getloadavg()[0]:.2f})")
    if len(runs) > 1:
        base = {k: statistics.median(b[k] for b, _ in runs) for k in runs[0][0]}
        sites = [
            {
                p: statistics.median(run[1][i][p] for run in runs)
                for p in PHASES
                if all(p in run[1][i] for run in runs)
            }
            for i in range(args.sites)
        ]
        show(base, sites, f"median of {len(runs)} finished runs of {args.runs}")
        first = [max(f["round 0"] for f in found) for _, found in runs]
        print(
            "  start -> first round started, slowest site, per run: "
            + ", ".join(f"{x:.2f}" for x in first)
            + f" s; median {statistics.median(first):.2f} s"
        )
    if args.json:
        print(json.dumps([{"floor": b, "sites": s} for b, s in runs]))


if __name__ == "__main__":
    main()
