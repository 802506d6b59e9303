"""What one Byzantine member does to honest accuracy, with and without robust mixing.

The scenario of ``tests/p2pfl/engines/test_robust_gossip.py``: eight nodes on
scikit-learn's digits (``simulations/tiny.toml``), a random 4-regular graph,
logistic regression, ten rounds, node 3 the attacker. For each rule (plain
sync, clipped gossip, trimmed mean) and each attack (none, sign-flip -100 x,
scale 100 x, NaN) it prints the honest nodes' mean accuracy on the global test
set; then secure mode, plain and with the ``bounded`` rule at a few radii,
without an attacker (what the bound costs) and with a 100 x one.

    python simulations/bench/robust_attack_bench.py [--engine vectorized] [--rounds 10]

It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from p2pfl.engines import prepare, run_engine
from p2pfl.scenario import load_scenario
from p2pfl.training import evaluate

ROOT = Path(__file__).resolve().parents[2]
ATTACKER = 3


def honest_accuracy(engine: str, overrides: dict[str, Any], data: Any) -> tuple[float, Any]:
    scenario = load_scenario(ROOT / "simulations" / "tiny.toml", overrides)
    setup = prepare(scenario, data)
    result = run_engine(engine, setup, engine)
    rows = [i for i in range(setup.n) if i != ATTACKER]
    d = setup.data
    acc, _ = evaluate(setup.model, result.final_params[rows], d.x_global_test, d.y_global_test)
    return float(acc.mean()), setup.data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="vectorized", choices=["vectorized", "protocol"])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = {
        "data.nodes": 8,
        "topology.kind": "regular",
        "topology.degree": 4,
        "training.rounds": args.rounds,
        "baselines.pooled": False,
        "baselines.local": False,
    }
    data = None
    print(f"honest mean accuracy, attacker node {ATTACKER}, engine {args.engine}")
    print(f"{'rule':10} {'none':>9} {'sign-flip':>9} {'scale':>9} {'nan':>9}")
    for rule in ("none", "clipped", "trimmed"):
        figures = []
        for kind in (None, "sign-flip", "scale", "nan"):
            over = {**base, "gossip.robust": rule}
            if kind is not None:
                over.update({"attack.nodes": [ATTACKER], "attack.kind": kind})
            acc, data = honest_accuracy(args.engine, over, data)
            figures.append(acc)
        print(f"{rule:10} " + " ".join(f"{a:9.4f}" for a in figures))
    print("secure mode, gossip.robust = 'bounded' (radius), no attacker / scale 100 x")
    for radius in (None, 0.05, 0.1, 0.2, 0.5):
        over: dict[str, Any] = {**base, "secure.enabled": True}
        if radius is not None:
            over.update({"gossip.robust": "bounded", "gossip.clip_radius": radius})
        clean, data = honest_accuracy(args.engine, over, data)
        hit, data = honest_accuracy(
            args.engine, {**over, "attack.nodes": [ATTACKER], "attack.kind": "scale"}, data
        )
        label = "no bound" if radius is None else f"r = {radius}"
        print(f"{label:10} {clean:9.4f} {hit:9.4f}")


if __name__ == "__main__":
    main()
