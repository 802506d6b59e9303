"""The vectorized engine's kernels: W applied to a stack of rows, in place.

Mixing is a sparse matrix product written into a preallocated output, one column
block at a time (measured ~2-3x faster than one big product on a 2-core CPU, and
on a GPU it keeps each product under 2^31 elements, past which torch's sparse
kernels return wrong results).

Robust mixing (``gossip.robust``, sync only) cannot be one product: clipped
gossip weighs each edge's difference x_j - x_i by its own clip factor, so
``robust_mix_into`` walks the edges of W (its CSR entries): one pass of column
blocks sums each edge's squared distance, the factors come from
``protocols.mixing.clip_factor`` (and ``adaptive_radius`` per node), and a second
pass adds the weighted, clipped differences with ``index_add_``; the trimmed mean
gathers each node's neighbour rows and calls ``protocols.mixing.trimmed_mix``.

CHOCO's error feedback (``choco_copies_update``) calls the round cores' own
compressor on a few rows at a time.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from p2pfl.engines.common import Setup
from p2pfl.engines.uniforms import NodeUniforms
from protocols.compression import Compressor
from protocols.mixing import RobustRule, adaptive_radius, clip_factor, trimmed_mix

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


class RowSums:
    """sum_j W_ij of each row of a mixing matrix, as a column, computed once per matrix."""

    def __init__(self, n: int, device: torch.device) -> None:
        self._ones = torch.ones(n, 1, device=device)
        self._last: tuple[Tensor, Tensor] | None = None

    def __call__(self, w: Tensor) -> Tensor:
        if self._last is None or self._last[0] is not w:
            self._last = (w, torch.mm(w, self._ones))
        return self._last[1]


class MatrixCache:
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
