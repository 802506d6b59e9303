"""What a node sends a round, as the vectorized and sharded engines count it.

The protocol and processes engines count the frames their cores really send;
these engines run no cores, so they size the frames the cores would send: a
node's out-degree times its frame (``frame_bytes``), or its masked inputs in
secure mode. A gradient-tracking frame carries two model-sized vectors
(``p2pfl.engines.tracked.width``).
"""

from __future__ import annotations

import numpy as np

from p2pfl.engines.common import Setup, frame_bytes
from p2pfl.engines.tracked import width


def _masked_input_bytes(setup: Setup, round: int) -> float:
    """Mean bytes of the masked inputs a node sends in a secure round (one per out-neighbour).

    Key shares, relays and reveals are left out: only the protocol engine, which
    runs them, counts those (a few hundred bytes per neighbour and round).
    """
    from protocols.secagg import MaskedInput

    names = setup.names()
    dtype = np.uint32 if setup.scenario.secure.modulus_bits == 32 else np.uint64
    word = np.dtype(dtype).itemsize
    matrix = setup.topo.mixing(round).tocsc()
    total = 0
    for i in range(setup.n):
        for j in matrix.indices[matrix.indptr[i] : matrix.indptr[i + 1]]:
            if j != i:
                probe = MaskedInput(round, names[j], names[i], np.zeros(1, dtype=dtype))
                total += len(probe.encode()) + word * (setup.shared_dim * width(setup.scenario) - 1)
    return total / setup.n


def bytes_sent(setup: Setup, round: int) -> float:
    """Mean bytes a node sends in ``round``: its out-degree times its frame size.

    A gradient-tracking frame carries two model-sized vectors (``tracked.width``).
    """
    if setup.scenario.secure.enabled:
        return _masked_input_bytes(setup, round)
    g = setup.scenario.gossip
    compression = g.compression if g.mode == "choco" else "none"
    matrix = setup.topo.mixing(round).tocsc()
    out_degree = np.diff(matrix.indptr) - (matrix.diagonal() != 0)
    names = setup.names()
    sizes: dict[int, int] = {}  # a frame's size depends on the sender only through its length
    total = 0
    for i in np.flatnonzero(out_degree):
        key = len(names[i])
        if key not in sizes:
            sizes[key] = frame_bytes(
                setup.shared_dim * width(setup.scenario),
                names[i],
                round,
                compression,
                bits=g.bits,
                fraction=g.topk_fraction,
            )
        total += int(out_degree[i]) * sizes[key]
    return total / setup.n
