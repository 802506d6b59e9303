"""Fixed costs of the ``p2pfl`` command, against the interpreter's own, in one run.

Each command runs as a fresh process (best of ``--repeat``, wall clock):

1. ``python -c pass``: the interpreter floor;
2. ``python -c "import torch"``: what torch alone costs, its teardown at the
   interpreter's exit included, and without it (``os._exit``, as the command ends:
   ``p2pfl.cli.exit_now``); and torch with a
   first vmapped training step the way ``StackedTrainer`` takes it (a vmapped forward,
   one backward; ``vmap``'s decompositions import sympy on first use), beside the
   same step through ``torch.func.grad``, which also imports ``torch._dynamo``;
3. ``p2pfl --help``: the command's start-up (target: under 0.3 s);
4. ``p2pfl simulate SCENARIO --json``: the whole run, split into training (the engines'
   runs, the report's ``wall.total``; the baselines: pooled, local-only; each site's
   evaluation and personalisation) and the rest, outside training (interpreter, imports,
   data, graph, metrics, plots, the crate; target: under 1.5 s for
   ``simulations/tiny.toml``), of which loading the data, the plots and the crate;
   and when the report reached standard output (the plots and the crate are written
   after it), with the part of that outside training against the same target.

    python simulations/bench/cli_startup_bench.py [--scenario simulations/tiny.toml]

The commands run with ``python -m p2pfl`` from this interpreter, so the figures do not
depend on where the ``p2pfl`` script is installed; ``simulate`` runs through a few lines
that time the baselines, the site rows and the plots (``HARNESS``) and then call the command as is
(``main``, then ``exit_now`` as the installed command does).
Note the machine's load (printed first) beside the figures: other processes competing for
the cores slow every line alike, which is why the ratios to the floor are printed too.
It prints figures; it asserts nothing.
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


def run_once(command: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds of one run of ``command``, and what it printed."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return wall, done


def best(command: list[str], repeat: int) -> float:
    return min(run_once(command)[0] for _ in range(repeat))


HARNESS = """
import json, sys, time
import p2pfl.baselines, p2pfl.engines.common, p2pfl.provenance, p2pfl.report, p2pfl.simulate
spent = {"baselines": 0.0, "sites": 0.0, "plots": 0.0, "data": 0.0, "crate": 0.0}
def timed(name, fn):
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start
    return call
p2pfl.baselines.run_baselines = timed("baselines", p2pfl.baselines.run_baselines)
p2pfl.report.plot_rounds = timed("plots", p2pfl.report.plot_rounds)
p2pfl.simulate._site_rows = timed("sites", p2pfl.simulate._site_rows)
p2pfl.engines.common.load_data = timed("data", p2pfl.engines.common.load_data)
p2pfl.provenance.write_simulation_crate = timed(
    "crate", p2pfl.provenance.write_simulation_crate
)
from p2pfl.cli import exit_now, main
status = main(sys.argv[1:])
print("BENCH " + json.dumps(spent), file=sys.stderr)
exit_now(status)  # as the command ends
"""


def simulate(scenario: str, repeat: int) -> dict[str, float]:
    """The fastest of ``repeat`` runs of ``p2pfl simulate --json``, its parts timed."""
    results = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as out:
            argv = ["simulate", scenario, "--out", out, "--json"]
            start = time.perf_counter()
            with subprocess.Popen(
                [sys.executable, "-c", HARNESS, *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ) as proc:
                assert proc.stdout is not None
                first = os.read(proc.stdout.fileno(), 1)  # the report's first byte, unbuffered
                report_at = time.perf_counter() - start
                rest, raw_err = proc.communicate()
            err = raw_err.decode()
            wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"p2pfl {' '.join(argv)} failed ({proc.returncode}):\n{err}")
        report = json.loads((first + rest).decode())
        spent = json.loads(err.rpartition("BENCH ")[2])
        engine = sum(run["wall"]["total"] for run in report["runs"])
        results.append({"wall": wall, "engine": engine, "report_at": report_at, **spent})
    return min(results, key=lambda r: r["wall"])


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
    # The command skips the interpreter's teardown (``p2pfl.cli.exit_now``): so does this floor.
    torch_import_s = best([python, "-c", "import os, torch; os._exit(0)"], args.repeat)
    first_grad = "import torch; torch.func.grad(lambda x: (x * x).sum())(torch.ones(2))"
    grad_s = best([python, "-c", first_grad], args.repeat)
    first_step = (
        "import torch; x = torch.ones(3, 2, requires_grad=True); "
        "torch.autograd.grad(torch.vmap(lambda r: (r * r).sum())(x).sum(), x)"
    )
    step_s = best([python, "-c", first_step], args.repeat)
    help_s = best([python, "-m", "p2pfl", "--help"], args.repeat)
    run = simulate(str(Path(args.scenario)), args.repeat)
    training = run["engine"] + run["baselines"] + run["sites"]
    outside = run["wall"] - training

    def line(name: str, seconds: float, target: float | None = None) -> None:
        ratio = seconds / floor if floor > 0 else float("nan")
        goal = "" if target is None else f"   target < {target:.2f} s: "
        if target is not None:
            goal += "met" if seconds < target else "NOT met"
        print(f"  {name:<36} {seconds:7.3f} s  {ratio:6.1f}x the floor{goal}")

    line("python -c pass (floor)", floor)
    line("python -c 'import torch'", torch_s)
    line("  importing it, no teardown", torch_import_s)
    line("  + a first vmap + backward step", step_s)
    line("  + torch.func.grad instead", grad_s)
    line("p2pfl --help", help_s, HELP_TARGET_S)
    line(f"p2pfl simulate {args.scenario}", run["wall"])
    line("  training: the engines' runs", run["engine"])
    line("  training: the baselines", run["baselines"])
    line("  training: site rows, personalised", run["sites"])
    line("  outside training", outside, OUTSIDE_TRAINING_TARGET_S)
    line("    of which loading the data", run["data"])
    line("    of which the plots", run["plots"])
    line("    of which the crate", run["crate"])
    line("    beyond importing torch", outside - torch_import_s)
    line("  the report printed at", run["report_at"])
    line("    outside training until then", run["report_at"] - training, OUTSIDE_TRAINING_TARGET_S)
    print(f"  p2pfl --help / import torch: {help_s / torch_s:.2f}")


if __name__ == "__main__":
    main()
