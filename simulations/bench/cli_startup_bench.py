"""Fixed costs of the ``p2pfl`` command, against the interpreter's own, in one run.

Each command runs as a fresh process (best of ``--repeat``, wall clock):

1. ``python -c pass``: the interpreter floor;
2. ``python -c "import torch"``: what torch alone costs to import;
3. ``p2pfl --help``: the command's start-up (target: under 0.3 s);
4. ``p2pfl simulate SCENARIO --json``: the whole run, split into the engine's own
   training loop (the report's ``wall.total`` of each run) and the rest, outside training
   (imports, data, baselines, writing metrics and plots; target: under 1.5 s for
   ``simulations/tiny.toml``).

    python simulations/bench/cli_startup_bench.py [--scenario simulations/tiny.toml]

The commands run with ``python -m p2pfl`` from this interpreter, so the figures do not
depend on where the ``p2pfl`` script is installed. Note the machine's load (``uptime``)
beside the figures: other processes competing for the cores slow every line alike, which
is why the ratios to the floor are printed too. It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP_TARGET_S = 0.3
OUTSIDE_TRAINING_TARGET_S = 1.5


def run_once(command: list[str]) -> tuple[float, str]:
    """Wall seconds of one run of ``command`` and its standard output."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return wall, done.stdout


def best(command: list[str], repeat: int) -> float:
    return min(run_once(command)[0] for _ in range(repeat))


def simulate(scenario: str, repeat: int) -> tuple[float, float]:
    """Best wall time of ``p2pfl simulate --json`` and the engine time of that run."""
    results = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "p2pfl", "simulate", scenario, "--out", out, "--json"]
            wall, stdout = run_once(command)
        report = json.loads(stdout)
        engine = sum(run["wall"]["total"] for run in report["runs"])
        results.append((wall, engine))
    return min(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="simulations/tiny.toml")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    python = sys.executable

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} cores, load average {load}; best of {args.repeat} runs")
    floor = best([python, "-c", "pass"], args.repeat)
    torch_s = best([python, "-c", "import torch"], args.repeat)
    help_s = best([python, "-m", "p2pfl", "--help"], args.repeat)
    wall, engine = simulate(str(Path(args.scenario)), args.repeat)
    outside = wall - engine

    def line(name: str, seconds: float, target: float | None = None) -> None:
        ratio = seconds / floor if floor > 0 else float("nan")
        goal = "" if target is None else f"   target < {target:.2f} s: "
        if target is not None:
            goal += "met" if seconds < target else "NOT met"
        print(f"  {name:<36} {seconds:7.3f} s  {ratio:6.1f}x the floor{goal}")

    line("python -c pass (floor)", floor)
    line("python -c 'import torch'", torch_s)
    line("p2pfl --help", help_s, HELP_TARGET_S)
    line(f"p2pfl simulate {args.scenario}", wall)
    line("  of which the engines' runs", engine)
    line("  outside training", outside, OUTSIDE_TRAINING_TARGET_S)
    print(f"  p2pfl --help / import torch: {help_s / torch_s:.2f}")


if __name__ == "__main__":
    main()
