"""Per-node uniforms for stochastic compression: the same numbers in any stack, on any rank."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from p2pfl.training import derived_seed

COMPRESSION_PURPOSE = 17
"""Tag of the compression draws among a node's derived seeds (``derived_seed``)."""


class NodeUniforms:
    """Each node's own stream of uniforms for stochastic compression, seeded per round.

    Node ``i`` draws from a generator seeded by (seed, i, round), so what it draws
    depends neither on its place in the stack nor on which process holds it: a
    sharded run draws the single-process run's numbers.
    """

    def __init__(self, seed: int, node_ids: Sequence[int], device: torch.device) -> None:
        self.seed, self.node_ids, self.device = seed, list(node_ids), device
        self._gens = [torch.Generator(device=device) for _ in self.node_ids]

    def start_round(self, round: int) -> None:
        for gen, node in zip(self._gens, self.node_ids, strict=True):
            gen.manual_seed(derived_seed(self.seed, node, round, COMPRESSION_PURPOSE))

    def rows(self, start: int, stop: int) -> Callable[[tuple[int, ...]], Tensor]:
        """The draw function of rows ``start:stop``: one row of uniforms per node."""

        def draw(shape: tuple[int, ...]) -> Tensor:
            return torch.stack(
                [
                    torch.rand(shape[1:], generator=g, device=self.device)
                    for g in self._gens[start:stop]
                ]
            )

        return draw
