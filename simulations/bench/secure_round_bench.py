"""Benchmark: secure rounds against plain rounds, measured in the same run (issue 18's targets).

Two cases; each runs plain sync gossip and ``[secure] enabled = true``
alternately, ``--repeat`` times, on each engine of ``--engines``:

- ``hospitals``: ``simulations/hospitals.toml`` without its sweep (the four
  heart-disease hospitals, logistic regression, one local epoch of batch 32
  per round) on the complete graph (``--hospital-topology ring`` for the
  file's own), ``--hospital-rounds`` rounds. Target: secure / plain at most
  1.5x.
- ``1m``: 16 nodes on a random 4-regular graph, the MLP 784-1024-192-10
  (1,002,570 parameters) on 8,000 Fashion-MNIST images IID, one local epoch
  of batch 64 per round, ``--rounds`` rounds. Target: at most 1.2x.

The figure is the steady time per round: the median over rounds 2..R of each
round's wall time (the protocol engine's is real time for every simulated node
in one process; ``--engine processes``' is real time of one daemon per node),
best of the repeats; evaluation runs once, after the last round. Beside it:
bytes on the wire per node and round, and the physical floor of the masking
itself, measured in the same run: the AES-256-CTR keystream rate on one core
times the mask words a secure round must generate (each sender: its self mask
and one mask per partner, towards each receiver it feeds; each receiver: the
survivors' self masks), over all nodes, in milliseconds per round.

The machine may be shared: the load average is printed before and after.

    python simulations/bench/secure_round_bench.py [--cases hospitals,1m]
        [--engines protocol,processes] [--rounds 4] [--hospital-rounds 30]
        [--hospital-topology complete] [--repeat 2] [--threads 1]

Needs Fashion-MNIST for ``1m``: apt-get install dataset-fashion-mnist
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from p2pfl.engines import prepare, run_engine  # noqa: E402
from p2pfl.errors import DataError  # noqa: E402
from p2pfl.scenario import load_scenario, scenario_from_table  # noqa: E402

INSTALL = "apt-get install dataset-fashion-mnist"
TIMEOUTS = {"share_timeout": 120.0, "masked_timeout": 60.0}  # real seconds in daemons


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default="hospitals,1m", help="comma-separated: hospitals, 1m")
    p.add_argument("--engines", default="protocol,processes", help="protocol and/or processes")
    p.add_argument("--rounds", type=int, default=4, help="rounds of the 1m case")
    p.add_argument("--hospital-rounds", type=int, default=30)
    p.add_argument("--hospital-topology", default="complete", help="ring (the file's) or complete")
    p.add_argument("--repeat", type=int, default=2, help="runs per mode (alternating)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


@dataclass(frozen=True)
class Case:
    name: str
    target: float
    build: Callable[[bool], Any]  # secure -> Scenario


def hospitals(args: argparse.Namespace) -> Case:
    def build(secure: bool) -> Any:
        rounds = args.hospital_rounds
        overrides: dict[str, object] = {
            "secure.enabled": secure,
            "topology.kind": args.hospital_topology,
            "training.rounds": rounds,
            "eval.every": rounds,
            "seed": args.seed,
        }
        overrides.update({f"secure.{k}": v for k, v in TIMEOUTS.items()})
        scenario = load_scenario(ROOT / "simulations" / "hospitals.toml", overrides)
        return dataclasses.replace(scenario, sweep={})

    name = f"hospitals: 4 sites, logistic regression, {args.hospital_topology}"
    return Case(name, 1.5, build)


def one_million(args: argparse.Namespace) -> Case:
    def build(secure: bool) -> Any:
        table = {
            "name": "secure-round-bench-1m",
            "seed": args.seed,
            "engine": "protocol",
            "device": "cpu",
            "data": {
                "dataset": "fashion-mnist",
                "partition": "iid",
                "nodes": 16,
                "max_train_samples": 8000,
                "max_test_samples": 2000,
            },
            "model": {"name": "mlp", "hidden": [1024, 192]},
            "training": {"rounds": args.rounds, "local_epochs": 1, "batch_size": 64, "lr": 0.05},
            "topology": {"kind": "regular", "degree": 4},
            "secure": {"enabled": secure, **TIMEOUTS},
            "eval": {"every": args.rounds},
        }
        return scenario_from_table(table, "secure_round_bench")

    return Case("1m: 16 nodes, 4-regular, MLP 784-1024-192-10", 1.2, build)


@dataclass
class Figures:
    round_wall: float  # steady seconds per round: median of rounds 2..R
    round_cpu: float | None  # CPU seconds of this process per round (protocol engine only)
    bytes_per_round: float  # bytes a node sends per round, mean over nodes and rounds
    accuracy: float
    dim: int
    mask_words: int  # mask words one secure round generates, over all nodes


def mask_words(setup: Any) -> int:
    """Words of keystream one secure round needs, over all nodes (see the module doc)."""
    graph, names = setup.graph, setup.names()
    words = 0
    for receiver in names:
        senders = graph.neighbourhood(receiver, 0).in_weights
        d = len(senders)
        k = setup.scenario.secure.sparse_k
        partners = d - 1 if k is None else min(k, d - 1)
        words += d * (1 + partners)  # every sender: self mask + one per partner
        words += d  # the receiver removes every survivor's self mask
    return words * setup.dim


def measure(case: Case, engine: str, secure: bool) -> Figures:
    setup = prepare(case.build(secure))
    cpu = time.process_time()
    result = run_engine(engine, setup, "secure" if secure else "plain")
    cpu = time.process_time() - cpu
    walls = [r.wall for r in result.rounds[1:]] or [result.rounds[0].wall]
    return Figures(
        round_wall=statistics.median(walls),
        round_cpu=cpu / len(result.rounds) if engine == "protocol" else None,
        bytes_per_round=sum(r.bytes_per_node for r in result.rounds) / len(result.rounds),
        accuracy=float(result.rounds[-1].acc_mean or 0.0),
        dim=setup.dim,
        mask_words=mask_words(setup),
    )


def keystream_rate(seconds: float = 0.3) -> float:
    """AES-256-CTR keystream bytes per second on this core, now (the masking floor)."""
    chunk = 1 << 20
    zeros, out = bytearray(chunk), bytearray(chunk)
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        encryptor.update_into(zeros, out)
        done += chunk
    return done / elapsed


def warm_up() -> float:
    """torch.func's first ``grad`` imports torch._dynamo (seconds): pay it before timing."""
    t0 = time.perf_counter()
    torch.func.grad(lambda x: (x * x).sum())(torch.ones(2))
    return time.perf_counter() - t0


def run_case(case: Case, engine: str, repeat: int) -> None:
    runs: dict[bool, list[Figures]] = {False: [], True: []}
    for _ in range(repeat):
        for secure in (False, True):
            runs[secure].append(measure(case, engine, secure))
    plain = min(runs[False], key=lambda f: f.round_wall)
    secure = min(runs[True], key=lambda f: f.round_wall)
    rate = keystream_rate()
    floor = 4 * secure.mask_words / rate
    print(f"{case.name}, --engine {engine}, {secure.dim:,} parameters, best of {repeat}:")
    for label, f in (("plain", plain), ("secure", secure)):
        medians = ", ".join(f"{g.round_wall * 1e3:.1f}" for g in runs[label == "secure"])
        print(
            f"  {label:<7} {f.round_wall * 1e3:9.1f} ms per round (runs: {medians})  "
            f"{f.bytes_per_round / 1e6:9.4f} MB per node  acc {f.accuracy:.4f}"
        )
    ratio = secure.round_wall / plain.round_wall
    verdict = "met" if ratio <= case.target else "MISSED"
    print(f"  secure / plain per round: {ratio:.3f}x (target <= {case.target}x: {verdict})")
    if plain.round_cpu and secure.round_cpu:
        # On a shared machine wall time includes waiting for a core; CPU time does not.
        cpus = [min(g.round_cpu or 0.0 for g in runs[m]) for m in (False, True)]
        ratio = cpus[1] / cpus[0]
        verdict = "met" if ratio <= case.target else "MISSED"
        print(
            f"  CPU per round (whole run / rounds, best): plain {cpus[0] * 1e3:.1f} ms, "
            f"secure {cpus[1] * 1e3:.1f} ms: {ratio:.3f}x (target <= {case.target}x: {verdict})"
        )
    extra = (secure.round_wall - plain.round_wall) * 1e3
    print(
        f"  secure adds {extra:.1f} ms per round; the masking floor (AES-256-CTR at "
        f"{rate / 1e9:.2f} GB/s, {secure.mask_words:,} mask words per round) "
        f"is {floor * 1e3:.1f} ms"
    )
    base = plain.round_cpu or plain.round_wall
    what = "CPU" if plain.round_cpu else "wall"
    print(
        f"  plain's {what} time plus the masking floor alone: {(base + floor) / base:.3f}x "
        "(the best ratio dense masks allow here)"
    )
    print(f"  bytes secure / plain: {secure.bytes_per_round / plain.bytes_per_round:.4f}x")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    makers = {"hospitals": hospitals, "1m": one_million}
    cases = [makers[name.strip()](args) for name in args.cases.split(",") if name.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    print(
        f"secure vs plain rounds: cases {args.cases}, engines {args.engines}, "
        f"{args.repeat} run(s) per mode alternating; torch threads {torch.get_num_threads()}"
    )
    print(f"torch.func warm-up {warm_up():.2f} s (once per process, not counted)")
    print(f"load average before: {os.getloadavg()[0]:.2f} (the machine may be shared)")
    for case in cases:
        for engine in engines:
            try:
                run_case(case, engine, args.repeat)
            except DataError as exc:
                print(f"{case.name}: needs its data ({exc}); {INSTALL}", file=sys.stderr)
                return 2
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("(quantize + mask throughput: python simulations/bench/secagg_bench.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
