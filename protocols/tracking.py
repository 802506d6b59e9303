"""Gradient tracking: each node mixes a tracker of the network's average gradient with its model.

D-PSGD with a constant step does not reach the optimum of the average of
heterogeneous objectives: at its fixed point every node's own gradient still
pulls it towards its own optimum. Gradient tracking gives each node a second
vector y_i that follows the average gradient, and steps along y_i instead of
its own gradient. This is DSGT (Pu & Nedic, "Distributed stochastic gradient
tracking methods", Math. Programming 187, 2021, Algorithm 1, DSGT),
the stochastic form of NEXT (Di Lorenzo & Scutari 2016) and DIGing (Nedic,
Olshevsky & Shi 2017), in its adapt-then-combine order:

    x_i^{k+1} = sum_j W_ij (x_j^k - alpha y_j^k)
    y_i^{k+1} = sum_j W_ij y_j^k + g_i^{k+1} - g_i^k,      y_i^0 = g_i^0

With W doubly stochastic the average of the trackers equals the average of the
newest gradients at every round, so at a fixed point every node holds the
minimiser of sum_i f_i, not a compromise between the local ones.

A round of local training is the gradient oracle: node i trains from its
round's model x_i (``origin``) to ``trained`` and its step is
g_i = origin - trained (the learning rate is alpha, already in it). With one
plain SGD step per round this is DSGT exactly; with several local steps g_i is
that round's local displacement (the pseudo-gradient), so the tracker follows
the average displacement.

Under a learning-rate schedule (``scale`` = this round's rate over the base
rate), the tracker follows steps in units of the base rate, g / scale, and the
node steps scale * y: DSGT with a diminishing step alpha_k (Pu & Nedic 2021,
Section 4), so the trackers' disagreement left from earlier, larger steps
shrinks with the rate instead of being stepped along whole. With a constant rate
(scale 1) nothing changes.

Per round each node sends one vector of twice the model's length,
[x_i - y_i, y_i] (gradient tracking costs two model-sized vectors a round), and
the mix of it is [x_i^{k+1}, sum_j W_ij y_j]. The two halves are mixed with the
same weights, so the same secure sum serves both: a secure round masks the
concatenated vector. The functions below work on numpy arrays and torch
tensors alike (a node's vector or the vectorized engine's stack of rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from protocols.errors import LocalProtocolError

Vector = npt.NDArray[Any]
CoreState = dict[str, Vector]


def tracker_step(
    origin: Any, trained: Any, mixed_tracker: Any, last_step: Any, scale: float = 1.0
) -> tuple[Any, Any]:
    """This round's step g = (origin - trained) / scale and tracker y = mixed + g - last_step.

    In the first round ``mixed_tracker`` and ``last_step`` are zero, so y^0 = g^0.
    """
    step = (origin - trained) / scale
    tracker = mixed_tracker + step - last_step
    return step, tracker


def descent(origin: Any, tracker: Any, scale: float = 1.0) -> Any:
    """x - scale y: what a node mixes as its model (its step along the tracker)."""
    return origin - scale * tracker


class GradientTracking:
    """One node's tracker state between rounds (module docstring).

    ``outgoing(origin, trained, scale)`` is the vector the round mixes, [x - scale y, y];
    ``incoming(mixed)`` takes the mix of it back and returns the node's next
    model. The state kept across rounds is the mixed tracker sum_j W_ij y_j and
    the node's last step g (both zero before the first round).
    """

    width = 2

    def __init__(self) -> None:
        self._mixed_tracker: Vector | None = None
        self._last_step: Vector | None = None
        self._pending: Vector | None = None  # this round's step, kept once the mix is in

    def outgoing(self, origin: Vector, trained: Vector, scale: float = 1.0) -> Vector:
        if not scale > 0:
            raise LocalProtocolError(f"the round's step scale must be positive, got {scale}")
        origin = np.asarray(origin, dtype=np.float32)
        trained = np.asarray(trained, dtype=np.float32)
        if origin.shape != trained.shape:
            raise LocalProtocolError("the trained model does not match the round's model")
        zero = np.zeros_like(origin)
        mixed = zero if self._mixed_tracker is None else self._mixed_tracker
        last = zero if self._last_step is None else self._last_step
        if mixed.shape != origin.shape:
            raise LocalProtocolError("the tracker does not match the model's length")
        step, tracker = tracker_step(origin, trained, mixed, last, scale)
        self._pending = step
        return np.concatenate([descent(origin, tracker, scale), tracker])

    def incoming(self, mixed: Vector) -> Vector:
        if self._pending is None:
            raise LocalProtocolError("a mix came back for no round this node started")
        dim = self._pending.shape[0]
        mixed = np.asarray(mixed, dtype=np.float32)
        if mixed.shape != (2 * dim,):
            raise LocalProtocolError("the mixed vector is not [model, tracker]")
        self._last_step, self._pending = self._pending, None
        self._mixed_tracker = mixed[dim:].copy()
        return mixed[:dim].copy()

    def export_state(self) -> CoreState:
        """``tracker`` (the mixed tracker) and ``step`` (the last step); empty before round 0."""
        if self._mixed_tracker is None or self._last_step is None:
            return {}
        return {"tracker": self._mixed_tracker.copy(), "step": self._last_step.copy()}

    def import_state(self, state: CoreState) -> None:
        """Continue from ``export_state``'s arrays (``LocalProtocolError`` if they do not fit)."""
        if not state:
            self._mixed_tracker = self._last_step = self._pending = None
            return
        if set(state) != {"tracker", "step"}:
            raise LocalProtocolError(f"tracking state needs tracker and step, got {sorted(state)}")
        tracker = np.array(state["tracker"], dtype=np.float32, copy=True).ravel()
        step = np.array(state["step"], dtype=np.float32, copy=True).ravel()
        if tracker.shape != step.shape:
            raise LocalProtocolError("tracking state: tracker and step differ in length")
        self._mixed_tracker, self._last_step, self._pending = tracker, step, None
