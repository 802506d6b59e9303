"""The vectorized engine: every node's parameters are one row of one tensor.

Local training is batched across nodes (see ``p2pfl.training``); mixing is a
sparse matrix product into a preallocated output (``p2pfl.engines.vectorized_mix``).
The two parameter buffers swap roles every round; nothing of model size is
allocated inside the loop.

Modes: ``sync`` is exact D-PSGD, X <- W X. ``choco`` keeps the public copies
X_hat as another (n, D) buffer and compresses row-wise. ``async`` runs push-sum
in lock step (every message arrives within its round): numerators X and weights
w mix with the column-stochastic matrix and the models are X / w.
``tracking`` and ``qgm`` mix what their rules give out (``p2pfl.engines.tracked``):
gradient tracking [X - Y, Y] side by side, quasi-global momentum the half-step
models, plainly or with the secure sum.

Robust mixing (``gossip.robust``, sync only) walks W's edges
(``vectorized_mix.robust_mix_into``); secure mode sums the senders' fixed-point
codes without masks (``vectorized_secure.SecureMixer``), and its ``bounded`` rule
pulls each mix back within the radius. ``[attack]`` rows are replaced after
training (``p2pfl.engines.attack``). Partial sharing (``personalise.method =
'partial'``, sync) mixes the shared columns alone, as the cores mix
``Selection.gather`` of each model, and leaves the personal ones.

The sparse product is the engine's own way of applying W to every row; the
maths around it (compression with error feedback, the CHOCO step, the
push-sum step, the renormalised and the secure mix) are the functions the
round cores call, from ``protocols.compression``, ``protocols.mixing`` and
``protocols.secagg.fixedpoint``, applied to the stack of rows.
"""

from __future__ import annotations

import time

import numpy as np
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
from p2pfl.engines.vectorized_mix import (
    COMPRESS_ELEMENTS,
    MatrixCache,
    RowSums,
    block_columns,
    choco_copies_update,
    mix_into,
    robust_mix_into,
)
from p2pfl.engines.vectorized_secure import SecureMixer
from p2pfl.training import evaluate, nodes_per_call, stack_order
from protocols.compression import make_compressor
from protocols.mixing import choco_step, push_sum_absorb, push_sum_model


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
    row_sums = RowSums(n, device) if mode == "choco" else None
    matrices = MatrixCache(setup, order)
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
            outgoing = tracked.outgoing(params, setup.schedule.lr_scale(r))
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
