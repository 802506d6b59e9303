"""The shared comparison workload on real daemons beside the protocol engine: wall and peak RSS.

The workload the project has been compared on with other frameworks: 8 nodes on a
ring, 3 rounds of 1 local epoch, the MLP 784-256-128-10, 8,000 Fashion-MNIST
training images (IID, 1,000 a node), batch 64, plain sync gossip. It runs

1. with ``--engine protocol`` (every node's round core in one process, on a
   virtual clock), as a child process: its wall time and peak RSS (the whole
   federation in one process);
2. with ``--engine processes`` (one ``p2pfl node run`` per node on loopback): the
   wall time from the daemons' start to the last round, and each daemon's peak
   RSS (``getrusage`` in its final status), beside the same of a bare Python with
   torch imported (``python -c "import torch"``, the floor of any daemon).

Each engine runs ``--repeat`` times (best wall shown, with the median); the load
average is printed before and after (another process on the cores slows every
line alike). It prints figures; it asserts nothing.

    python simulations/bench/workload_bench.py [--repeat 2] [--rounds 3] [--threads 1]

Needs Fashion-MNIST: apt-get install dataset-fashion-mnist
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from p2pfl.datasets import read_fashion_mnist  # noqa: E402
from p2pfl.engines import prepare  # noqa: E402
from p2pfl.engines.processes import run_processes  # noqa: E402
from p2pfl.errors import DataError  # noqa: E402
from p2pfl.node.status import read_status  # noqa: E402
from p2pfl.scenario import load_scenario  # noqa: E402

WORKLOAD = """
name = "workload"
seed = 0
engine = "protocol"

[data]
dataset = "fashion-mnist"
partition = "iid"
nodes = 8
max_train_samples = 8000
max_test_samples = 2000

[model]
name = "mlp"
hidden = [256, 128]

[training]
rounds = ROUNDS
local_epochs = 1
batch_size = 64
lr = 0.05

[topology]
kind = "ring"

[eval]
every = ROUNDS

[baselines]
pooled = false
local = false
personalised_steps = 0
"""


def workload(rounds: int, folder: str) -> Path:
    """The shared workload as a scenario file in ``folder``."""
    path = Path(folder) / "workload.toml"
    path.write_text(WORKLOAD.replace("ROUNDS", str(rounds)))
    return path


def protocol_engine(rounds: int, threads: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``p2pfl simulate --engine protocol`` as a child."""
    with tempfile.TemporaryDirectory(prefix="p2pfl-workload-") as out:
        command = [sys.executable, "-m", "p2pfl", "simulate", str(workload(rounds, out))]
        command += ["--engine", "protocol", "--threads", str(threads), "--json", "--out", out]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"the protocol engine failed:\n{done.stderr[-3000:]}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        print("  (peak RSS of this child not above an earlier child's: read as an upper bound)")
    return wall, peak / 1024


def daemons(rounds: int) -> tuple[float, list[float]]:
    """Seconds from the daemons' start to their last round, and each one's peak RSS (MB)."""
    with tempfile.TemporaryDirectory(prefix="p2pfl-workload-") as root:
        setup = prepare(load_scenario(workload(rounds, root)))
        result = run_processes(setup, "processes", root=root)
        statuses = [read_status(p.parent) for p in sorted(Path(root).rglob("status.json"))]
        if len(statuses) != setup.n:
            raise SystemExit(f"found {len(statuses)} daemons' status files, not {setup.n}")
        peaks = [(s.get("peak_rss_bytes") or 0) / 2**20 for s in statuses]
    return result.wall_total, peaks


def torch_floor() -> float:
    """Peak RSS (MB) of a bare interpreter with torch imported."""
    code = "import resource, torch; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.strip()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    try:
        read_fashion_mnist()
    except DataError as exc:
        raise SystemExit(f"{exc}\n  apt-get install dataset-fashion-mnist") from None
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; best of {args.repeat}")
    print(
        f"workload: 8 nodes, ring, {args.rounds} rounds x 1 epoch, MLP 784-256-128-10, "
        "8,000 Fashion-MNIST images, batch 64"
    )
    floor = torch_floor()
    protocol = [protocol_engine(args.rounds, args.threads) for _ in range(args.repeat)]
    processes = [daemons(args.rounds) for _ in range(args.repeat)]
    walls = [w for w, _ in protocol]
    print(
        f"  protocol engine (one process): wall {min(walls):.2f} s (median "
        f"{statistics.median(walls):.2f}), peak RSS {max(r for _, r in protocol):.0f} MB"
    )
    walls = [w for w, _ in processes]
    peaks = [p for _, ps in processes for p in ps]
    print(
        f"  --engine processes (8 daemons): start to last round {min(walls):.2f} s (median "
        f"{statistics.median(walls):.2f}), {min(walls) / min(w for w, _ in protocol):.2f}x "
        "the protocol engine's wall"
    )
    print(
        f"    peak RSS per daemon: median {statistics.median(peaks):.0f} MB, max {max(peaks):.0f}"
        f" MB; a bare Python with torch imported: {floor:.0f} MB "
        f"(daemon minus floor: {statistics.median(peaks) - floor:.0f} MB)"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
