"""The vectorized twin of the tracked modes: gradient tracking and quasi-global momentum on rows.

A round core of these modes (``protocols.rounds.tracked``) hands its rule the
model training started from and the trained one, mixes what the rule gives
out, and hands the mix back. Here every node is one row: ``begin`` keeps the
rows training starts from, ``outgoing`` fills the stack that the engine mixes
(plainly or with the secure sum) into ``mixed``, and ``incoming`` writes the
nodes' next models. The maths are the rules' own functions
(``protocols.tracking``, ``protocols.momentum``), applied to the stack, so a
round equals the cores' round up to the order of the mix's sums.
"""

from __future__ import annotations

import torch
from torch import Tensor

from p2pfl.spec.run import RunSpec
from protocols.momentum import buffer_update, half_step
from protocols.tracking import descent, tracker_step

TRACKED = ("tracking", "qgm")
"""The modes that mix through a rule (``protocols.rounds.tracked``)."""


def width(spec: RunSpec) -> int:
    """How many model-sized vectors a node of ``spec``'s mode sends each neighbour a round."""
    return 2 if spec.gossip.mode == "tracking" else 1


class TrackedRows:
    """Every node's rule state as stacks of rows (module docstring).

    ``sent`` and ``mixed`` are (n, width * D): the engine mixes ``sent`` into ``mixed``.
    """

    def __init__(self, spec: RunSpec, params: Tensor) -> None:
        self.mode = spec.gossip.mode
        self.beta = spec.gossip.qgm_beta
        n, self.dim = params.shape
        self.origin = torch.zeros_like(params)
        self.sent = params.new_zeros(n, width(spec) * self.dim)
        self.mixed = torch.zeros_like(self.sent)
        self.state = torch.zeros_like(params)  # tracking: the mixed trackers; qgm: the buffers
        self.step = torch.zeros_like(params) if self.mode == "tracking" else None
        self._pending: Tensor | None = None

    def begin(self, params: Tensor) -> None:
        """Before local training: the rows it starts from."""
        self.origin.copy_(params)

    def outgoing(self, params: Tensor, scale: float = 1.0) -> Tensor:
        """After local training: fill ``sent`` with what every node mixes, and return it.

        ``scale`` is the round's learning rate over the base rate (gradient tracking's)."""
        d = self.dim
        if self.mode == "tracking":
            assert self.step is not None
            step, tracker = tracker_step(self.origin, params, self.state, self.step, scale)
            self.sent[:, :d] = descent(self.origin, tracker, scale)
            self.sent[:, d:] = tracker
            self._pending = step
        else:
            self.sent.copy_(half_step(params, self.state, self.beta))
        return self.sent

    def incoming(self, params: Tensor) -> None:
        """``mixed`` holds the round's mix: write the next models into ``params``."""
        d = self.dim
        if self.mode == "tracking":
            assert self.step is not None and self._pending is not None
            params.copy_(self.mixed[:, :d])
            self.state.copy_(self.mixed[:, d:])
            self.step.copy_(self._pending)
            self._pending = None
        else:
            self.state.copy_(buffer_update(self.state, self.origin, self.mixed, self.beta))
            params.copy_(self.mixed)
