"""The vectorized engine sharded over ``torch.distributed`` ranks (torchrun, Slurm).

Each rank holds one block of the nodes (``topology.shards.partition``): their
parameters, training data and optimizer state, trained with vmap exactly as the
single-process engine trains its stack. Mixing needs only the halo: the rows of
in-neighbours held by other ranks, exchanged once per step with one
``all_to_all_single`` sized by the cut (``p2pfl.engines.halo``); no rank ever
gathers every node. Per mode:

- ``sync``: the halo is the neighbours' rows; X <- W X.
- ``choco``: each node's public copy moves by Q(x - x_hat) with the node's own
  uniforms (``NodeUniforms``: seeded by (seed, node, round), so any partition
  draws the same numbers), then the copies' halo is exchanged and the CHOCO step
  taken; the nodes' copies live with the nodes.
- ``async``: push-sum numerators and weights travel together (one more column).
- secure: the sender encodes W_ij x_j in fixed point with the cores' own
  ``fixed_codes``; the codes that cross ranks are exchanged as integers and the
  receiver adds them to its local codes, so each neighbourhood's sum is the
  single-process sum bit for bit (integer addition does not depend on order).

Rank 0 gathers what the report needs (per node accuracy and loss, the consensus
distance from two all-reduces, the final parameters once) and returns the
``RunResult`` a single-process run returns; the other ranks return None.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from p2pfl.engines.attack import refuse_attack
from p2pfl.engines.common import Progress, RoundRecord, RunResult, Setup
from p2pfl.engines.halo import StepHalo, exchange, step_halo
from p2pfl.engines.privacy import delta_noise, make_trainer, norm_summary
from p2pfl.engines.secure_shards import ShardSecureMixer
from p2pfl.engines.traffic import bytes_sent
from p2pfl.engines.uniforms import NodeUniforms
from p2pfl.engines.vectorized_mix import COMPRESS_ELEMENTS, block_columns, choco_copies_update
from p2pfl.engines.world import World, check_same, scenario_digest
from p2pfl.errors import ConfigError
from p2pfl.training import evaluate, nodes_per_call, stack_order
from protocols.compression import make_compressor
from protocols.mixing import choco_step, push_sum_absorb, push_sum_model
from topology.shards import Partition, partition, pattern


def shard_partition(setup: Setup, parts: int) -> Partition:
    """The blocks of ``parts`` ranks over the run's graph (every step it reaches, united)."""
    if parts > setup.n:
        raise ConfigError(
            f"{parts} ranks for {setup.n} nodes: start at most {setup.n} ranks "
            "(every rank needs at least one node)"
        )
    adjacency = pattern(setup.topo.mixing(step) for step in setup.graph.steps)
    return partition(adjacency, parts, setup.topo.kind, setup.scenario.seed)


def _refuse_unsupported(setup: Setup) -> None:
    sc = setup.scenario
    if sc.drift.enabled:
        raise ConfigError("[drift] is not simulated sharded yet: run it on one process")
    if sc.privacy.private_metrics:
        raise ConfigError(
            "privacy.private_metrics is not simulated sharded yet: run on one process"
        )
    if sc.gossip.robust != "none":
        raise ConfigError(
            f"gossip.robust = {sc.gossip.robust!r} is not simulated sharded yet: its mix needs "
            "each neighbour's row apart, not the halo's matrix product; run on one process"
        )
    if sc.gossip.mode in ("tracking", "qgm"):
        raise ConfigError(
            f"gossip.mode = {sc.gossip.mode!r} is not simulated sharded yet: run it on one "
            "process (engine 'vectorized' or 'protocol')"
        )
    if sc.personalise.method == "partial":
        raise ConfigError(
            "personalise.method = 'partial' is not simulated sharded yet: run on one process"
        )
    if sc.training.trainable:
        raise ConfigError("training.trainable is not simulated sharded yet: run on one process")
    refuse_attack(setup, "the sharded engine")


@dataclass
class _Steps:
    """Each distinct step's halo, built on first use (the same key rule as the matrix cache)."""

    setup: Setup
    world: World
    blocks: Any
    mine: list[int]

    def __post_init__(self) -> None:
        self._cache: dict[int, StepHalo] = {}

    def get(self, step: int) -> StepHalo:
        topo = self.setup.topo
        key = (step % topo.period if topo.period else step) if topo.time_varying else 0
        if key not in self._cache:
            if len(self._cache) >= 64:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = step_halo(
                topo.mixing(step), self.blocks, self.world.rank, self.mine, self.world.device
            )
        return self._cache[key]


def mix_rows(h: StepHalo, x: Tensor, halo: Tensor, out: Tensor, block: int) -> None:
    """out <- (W x) of this rank's rows: local columns plus halo columns, block by block."""
    for a in range(0, x.shape[1], block):
        cols = slice(a, a + block)
        torch.mm(h.w_local, x[:, cols], out=out[:, cols])
        if h.halo_rows:
            out[:, cols] += torch.mm(h.w_halo, halo[:, cols])


def fetch_halo(h: StepHalo, rows: Tensor) -> tuple[Tensor, int]:
    """The halo rows of ``rows`` (this rank's stack) from the other ranks; bytes sent."""
    out = torch.empty(h.halo_rows, *rows.shape[1:], dtype=rows.dtype, device=rows.device)
    if not h.moves:
        return out, 0
    return out, exchange(rows.index_select(0, h.send_rows), h.send_counts, out, h.recv_counts)


def run(
    setup: Setup, label: str, world: World, progress: Progress | None = None
) -> RunResult | None:
    """Run the scenario on this rank's block; rank 0 returns the result, the others None."""
    _refuse_unsupported(setup)
    part = shard_partition(setup, world.size)
    check_same(world, scenario_digest({"blocks": part.blocks}), "partition")
    sc, device, dim = setup.scenario, world.device, setup.dim
    nodes = setup.data.nodes
    block_nodes = list(part.blocks[world.rank])
    local = stack_order([int(nodes[i].x_train.shape[0]) for i in block_nodes], setup.schedule)
    mine = [block_nodes[p] for p in local]
    n_loc = len(mine)
    setup = _on_device(setup, device)
    trainer = make_trainer(setup, mine)
    noise = delta_noise(setup, mine)
    steps = _Steps(setup, world, part.blocks, mine)
    mode, g = sc.gossip.mode, sc.gossip
    params = setup.initial.to(device).repeat(n_loc, 1)
    spare = torch.zeros_like(params)
    block = block_columns(n_loc, dim)
    copies = torch.zeros_like(params) if mode == "choco" else None
    compressor = make_compressor(g.compression, bits=g.bits, fraction=g.topk_fraction)
    uniforms = NodeUniforms(sc.seed, mine, device) if mode == "choco" else None
    rows = max(1, COMPRESS_ELEMENTS // max(1, dim))
    numerators = params.clone() if mode == "async" else None
    weights = torch.ones(n_loc, 1, device=device) if mode == "async" else None
    before = torch.empty_like(params) if mode == "async" or noise is not None else None
    secure = ShardSecureMixer(setup, mine) if sc.secure.enabled else None
    abandoned = stragglers = 0
    chunk = nodes_per_call(setup.model, setup.data.input_shape, setup.schedule.batch_size)
    x_test, y_test = setup.data.x_global_test.to(device), setup.data.y_global_test.to(device)
    records: list[RoundRecord] = []
    t_train = t_mix = t_eval = 0.0
    rank_bytes = 0
    start = time.perf_counter()
    for r in range(sc.training.rounds):
        t0 = time.perf_counter()
        if before is not None:
            before.copy_(params)
        trainer.train_round(params, r, chunk)
        if noise is not None:
            assert before is not None
            noise.apply_(params, before)
        _sync(device)
        t1 = time.perf_counter()
        h = steps.get(r)
        if secure is not None:
            gave_up, declared, sent = secure.mix(h, r, params, spare, block)
            abandoned += gave_up
            stragglers += declared
            rank_bytes += sent
            params, spare = spare, params
        elif mode == "sync":
            halo, sent = fetch_halo(h, params)
            rank_bytes += sent
            mix_rows(h, params, halo, spare, block)
            params, spare = spare, params
        elif mode == "choco":
            assert copies is not None and uniforms is not None
            uniforms.start_round(r)
            choco_copies_update(copies, params, compressor, uniforms, rows)
            halo, sent = fetch_halo(h, copies)
            rank_bytes += sent
            mix_rows(h, copies, halo, spare, block)
            for a in range(0, dim, block):
                cols = slice(a, a + block)
                params[:, cols] = choco_step(
                    params[:, cols], copies[:, cols], spare[:, cols], h.row_sums, g.gamma
                )
        else:
            assert numerators is not None and weights is not None and before is not None
            numerators = push_sum_absorb(numerators, weights, params, before)
            stacked = torch.cat([numerators, weights], dim=1)
            halo, sent = fetch_halo(h, stacked)
            rank_bytes += sent
            mixed = torch.empty_like(stacked)
            mix_rows(h, stacked, halo, mixed, block)
            numerators, weights = mixed[:, :dim].contiguous(), mixed[:, dim:].contiguous()
            params = push_sum_model(numerators, weights)
        _sync(device)
        t2 = time.perf_counter()
        evaluated = (r + 1) % sc.eval.every == 0 or r == sc.training.rounds - 1
        acc = loss = None
        if evaluated:
            acc, loss = evaluate(setup.model, params, x_test, y_test, chunk=sc.eval.chunk)
        t3 = time.perf_counter()
        t_train += t1 - t0
        t_mix += t2 - t1
        t_eval += t3 - t2
        record = _round_record(world, setup, r, params, acc, loss, t3 - t0, t1 - t0)
        if record is not None:
            records.append(record)
        if progress and world.leader:
            progress(r + 1)
    final = _gather_rows(world, params, mine, setup.n)
    totals = _sum(world, [t_train, float(rank_bytes), float(abandoned), float(stragglers)])
    if not world.leader:
        return None
    assert final is not None
    rounds = max(1, sc.training.rounds)
    return RunResult(
        label,
        "vectorized",
        records,
        final,
        setup.names(),
        [nd.name for nd in nodes],
        wall_train=totals[0],  # every rank's training, as one process would spend it
        wall_mix=t_mix,
        wall_eval=t_eval,
        wall_total=time.perf_counter() - start,
        stragglers=int(totals[3]),
        extra={
            **({"abandoned": int(totals[2])} if secure is not None else {}),
            **norm_summary([noise]),
            "sharded": {
                "world_size": world.size,
                "backend": world.backend,
                "partition": part.method,
                "cut_edges": part.cut,
                "block_sizes": [len(b) for b in part.blocks],
                "rank_bytes_per_round": totals[1] / rounds,
                "train_seconds_rank0": t_train,
            },
        },
    )


def _on_device(setup: Setup, device: torch.device) -> Setup:
    """The setup with this rank's device (a GPU per local rank), nothing else changed."""
    if setup.device == device:
        return setup
    import dataclasses

    return dataclasses.replace(setup, device=device)


def _round_record(
    world: World,
    setup: Setup,
    r: int,
    params: Tensor,
    acc: Tensor | None,
    loss: Tensor | None,
    wall: float,
    train: float,
) -> RoundRecord | None:
    """The round's record on rank 0 (None elsewhere): statistics over every node."""
    n = setup.n
    consensus = _consensus(world, params, n)
    train_all = _sum(world, [train])[0]
    accs = _gather_flat(world, acc) if acc is not None else None
    losses = _gather_flat(world, loss) if loss is not None else None
    if not world.leader:
        return None
    return RoundRecord(
        round=r + 1,
        acc_mean=None if accs is None else float(accs.mean()),
        acc_min=None if accs is None else float(accs.min()),
        acc_max=None if accs is None else float(accs.max()),
        loss_mean=None if losses is None else float(losses.mean()),
        consensus=consensus,
        bytes_per_node=bytes_sent(setup, r),
        wall=wall,
        train_seconds=train_all,
    )


def _consensus(world: World, params: Tensor, n: int) -> float:
    """Root mean squared distance to the average of all nodes: two all-reduces."""
    total = params.double().sum(dim=0)
    dist.all_reduce(total)
    mean = (total / n).to(params.dtype)
    squares = torch.zeros(1, dtype=torch.float64, device=params.device)
    for a in range(0, params.shape[0], 16):
        squares += float(torch.linalg.vector_norm(params[a : a + 16] - mean)) ** 2
    dist.all_reduce(squares)
    return float(squares.sqrt() / n**0.5)


def _sum(world: World, values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def _gather_padded(world: World, rows: Tensor) -> list[Tensor] | None:
    """Every rank's ``rows`` on rank 0 (padded to the largest block, then cut back)."""
    counts = torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device)
    sizes = [torch.zeros_like(counts) for _ in range(world.size)]
    dist.all_gather(sizes, counts)
    widest = max(int(s) for s in sizes)
    padded = torch.zeros(widest, *rows.shape[1:], dtype=rows.dtype, device=rows.device)
    padded[: rows.shape[0]] = rows
    bucket = [torch.empty_like(padded) for _ in range(world.size)] if world.leader else None
    dist.gather(padded, bucket, dst=0)
    if bucket is None:
        return None
    return [b[: int(s)] for b, s in zip(bucket, sizes, strict=True)]


def _gather_flat(world: World, values: Tensor) -> Tensor | None:
    parts = _gather_padded(world, values)
    return None if parts is None else torch.cat(parts).cpu()


def _gather_rows(world: World, params: Tensor, mine: list[int], n: int) -> Tensor | None:
    """The final parameters of every node on rank 0, in node order."""
    ids = torch.tensor(mine, dtype=torch.int64, device=params.device)
    parts = _gather_padded(world, params)
    owners = _gather_padded(world, ids)
    if parts is None or owners is None:
        return None
    final = torch.empty(n, params.shape[1], dtype=params.dtype)
    final[torch.cat(owners).cpu()] = torch.cat(parts).cpu()
    return final


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
