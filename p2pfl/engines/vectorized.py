"""The vectorized engine: every node's parameters are one row of one tensor.

Local training is batched across nodes with ``torch.func`` (see
``p2pfl.training``); mixing is a sparse matrix product written into a
preallocated output, one column block at a time (measured ~2-3x faster than one
big product on a 2-core CPU, and on a GPU it keeps each product under 2^31
elements, past which torch's sparse kernels return wrong results). The two
parameter buffers swap roles every round; nothing of model size is allocated
inside the loop.

Modes: ``sync`` is exact D-PSGD, X <- W X. ``choco`` keeps the public copies
X_hat as another (n, D) buffer and compresses row-wise. ``async`` runs push-sum
in lock step (every message arrives within its round): numerators X and weights
w mix with the column-stochastic matrix and the models are X / w.
``tracking`` and ``qgm`` mix what their rules give out (``p2pfl.engines.tracked``):
gradient tracking [X - Y, Y] side by side, quasi-global momentum the half-step
models, plainly or with the secure sum.

Robust mixing (``gossip.robust``, sync only) cannot be one product: clipped
gossip weighs each edge's difference x_j - x_i by its own clip factor, so the
engine walks the edges of W (its CSR entries): one pass of column blocks sums
each edge's squared distance, the factors come from
``protocols.mixing.clip_factor`` (and ``adaptive_radius`` per node), and a
second pass adds the weighted, clipped differences with ``index_add_``; the
trimmed mean gathers each node's neighbour rows and calls
``protocols.mixing.trimmed_mix``. Secure mode's ``bounded`` rule pulls each
mix back within the radius with ``bound_deviation``. ``[attack]`` rows are
replaced after training (``p2pfl.engines.attack``). Partial sharing
(``personalise.method = 'partial'``, sync) mixes the shared columns alone, as
the cores mix ``Selection.gather`` of each model, and leaves the personal ones.

The sparse product is the engine's own way of applying W to every row; the
maths around it (compression with error feedback, the CHOCO step, the
push-sum step, the renormalised and the secure mix) are the functions the
round cores call, from ``protocols.compression``, ``protocols.mixing`` and
``protocols.secagg.fixedpoint``, applied to the stack of rows.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from p2pfl.engines.attack import apply_attack, attack_rows, attack_summary, check_attack
from p2pfl.engines.common import (
    Progress,
    RoundRecord,
    RunResult,
    Setup,
    round_record,
)
from p2pfl.engines.drift import drift_summary, watch
from p2pfl.engines.privacy import (
    delta_noise,
    make_trainer,
    norm_summary,
    private_summary,
    site_metrics,
)
from p2pfl.engines.tracked import TRACKED, TrackedRows
from p2pfl.engines.traffic import bytes_sent
from p2pfl.engines.uniforms import NodeUniforms
from p2pfl.training import evaluate, nodes_per_call, stack_order
from protocols.compression import Compressor, make_compressor
from protocols.mixing import (
    RobustRule,
    adaptive_radius,
    bound_deviation,
    choco_step,
    clip_factor,
    combine,
    push_sum_absorb,
    push_sum_model,
    trimmed_mix,
)
from protocols.secagg import RoundContext, SecAggConfig
from protocols.secagg.fixedpoint import decode_sum, fixed_codes, is_fast
from protocols.secagg.graph import is_connected

MAX_BLOCK_ELEMENTS = (1 << 31) - 1
DEFAULT_BLOCK_COLUMNS = 8192  # measured best of 1k..64k for 256 x 235k on 2 cores
COMPRESS_ELEMENTS = 1 << 20
"""Elements compressed at a time (whole rows): the quantizer's float64 temporaries stay
in cache; measured 2-4x faster than all 32 rows of 235k at once on a 2-core CPU."""


def to_torch_csr(matrix: object, order: list[int], device: torch.device) -> Tensor:
    """A scipy sparse matrix, rows and columns permuted to stack order, as torch CSR float32."""
    return csr_to_torch(matrix[order][:, order], device)  # type: ignore[index]


def csr_to_torch(matrix: object, device: torch.device) -> Tensor:
    """A scipy sparse matrix as a torch CSR float32 tensor on ``device``."""
    csr = sp.csr_array(matrix)
    csr.sort_indices()
    with warnings.catch_warnings():
        # torch flags all of sparse CSR as "beta"; the one product used here is tested.
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.as_tensor(csr.indptr, dtype=torch.int64),
            torch.as_tensor(csr.indices, dtype=torch.int64),
            torch.as_tensor(csr.data, dtype=torch.float32),
            size=csr.shape,
            check_invariants=True,
        ).to(device)


def block_columns(n: int, dim: int, requested: int = DEFAULT_BLOCK_COLUMNS) -> int:
    """Columns per block: as asked, but never a block of 2^31 elements or more."""
    return max(1, min(requested, dim, MAX_BLOCK_ELEMENTS // max(1, n)))


def mix_into(w: Tensor, x: Tensor, out: Tensor, block: int) -> None:
    """out <- W x, column block by column block, into preallocated memory."""
    for a in range(0, x.shape[1], block):
        torch.mm(w, x[:, a : a + block], out=out[:, a : a + block])


def robust_mix_into(w: object, x: Tensor, out: Tensor, rule: RobustRule, block: int) -> None:
    """out <- every node's robust mix of the rows ``x`` (``w``: scipy, in stack order).

    The edges are W's off-diagonal CSR entries, sorted by row, so node i's are the
    slice ``starts[i]:starts[i + 1]``.
    """
    csr = sp.csr_array(w)
    csr.sort_indices()
    n = x.shape[0]
    rows_np = np.repeat(np.arange(n), np.diff(csr.indptr))
    keep = rows_np != csr.indices
    starts = np.concatenate([[0], np.cumsum(np.bincount(rows_np[keep], minlength=n))])
    rows = torch.as_tensor(rows_np[keep], dtype=torch.int64, device=x.device)
    cols = torch.as_tensor(csr.indices[keep], dtype=torch.int64, device=x.device)
    hoods = [slice(int(a), int(b)) for a, b in itertools.pairwise(starts)]
    if rule.kind == "trimmed":
        for i, hood in enumerate(hoods):
            nbrs = cols[hood]
            out[i] = x[i] if nbrs.numel() == 0 else trimmed_mix(x[i], x[nbrs], rule.byzantine)
        return
    weights = torch.as_tensor(csr.data[keep], dtype=torch.float32, device=x.device)
    squares = torch.zeros(rows.shape[0], dtype=torch.float64, device=x.device)
    for a in range(0, x.shape[1], block):
        diff = x[cols, a : a + block] - x[rows, a : a + block]
        squares += (diff.double() ** 2).sum(dim=1)
    norms = squares.sqrt().to(torch.float32)
    if rule.radius is not None:
        tau = torch.full_like(norms, rule.radius)
    else:
        radii = [
            adaptive_radius(norms[h], rule.byzantine) if h.stop > h.start else 0.0 for h in hoods
        ]
        tau = torch.as_tensor(radii, dtype=torch.float32, device=x.device)[rows]
    factor = (weights * clip_factor(norms, tau))[:, None]
    for a in range(0, x.shape[1], block):
        diff = x[cols, a : a + block] - x[rows, a : a + block]
        diff = torch.where(torch.isfinite(diff), diff, torch.zeros_like(diff))
        pulled = torch.zeros_like(x[:, a : a + block])
        pulled.index_add_(0, rows, factor * diff)
        out[:, a : a + block] = x[:, a : a + block] + pulled


def choco_copies_update(
    copies: Tensor, params: Tensor, compressor: Compressor, uniforms: NodeUniforms, rows: int
) -> None:
    """Error feedback on every row: copies += Q(params - copies), ``rows`` rows at a time.

    Q is the cores' own compressor (``Compressor.approximate``), drawing each row's
    uniforms from that node's stream (``uniforms``, started for the round); chunks of
    rows bound its float64 temporaries.
    """
    for a in range(0, params.shape[0], rows):
        part = slice(a, a + rows)
        copies[part] += compressor.approximate(
            params[part] - copies[part], uniforms.rows(a, a + copies[part].shape[0])
        )


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


def run(setup: Setup, label: str, progress: Progress | None = None) -> RunResult:
    sc = setup.scenario
    n, dim, device = setup.n, setup.dim, setup.device
    nodes = setup.data.nodes
    order = stack_order([int(nd.x_train.shape[0]) for nd in nodes], setup.schedule)
    trainer = make_trainer(setup, order)
    noise = delta_noise(setup, order)
    drift = watch(setup, [(trainer, pos, node) for pos, node in enumerate(order)])
    params = setup.initial.to(device).repeat(n, 1)
    spare = torch.zeros_like(params)  # touched now, so round 1 pays no page faults
    block = block_columns(n, dim)
    mode = sc.gossip.mode
    check_attack(setup)
    attackers = attack_rows(setup, order)
    robust = sc.robust_rule()
    copies = torch.zeros_like(params) if mode == "choco" else None
    g = sc.gossip
    compressor = (
        make_compressor(g.compression, bits=g.bits, fraction=g.topk_fraction)
        if mode == "choco"
        else None
    )
    rows = max(1, COMPRESS_ELEMENTS // max(1, dim))
    numerators = params.clone() if mode == "async" else None
    weights = torch.ones(n, 1, device=device) if mode == "async" else None
    before = torch.empty_like(params) if mode == "async" or noise is not None else None
    uniforms = NodeUniforms(sc.seed, order, device) if mode == "choco" else None
    row_sums = _RowSums(n, device) if mode == "choco" else None
    matrices = _MatrixCache(setup, order)
    secure = SecureMixer(setup, order) if sc.secure.enabled else None
    tracked = TrackedRows(sc, params) if mode in TRACKED else None
    abandoned = stragglers = 0
    selection = setup.selection
    shared_cols = None if selection is None else torch.as_tensor(selection.indices(), device=device)

    def sync_mix(r: int, w: Tensor, x: Tensor, out: Tensor) -> tuple[int, int]:
        """out <- the sync round's mix of the rows x (secure, robust or plain)."""
        if secure is not None:
            return secure.mix(setup.topo.mixing(r), r, x, out, block)
        if robust.active:
            robust_mix_into(matrices.stacked(r), x, out, robust, block)
        else:
            mix_into(w, x, out, block)
        return 0, 0

    chunk = nodes_per_call(setup.model, setup.data.input_shape, setup.schedule.batch_size)
    x_test, y_test = setup.data.x_global_test.to(device), setup.data.y_global_test.to(device)
    records: list[RoundRecord] = []
    t_train = t_mix = t_eval = 0.0
    start = time.perf_counter()
    for r in range(sc.training.rounds):
        t0 = time.perf_counter()
        if before is not None:
            before.copy_(params)
        if tracked is not None:
            tracked.begin(params)
        if drift is not None:
            for pos in range(n):
                drift.inject(pos, r)
        trainer.train_round(params, r, chunk)
        if noise is not None:
            assert before is not None
            noise.apply_(params, before)
        apply_attack(setup, params, attackers)
        _sync(device)
        t1 = time.perf_counter()
        w = matrices.get(r)
        if tracked is not None:
            outgoing = tracked.outgoing(params)
            if secure is not None:
                mixing = setup.topo.mixing(r)
                gave_up, declared = secure.mix(mixing, r, outgoing, tracked.mixed, block)
                abandoned += gave_up
                stragglers += declared
            else:
                mix_into(w, outgoing, tracked.mixed, block)
            tracked.incoming(params)
        elif shared_cols is not None:  # partial sharing: the personal columns are never mixed
            shared = params[:, shared_cols]
            mixed = torch.empty_like(shared)
            gave_up, declared = sync_mix(r, w, shared, mixed)
            params[:, shared_cols] = mixed
            abandoned += gave_up
            stragglers += declared
        elif mode == "sync":
            gave_up, declared = sync_mix(r, w, params, spare)
            abandoned += gave_up
            stragglers += declared
            params, spare = spare, params
        elif mode == "choco":
            assert copies is not None and row_sums is not None and compressor is not None
            assert uniforms is not None
            uniforms.start_round(r)
            choco_copies_update(copies, params, compressor, uniforms, rows)
            mix_into(w, copies, spare, block)  # sum_j W_ij x_hat_j, the node itself included
            sums = row_sums(w)
            for a in range(0, dim, block):
                cols = slice(a, a + block)
                params[:, cols] = choco_step(
                    params[:, cols], copies[:, cols], spare[:, cols], sums, g.gamma
                )
        else:
            assert numerators is not None and weights is not None and before is not None
            for a in range(0, dim, block):
                cols = slice(a, a + block)
                numerators[:, cols] = push_sum_absorb(
                    numerators[:, cols], weights, params[:, cols], before[:, cols]
                )
            mix_into(w, numerators, spare, block)
            numerators, spare = spare, numerators
            weights = torch.mm(w, weights)
            for a in range(0, dim, block):
                cols = slice(a, a + block)
                params[:, cols] = push_sum_model(numerators[:, cols], weights)
        _sync(device)
        t2 = time.perf_counter()
        if drift is not None:
            for pos in range(n):
                drift.observe(pos, r, params[pos])
        acc = loss = aggregate = None
        if (r + 1) % sc.eval.every == 0 or r == sc.training.rounds - 1:
            if sc.privacy.private_metrics:
                aggregate = private_summary(site_metrics(setup, params, order))
            else:
                acc, loss = evaluate(setup.model, params, x_test, y_test, chunk=sc.eval.chunk)
        t3 = time.perf_counter()
        t_train += t1 - t0
        t_mix += t2 - t1
        t_eval += t3 - t2
        sent = bytes_sent(setup, r)
        records.append(round_record(r, acc, loss, params, sent, t3 - t0, aggregate, t1 - t0))
        if progress:
            progress(r + 1)
    inverse = np.argsort(order)
    final = params[torch.as_tensor(inverse, device=device)].cpu()
    return RunResult(
        label,
        "vectorized",
        records,
        final,
        setup.names(),
        [nd.name for nd in nodes],
        wall_train=t_train,
        wall_mix=t_mix,
        wall_eval=t_eval,
        wall_total=time.perf_counter() - start,
        stragglers=stragglers,
        extra={
            **({"abandoned": abandoned} if secure is not None else {}),
            **norm_summary([noise]),
            **drift_summary(drift, setup),
            **attack_summary(setup, final),
        },
    )


class _RowSums:
    """sum_j W_ij of each row of a mixing matrix, as a column, computed once per matrix."""

    def __init__(self, n: int, device: torch.device) -> None:
        self._ones = torch.ones(n, 1, device=device)
        self._last: tuple[Tensor, Tensor] | None = None

    def __call__(self, w: Tensor) -> Tensor:
        if self._last is None or self._last[0] is not w:
            self._last = (w, torch.mm(w, self._ones))
        return self._last[1]


class _MatrixCache:
    """Torch copies of the topology's mixing matrices, converted once per distinct step."""

    def __init__(self, setup: Setup, order: list[int], keep: int = 64) -> None:
        self._setup, self._order, self._keep = setup, order, keep
        self._cache: dict[int, Tensor] = {}

    def stacked(self, step: int) -> object:
        """The scipy mixing matrix of ``step``, rows and columns in stack order."""
        order = self._order
        return self._setup.topo.mixing(step)[order][:, order]

    def get(self, step: int) -> Tensor:
        topo = self._setup.topo
        key = (step % topo.period if topo.period else step) if topo.time_varying else 0
        if key not in self._cache:
            if len(self._cache) >= self._keep:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = to_torch_csr(topo.mixing(step), self._order, self._setup.device)
        return self._cache[key]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
