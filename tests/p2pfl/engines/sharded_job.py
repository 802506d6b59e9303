"""One rank of the sharded engine's test job (``test_vectorized_sharded.py`` starts two).

Run with the torchrun variables set (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT): ``python tests/p2pfl/engines/sharded_job.py OUT``. For every cell
of ``CELLS`` it runs the scenario sharded and rank 0 saves the final
parameters (node order) as ``OUT/<cell>.pt``; it also mixes a fixed stack of
rows once with the sharded secure mixer (``OUT/secure-mix-<topology>.pt``), and
checks that a scenario differing between ranks is refused on every rank
(``OUT/mismatch-<rank>.txt`` holds the error); last, each rank runs the
command ``p2pfl simulate`` (``CLI``) into ``OUT/cli-<rank>``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from p2pfl import cli
from p2pfl.engines import prepare, sharded
from p2pfl.engines.common import Setup
from p2pfl.engines.halo import step_halo
from p2pfl.engines.secure_shards import ShardSecureMixer
from p2pfl.engines.world import join, leave, placement
from p2pfl.errors import ConfigError
from p2pfl.scenario import Scenario, load_scenario
from p2pfl.simulate import simulate
from p2pfl.training import stack_order

TINY = Path(__file__).resolve().parents[3] / "simulations" / "tiny.toml"
BASE: dict[str, Any] = {
    "data.nodes": 12,
    "training.rounds": 3,
    "baselines.pooled": False,
    "baselines.local": False,
    "baselines.personalised_steps": 0,
    "device": "cpu",
}
TOPOLOGIES: dict[str, dict[str, Any]] = {
    "ring": {"topology.kind": "ring"},
    "regular": {"topology.kind": "regular", "topology.degree": 4},
}
MODES: dict[str, dict[str, Any]] = {
    "sync": {},
    "choco": {"gossip.mode": "choco", "gossip.compression": "quantize", "gossip.bits": 4},
    "topk": {"gossip.mode": "choco", "gossip.compression": "topk", "gossip.topk_fraction": 0.3},
    "async": {"gossip.mode": "async"},
    "secure": {"secure.enabled": True},
}
CELLS = {
    f"{m}-{t}": {**BASE, **tv, **mv} for t, tv in TOPOLOGIES.items() for m, mv in MODES.items()
}
CELLS["sync-per-round"] = {**BASE, "topology.kind": "random-regular-per-round"}  # time-varying
CELLS["async-directed"] = {**BASE, "topology.kind": "exponential-directed", "gossip.mode": "async"}
CELLS["secure-dropout-regular"] = {
    **BASE,
    **TOPOLOGIES["regular"],
    "secure.enabled": True,
    "dropouts.schedule": [[3, 1]],
}


CLI = ["simulate", str(TINY), "--engine", "vectorized", "--threads", "1"]
CLI += ["--set", "data.nodes=12", "--set", "training.rounds=2", "--set", "device=cpu"]


def scenario(cell: str) -> Scenario:
    return load_scenario(TINY, dict(CELLS[cell]))


def fixed_rows(setup: Setup) -> torch.Tensor:
    """A stack of distinct rows in node order, the same on every rank."""
    gen = torch.Generator().manual_seed(7)
    return setup.initial.repeat(setup.n, 1) + torch.randn(setup.n, setup.dim, generator=gen)


def secure_mix_once(setup: Setup, world: Any, part: Any, mine: list[int]) -> torch.Tensor:
    """This rank's rows of the secure mix of ``fixed_rows`` at round 1."""
    x = fixed_rows(setup)[mine].contiguous()
    out = torch.empty_like(x)
    h = step_halo(setup.topo.mixing(1), part.blocks, world.rank, mine, world.device)
    ShardSecureMixer(setup, mine).mix(h, 1, x, out, 64)
    return out


def main(out: Path) -> None:
    where = placement(os.environ)
    assert where is not None and where.size > 1
    world = join(where, "cpu")
    torch.set_num_threads(1)
    try:
        for cell in CELLS:
            setup = prepare(scenario(cell))
            result = sharded.run(setup, cell, world)
            if world.leader:
                assert result is not None
                torch.save(
                    {"final": result.final_params, "sharded": result.extra["sharded"]},
                    out / f"{cell}.pt",
                )
        for topo in TOPOLOGIES:
            setup = prepare(scenario(f"secure-{topo}"))
            part = sharded.shard_partition(setup, world.size)
            block = list(part.blocks[world.rank])
            sizes = [int(setup.data.nodes[i].x_train.shape[0]) for i in block]
            mine = [block[p] for p in stack_order(sizes, setup.schedule)]
            mixed = secure_mix_once(setup, world, part, mine)
            torch.save({"nodes": mine, "rows": mixed}, out / f"secure-mix-{topo}-{world.rank}.pt")
        seed = 1 + world.rank  # rank 1 loaded another scenario
        try:
            simulate(load_scenario(TINY, {**BASE, "seed": seed}), world=world)
            message = "no error"
        except ConfigError as exc:
            message = str(exc)
        (out / f"mismatch-{world.rank}.txt").write_text(message)
        status = cli.main([*CLI, "--out", str(out / f"cli-{world.rank}")])  # leaves the group
        (out / f"cli-status-{world.rank}.txt").write_text(str(status))
    finally:
        leave()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
