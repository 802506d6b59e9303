"""The sharded vectorized engine: two gloo ranks end where one process ends.

One job of two ranks (``sharded_job.py``, started here with the torchrun
variables on 127.0.0.1 and a free port, bounded in time) runs every cell:
sync, CHOCO (quantize and top-k), push-sum and secure mode (with and without a
scheduled dropout), on a ring and on a random 4-regular graph of 12 nodes, and
sync on a graph drawn anew each round, push-sum on a directed graph. Each
cell's final parameters must match the single-process vectorized engine to 1e-5
relative; one secure mix of fixed rows must match the single-process secure mix
bit for bit; a scenario that differs between the ranks must be refused on both.

The halo maths (local plus halo columns make W x), the launcher's environment
and the refusals are tested in this process, without a process group.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from p2pfl.engines import prepare, run_engine
from p2pfl.engines.halo import step_halo
from p2pfl.engines.sharded import shard_partition
from p2pfl.engines.vectorized_secure import SecureMixer
from p2pfl.engines.world import placement, scenario_digest
from p2pfl.errors import ConfigError
from p2pfl.training import stack_order

sys.path.insert(0, str(Path(__file__).parent))
import sharded_job

ROOT = Path(__file__).resolve().parents[3]
JOB = Path(sharded_job.__file__)
RANKS = 2
TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the two-rank job once; its output folder."""
    out = tmp_path_factory.mktemp("sharded")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC"))}
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(RANKS),
        GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
        PYTHONFAULTHANDLER="1",  # a rank that aborts shows where
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(JOB), str(out)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(RANKS)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-4000:]
    return out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


@pytest.mark.parametrize("cell", list(sharded_job.CELLS))
def test_two_ranks_end_where_one_process_ends(job: Path, cell: str) -> None:
    saved = torch.load(job / f"{cell}.pt")
    setup = prepare(sharded_job.scenario(cell))
    single = run_engine("vectorized", setup, cell)
    gap = relative(saved["final"], single.final_params)
    assert gap <= 1e-5, gap
    assert relative(single.final_params, setup.initial.repeat(setup.n, 1)) > 1e-3  # it trained
    assert saved["sharded"]["world_size"] == RANKS
    assert saved["sharded"]["cut_edges"] == shard_partition(setup, RANKS).cut


def test_the_ring_is_cut_twice_and_the_halo_bytes_are_counted(job: Path) -> None:
    shard = torch.load(job / "sync-ring.pt")["sharded"]
    setup = prepare(sharded_job.scenario("sync-ring"))
    assert shard["partition"] == "contiguous" and shard["cut_edges"] == 2
    # two cut edges, one row each way per edge, float32
    assert shard["rank_bytes_per_round"] == 2 * 2 * setup.dim * 4


@pytest.mark.parametrize("topo", list(sharded_job.TOPOLOGIES))
def test_the_secure_mix_is_bit_identical_to_one_process(job: Path, topo: str) -> None:
    setup = prepare(sharded_job.scenario(f"secure-{topo}"))
    x = sharded_job.fixed_rows(setup)
    order = stack_order([int(nd.x_train.shape[0]) for nd in setup.data.nodes], setup.schedule)
    out = torch.empty_like(x)
    SecureMixer(setup, order).mix(setup.topo.mixing(1), 1, x[order].contiguous(), out, 64)
    single = torch.empty_like(out)
    single[torch.as_tensor(order)] = out
    for rank in range(RANKS):
        part = torch.load(job / f"secure-mix-{topo}-{rank}.pt")
        assert torch.equal(part["rows"], single[torch.as_tensor(part["nodes"])]), rank
    assert not torch.equal(single, x)  # it mixed


def test_a_scenario_that_differs_between_ranks_is_refused_on_every_rank(job: Path) -> None:
    for rank in range(RANKS):
        message = (job / f"mismatch-{rank}.txt").read_text()
        assert "did not load the same scenario" in message, message


def test_the_command_writes_on_rank_0_only_and_records_the_world(job: Path) -> None:
    assert [(job / f"cli-status-{r}.txt").read_text() for r in range(RANKS)] == ["0"] * RANKS
    assert not (job / "cli-1").exists() or not any((job / "cli-1").iterdir())
    report = json.loads((job / "cli-0" / "metrics.json").read_text())
    assert report["world"]["size"] == RANKS and len(report["world"]["devices"]) == RANKS
    assert report["world"]["backend"] == "gloo"
    assert report["runs"][0]["extra"]["sharded"]["cut_edges"] == 2  # tiny.toml is a ring
    assert report["runs"][0]["nodes"] == 12 and len(report["runs"][0]["rounds"]) == 2
    crate = json.loads((job / "cli-0" / "ro-crate-metadata.json").read_text())["@graph"]
    values = {e.get("name"): e.get("value") for e in crate if e.get("@type") == "PropertyValue"}
    assert values["world size"] == RANKS
    assert values["devices"] == ", ".join(report["world"]["devices"])
    for name in ("accuracy.png", "consensus.png", "model-base.pt", "scenario.toml"):
        assert (job / "cli-0" / name).is_file(), name


# -- in this process: the halo's maths, the launcher, the refusals -------------------------


@pytest.mark.parametrize("cell", ["sync-regular", "sync-ring"])
def test_local_and_halo_columns_make_the_rows_of_w_x(cell: str) -> None:
    setup = prepare(sharded_job.scenario(cell))
    part = shard_partition(setup, 3)
    w = setup.topo.mixing(0)
    x = torch.randn(setup.n, 5, dtype=torch.float32)
    full = torch.as_tensor(sp.csr_array(w) @ x.numpy().astype(np.float64), dtype=torch.float32)
    for rank, block in enumerate(part.blocks):
        mine = list(reversed(block))  # any stack order of the rank's nodes
        h = step_halo(w, part.blocks, rank, mine, torch.device("cpu"))
        assert sorted(h.recv_nodes) == sorted(
            {j for i in mine for j in sp.csr_array(w)[[i]].indices} - set(mine)
        )
        got = torch.mm(h.w_local, x[mine]) + torch.mm(h.w_halo, x[list(h.recv_nodes)])
        torch.testing.assert_close(got, full[mine], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(h.row_sums[:, 0], torch.ones(len(mine)), rtol=1e-6, atol=1e-6)
        assert sum(h.send_counts) == h.send_rows.numel() and h.send_counts[rank] == 0


def test_more_ranks_than_nodes_is_refused() -> None:
    setup = prepare(sharded_job.scenario("sync-ring"))
    with pytest.raises(ConfigError, match="13 ranks for 12 nodes"):
        shard_partition(setup, 13)


def test_the_launchers_environment_gives_the_placement() -> None:
    assert placement({}) is None
    torchrun = {"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h"}
    torchrun["MASTER_PORT"] = "29500"
    where = placement(torchrun)
    assert where is not None and (where.rank, where.size, where.local_rank) == (2, 4, 0)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    slurm |= {"MASTER_ADDR": "h", "MASTER_PORT": "1"}
    where = placement(slurm)
    assert where is not None and (where.rank, where.size, where.local_rank, where.launcher) == (
        5,
        8,
        1,
        "slurm",
    )
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        placement({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    with pytest.raises(ConfigError, match="rank 4 of 4"):
        placement({**torchrun, "RANK": "4"})


def test_the_digest_tells_scenarios_apart() -> None:
    a = sharded_job.scenario("sync-ring")
    b = sharded_job.scenario("choco-ring")
    from p2pfl.scenario import to_table

    assert scenario_digest(to_table(a)) == scenario_digest(
        to_table(sharded_job.scenario("sync-ring"))
    )
    assert scenario_digest(to_table(a)) != scenario_digest(to_table(b))
