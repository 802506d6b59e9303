"""The vectorized twin of secure mixing, and the receiver cores' rule for completing.

Secure mode's ``bounded`` rule pulls each mix back within the radius with
``protocols.mixing.bound_deviation``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from p2pfl.engines.common import Setup
from protocols.mixing import bound_deviation, combine
from protocols.secagg import RoundContext, SecAggConfig
from protocols.secagg.fixedpoint import decode_sum, fixed_codes, is_fast
from protocols.secagg.graph import is_connected


class SecureMixer:
    """The vectorized twin of secure mixing: the same fixed-point codes, summed without masks.

    Masks cancel exactly, so the protocol engine's aggregate is decode(sum of
    codes); this computes that sum directly with the senders' own functions,
    ``fixed_codes`` and ``decode_sum`` of ``protocols.secagg.fixedpoint``, and
    renormalises it with ``protocols.mixing.combine``. Scheduled
    dropouts leave the sum (and keep their own model); a receiver with more
    than d - t of its neighbours dropped abandons and keeps its own model.
    """

    def __init__(self, setup: Setup, order: list[int]) -> None:
        self.cfg = setup.scenario.secagg_config()
        self.federation = setup.federation
        self.setup, self.order = setup, order
        self.position = {node: pos for pos, node in enumerate(order)}
        self.work = torch.float32 if is_fast(self.cfg, True) else torch.float64
        self.bound = setup.scenario.secure_bound()
        self.drops: dict[int, set[int]] = {}
        for node, r in setup.scenario.dropouts.schedule:
            self.drops.setdefault(r, set()).add(self.position[node])

    def mix(self, w: object, r: int, x: Tensor, out: Tensor, block: int) -> tuple[int, int]:
        """out <- secure mix of x; returns (receivers that abandoned, dropouts declared)."""
        csr = w[self.order][:, self.order].tocsr()  # type: ignore[index]
        n = x.shape[0]
        dropped = self.drops.get(r, set())
        diag = torch.as_tensor(csr.diagonal(), dtype=torch.float64)
        rows, cols, vals = [], [], []
        denom = diag.clone()
        keep_own = torch.zeros(n, dtype=torch.bool)
        abandoned = declared = 0
        for i in range(n):
            start, stop = csr.indptr[i], csr.indptr[i + 1]
            pairs = zip(csr.indices[start:stop], csr.data[start:stop], strict=True)
            nbrs = [(int(j), float(v)) for j, v in pairs if j != i]
            alive = [(j, v) for j, v in nbrs if j not in dropped]
            if i in dropped:
                keep_own[i] = True
                continue
            declared += len(nbrs) - len(alive)
            if not self._completes(r, i, nbrs, alive):
                keep_own[i] = True
                abandoned += 1
                continue
            for j, v in alive:
                rows.append(i)
                cols.append(j)
                vals.append(v)
                denom[i] += v
        device = x.device
        rows_t = torch.as_tensor(rows, dtype=torch.int64, device=device)
        cols_t = torch.as_tensor(cols, dtype=torch.int64, device=device)
        factor = torch.as_tensor([v * self.cfg.scale for v in vals], dtype=self.work, device=device)
        self_w = diag.to(torch.float32).to(device)[:, None]
        inv = denom.to(torch.float32).to(device)[:, None]
        keep = keep_own.to(device)[:, None]
        for a in range(0, x.shape[1], block):
            xb = x[:, a : a + block]
            codes = fixed_codes(xb[cols_t], factor[:, None], self.cfg)
            acc = torch.zeros(n, xb.shape[1], dtype=torch.int64, device=device)
            acc.index_add_(0, rows_t, codes.to(torch.int64))
            mixed = combine(xb, self_w, decode_sum(acc, self.cfg, torch.float32), inv)
            out[:, a : a + block] = torch.where(keep, xb, mixed)
        if self.bound is not None:  # needs whole rows: the norm is over the model
            out.copy_(bound_deviation(x, out, self.bound))
        return abandoned, declared

    def _completes(
        self, r: int, i: int, nbrs: list[tuple[int, float]], alive: list[tuple[int, float]]
    ) -> bool:
        node = self.order
        return completes(
            self.setup,
            self.cfg,
            r,
            node[i],
            [(node[j], v) for j, v in nbrs],
            [(node[j], v) for j, v in alive],
        )


def completes(
    setup: Setup,
    cfg: SecAggConfig,
    r: int,
    receiver: int,
    nbrs: Sequence[tuple[int, float]],
    alive: Sequence[tuple[int, float]],
) -> bool:
    """What the receiver's protocol core decides: enough survivors, masks still connected.

    Nodes are global indices; ``nbrs`` are the receiver's in-neighbours and ``alive``
    those of them that did not drop out this round.
    """
    names = setup.names()
    hood = tuple(sorted(names[j] for j, _ in nbrs))
    ctx = RoundContext(setup.federation, r, names[receiver], hood, cfg)
    if len(alive) < ctx.threshold:
        return False
    survivors = [names[j] for j, _ in alive]
    return cfg.sparse_k is None or is_connected(ctx.partners(hood), survivors)
