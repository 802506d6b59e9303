"""One rank's view of a mixing step: its rows of W, split into local and halo columns.

Rank ``r`` holds the rows of its nodes (in its stack order). Mixing them needs
the rows of their in-neighbours on other ranks: the halo. ``StepHalo`` turns
``topology.shards.halo_plan`` of one step's matrix into what the rank computes
with:

- ``w_local`` (its rows, its own nodes' columns) and ``w_halo`` (its rows, the
  received rows' columns), so W x is ``w_local @ x_local + w_halo @ halo``;
- which local rows go to which rank, and how many rows come from each, for one
  ``all_to_all_single`` whose splits are the cut (zero between ranks that share
  no edge): nothing is gathered from ranks that are not neighbours;
- for secure mixing, the (receiver, sender) pairs that cross ranks: the sender
  encodes W_ij x_j in fixed point and the receiver adds the codes it gets.

Every rank builds the plan of every step from the same matrix, so all of them
agree on the splits without a message about them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from torch import Tensor

from p2pfl.engines.vectorized_mix import csr_to_torch
from topology.shards import Blocks, halo_plan


@dataclass(frozen=True)
class PairSide:
    """Fixed-point pairs this rank sends (it holds the senders) or receives (the receivers)."""

    local_rows: Tensor  # int64: the sender's row (sending) or the receiver's row (receiving)
    peers: tuple[int, ...]  # global index of the other end of each pair
    weights: tuple[float, ...]  # W_ij of each pair
    counts: list[int]  # pairs per rank, in rank order


@dataclass(frozen=True)
class StepHalo:
    """This rank's rows of one step's W, and the exchange that feeds them (see the module)."""

    w_local: Tensor
    w_halo: Tensor
    row_sums: Tensor  # (n_local, 1): sum_j W_ij over all j, float32
    send_rows: Tensor  # local rows to send, grouped by destination rank
    send_counts: list[int]
    recv_nodes: tuple[int, ...]  # global index of each halo row, grouped by source rank
    recv_counts: list[int]
    moves: bool  # any row crosses ranks in this step (the same answer on every rank)
    pairs_out: PairSide
    pairs_in: PairSide
    pairs_move: bool

    @property
    def halo_rows(self) -> int:
        return len(self.recv_nodes)


def step_halo(
    w: object, blocks: Blocks, rank: int, mine: Sequence[int], device: torch.device
) -> StepHalo:
    """The halo of mixing matrix ``w`` for ``rank``, whose stack holds nodes ``mine``."""
    csr = sp.csr_array(w)
    n = csr.shape[0]
    plan = halo_plan(csr, blocks)
    k = len(blocks)
    send_nodes = [j for b in range(k) for j in plan.rows[rank][b]]
    recv_nodes = tuple(j for a in range(k) for j in plan.rows[a][rank])
    local_pos = np.full(n, -1, dtype=np.int64)
    local_pos[list(mine)] = np.arange(len(mine))
    halo_pos = np.full(n, -1, dtype=np.int64)
    halo_pos[list(recv_nodes)] = np.arange(len(recv_nodes))
    rows = sp.coo_array(csr[list(mine)])
    is_local = local_pos[rows.col] >= 0
    shape_local = (len(mine), len(mine))
    shape_halo = (len(mine), len(recv_nodes))
    w_local = sp.csr_array(
        (rows.data[is_local], (rows.row[is_local], local_pos[rows.col[is_local]])), shape_local
    )
    far = ~is_local
    w_halo = sp.csr_array((rows.data[far], (rows.row[far], halo_pos[rows.col[far]])), shape_halo)
    sums = np.asarray(csr[list(mine)].sum(axis=1), dtype=np.float32).reshape(-1, 1)
    return StepHalo(
        csr_to_torch(w_local, device),
        csr_to_torch(w_halo, device),
        torch.as_tensor(sums, device=device),
        _rows(local_pos, send_nodes, device),
        [len(plan.rows[rank][b]) for b in range(k)],
        recv_nodes,
        [len(plan.rows[a][rank]) for a in range(k)],
        plan.rows_between() > 0,
        _pair_side(csr, [plan.pairs[rank][b] for b in range(k)], local_pos, 1, device),
        _pair_side(csr, [plan.pairs[a][rank] for a in range(k)], local_pos, 0, device),
        plan.pairs_between() > 0,
    )


def _rows(local_pos: np.ndarray, nodes: Sequence[int], device: torch.device) -> Tensor:
    return torch.as_tensor(local_pos[list(nodes)], dtype=torch.int64, device=device)


def _pair_side(
    csr: sp.csr_array,
    per_rank: Sequence[Sequence[tuple[int, int]]],
    local_pos: np.ndarray,
    mine_at: int,
    device: torch.device,
) -> PairSide:
    """Pairs (receiver, sender) in rank order; ``mine_at`` says which end is this rank's."""
    flat = [pair for pairs in per_rank for pair in pairs]
    ours = [pair[mine_at] for pair in flat]
    return PairSide(
        _rows(local_pos, ours, device),
        tuple(pair[1 - mine_at] for pair in flat),
        tuple(float(csr[i, j]) for i, j in flat),
        [len(pairs) for pairs in per_rank],
    )


def exchange(send: Tensor, send_counts: list[int], out: Tensor, recv_counts: list[int]) -> int:
    """One ``all_to_all_single`` of rows: ``send`` split by rank into ``out``; bytes sent away."""
    dist.all_to_all_single(out, send.contiguous(), recv_counts, send_counts)
    return int(send.numel() * send.element_size())
