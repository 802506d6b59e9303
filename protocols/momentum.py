"""Quasi-global momentum: a momentum buffer built from what gossip did, not from local gradients.

Local heavy-ball momentum on skewed data accumulates each node's own gradient
and pushes the nodes apart. QG-DSGDm (Lin, Karimireddy, Stich & Jaggi,
"Quasi-Global Momentum: Accelerating Decentralized Deep Learning on
Heterogeneous Data", ICML 2021, Algorithm 1) builds the buffer from the model's
change over a whole round, gossip included, which carries the neighbours'
gradients too:

    m_i^t       = beta m_hat_i^{t-1} + g_i^t
    x_i^{t+1/2} = x_i^t - eta m_i^t
    x_i^{t+1}   = sum_j W_ij x_j^{t+1/2}
    d_i^t       = (x_i^t - x_i^{t+1}) / eta
    m_hat_i^t   = mu m_hat_i^{t-1} + (1 - mu) d_i^t

Here the buffer is kept in model units, M = eta m_hat, and a round of local
training is the gradient step: node i trains from its round's model x_i
(``origin``) to ``trained`` = x_i - eta g_i. Then x^{t+1/2} = trained - beta M
and M <- mu M + (1 - mu) (origin - x^{t+1}). With one plain SGD step per round
this is the algorithm above exactly; with several local steps the round's
local displacement plays eta g_i. Nothing more travels than in D-PSGD: the node
mixes x^{t+1/2}, one model-sized vector, plainly or with the secure sum.

Under a learning-rate schedule the buffer stays in model units: it keeps the
moves as they were made, and a round's rate scale does not enter (the paper's
buffer is in gradient units, m_hat = M / eta; on the non-IID sweep with a cosine
schedule the model-unit buffer did better, README "Learning quality").

The functions work on numpy arrays and torch tensors alike (a node's vector or
the vectorized engine's stack of rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from protocols.errors import LocalProtocolError

Vector = npt.NDArray[Any]
CoreState = dict[str, Vector]


def half_step(trained: Any, buffer: Any, beta: float) -> Any:
    """x^{t+1/2} = trained - beta M: the local step plus the quasi-global momentum."""
    return trained - beta * buffer


def buffer_update(buffer: Any, origin: Any, mixed: Any, mu: float) -> Any:
    """M <- mu M + (1 - mu) (origin - mixed): the round's whole move, gossip included."""
    return mu * buffer + (1.0 - mu) * (origin - mixed)


class QuasiGlobalMomentum:
    """One node's quasi-global momentum buffer between rounds (module docstring).

    ``outgoing(origin, trained)`` is the half-step model the round mixes;
    ``incoming(mixed)`` takes the mix back, updates the buffer and returns the
    node's next model (the mix itself). ``mu`` defaults to ``beta``, as in the
    paper's experiments.
    """

    width = 1

    def __init__(self, beta: float, mu: float | None = None) -> None:
        mu = beta if mu is None else mu
        if not (0 <= beta < 1 and 0 <= mu < 1):
            raise LocalProtocolError(f"qgm beta and mu must be in [0, 1), got {beta}, {mu}")
        self.beta, self.mu = beta, mu
        self._buffer: Vector | None = None
        self._origin: Vector | None = None  # this round's model, kept until the mix is in

    def outgoing(self, origin: Vector, trained: Vector, scale: float = 1.0) -> Vector:
        """The half-step model to mix; ``scale`` (the round's rate) does not enter."""
        origin = np.asarray(origin, dtype=np.float32)
        trained = np.asarray(trained, dtype=np.float32)
        if origin.shape != trained.shape:
            raise LocalProtocolError("the trained model does not match the round's model")
        if self._buffer is None:
            self._buffer = np.zeros_like(origin)
        if self._buffer.shape != origin.shape:
            raise LocalProtocolError("the momentum buffer does not match the model's length")
        self._origin = origin.copy()
        out: Vector = half_step(trained, self._buffer, self.beta).astype(np.float32, copy=False)
        return out

    def incoming(self, mixed: Vector) -> Vector:
        if self._origin is None or self._buffer is None:
            raise LocalProtocolError("a mix came back for no round this node started")
        mixed = np.asarray(mixed, dtype=np.float32)
        if mixed.shape != self._origin.shape:
            raise LocalProtocolError("the mixed model does not match the round's model")
        updated = buffer_update(self._buffer, self._origin, mixed, self.mu)
        self._buffer = updated.astype(np.float32, copy=False)
        self._origin = None
        return mixed.copy()

    def export_state(self) -> CoreState:
        """``buffer`` (M, in model units); empty before the first round."""
        return {} if self._buffer is None else {"buffer": self._buffer.copy()}

    def import_state(self, state: CoreState) -> None:
        """Continue from ``export_state``'s arrays (``LocalProtocolError`` if they do not fit)."""
        if not state:
            self._buffer = self._origin = None
            return
        if set(state) != {"buffer"}:
            raise LocalProtocolError(f"qgm state needs buffer, got {sorted(state)}")
        self._buffer = np.array(state["buffer"], dtype=np.float32, copy=True).ravel()
        self._origin = None
