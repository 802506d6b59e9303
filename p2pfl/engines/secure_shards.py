"""Secure mixing of one rank's nodes: the single-process fixed-point sums, split by rank.

``vectorized_secure.SecureMixer`` sums, for every receiver i, the codes
``fixed_codes(x_j, W_ij * scale)`` of its neighbours that did not drop out, and
decodes the sum. Here the sender's rank computes the codes of every pair whose
receiver lives elsewhere and sends them as integers; the receiver's rank adds
them to the codes of its local pairs. Integer sums do not depend on their
order, the codes are the same function of the same rows, and the weights and
denominators are taken in the single-process order (the global stack order), so
a neighbourhood's aggregate is bit-identical to the single-process one.

Which receivers complete a round (enough survivors, masks still connected) is
``vectorized_secure.completes``, the receiver core's own rule, decided where the
receiver lives.
"""

from __future__ import annotations

from collections.abc import Sequence

import scipy.sparse as sp
import torch
from torch import Tensor

from p2pfl.engines.common import Setup
from p2pfl.engines.halo import StepHalo, exchange
from p2pfl.engines.vectorized_secure import completes
from p2pfl.training import stack_order
from protocols.mixing import combine
from protocols.secagg.fixedpoint import decode_sum, fixed_codes, is_fast


class ShardSecureMixer:
    """Secure mixing of the nodes ``mine`` (this rank's stack), with codes from other ranks."""

    def __init__(self, setup: Setup, mine: Sequence[int]) -> None:
        self.setup, self.mine = setup, list(mine)
        self.cfg = setup.scenario.secagg_config()
        self.work = torch.float32 if is_fast(self.cfg, True) else torch.float64
        self.signed = torch.int32 if self.cfg.modulus_bits == 32 else torch.int64
        self.row = {node: pos for pos, node in enumerate(self.mine)}
        sizes = [int(nd.x_train.shape[0]) for nd in setup.data.nodes]
        order = stack_order(sizes, setup.schedule)
        self.place = {node: pos for pos, node in enumerate(order)}  # the single-process order
        self.drops: dict[int, set[int]] = {}
        for node, r in setup.scenario.dropouts.schedule:
            self.drops.setdefault(r, set()).add(node)

    def mix(self, h: StepHalo, r: int, x: Tensor, out: Tensor, block: int) -> tuple[int, int, int]:
        """out <- secure mix of x; (receivers that abandoned, dropouts declared, bytes sent)."""
        device, n_loc = x.device, x.shape[0]
        incoming, sent = self._exchange(h, x)
        csr = sp.csr_array(self.setup.topo.mixing(r))
        dropped = self.drops.get(r, set())
        local_rows, local_cols, local_vals = [], [], []
        diag = torch.zeros(n_loc, dtype=torch.float64)
        denom = torch.zeros(n_loc, dtype=torch.float64)
        keep_own = torch.zeros(n_loc, dtype=torch.bool)
        included: set[tuple[int, int]] = set()
        abandoned = declared = 0
        for row, node in enumerate(self.mine):
            start, stop = csr.indptr[node], csr.indptr[node + 1]
            entries = zip(csr.indices[start:stop], csr.data[start:stop], strict=True)
            terms = sorted(((int(j), float(v)) for j, v in entries), key=lambda t: self.place[t[0]])
            nbrs = [(j, v) for j, v in terms if j != node]
            diag[row] = denom[row] = sum(v for j, v in terms if j == node)
            alive = [(j, v) for j, v in nbrs if j not in dropped]
            if node in dropped:
                keep_own[row] = True
                continue
            declared += len(nbrs) - len(alive)
            if not completes(self.setup, self.cfg, r, node, nbrs, alive):
                keep_own[row] = True
                abandoned += 1
                continue
            for j, v in alive:
                denom[row] += v
                if j in self.row:
                    local_rows.append(row)
                    local_cols.append(self.row[j])
                    local_vals.append(v)
                else:
                    included.add((row, j))
        pairs_in = h.pairs_in
        receivers = pairs_in.local_rows.tolist()
        pick = [
            k for k, (i, j) in enumerate(zip(receivers, pairs_in.peers, strict=True))
            if (i, j) in included
        ]  # fmt: skip
        pick_t = torch.as_tensor(pick, dtype=torch.int64, device=device)
        far_rows = pairs_in.local_rows.to(device)[pick_t]
        rows_t = torch.as_tensor(local_rows, dtype=torch.int64, device=device)
        cols_t = torch.as_tensor(local_cols, dtype=torch.int64, device=device)
        factor = self._factors(local_vals, device)
        self_w = diag.to(torch.float32).to(device)[:, None]
        inv = denom.to(torch.float32).to(device)[:, None]
        keep = keep_own.to(device)[:, None]
        for a in range(0, x.shape[1], block):
            cols = slice(a, a + block)
            xb = x[:, cols]
            acc = torch.zeros(n_loc, xb.shape[1], dtype=torch.int64, device=device)
            if local_rows:
                codes = fixed_codes(xb[cols_t], factor[:, None], self.cfg)
                acc.index_add_(0, rows_t, codes.to(torch.int64))
            if pick:
                acc.index_add_(0, far_rows, incoming[pick_t, cols].to(torch.int64))
            mixed = combine(xb, self_w, decode_sum(acc, self.cfg, torch.float32), inv)
            out[:, cols] = torch.where(keep, xb, mixed)
        return abandoned, declared, sent

    def _factors(self, weights: Sequence[float], device: torch.device) -> Tensor:
        return torch.as_tensor(
            [v * self.cfg.scale for v in weights], dtype=self.work, device=device
        )

    def _exchange(self, h: StepHalo, x: Tensor) -> tuple[Tensor, int]:
        """Codes of every pair that crosses ranks: ours encoded and sent, theirs received."""
        incoming = torch.empty(
            len(h.pairs_in.peers), x.shape[1], dtype=self.signed, device=x.device
        )
        if not h.pairs_move:
            return incoming, 0
        side = h.pairs_out
        factor = self._factors(side.weights, x.device)
        codes = fixed_codes(x[side.local_rows], factor[:, None], self.cfg).to(self.signed)
        return incoming, exchange(codes, side.counts, incoming, h.pairs_in.counts)
