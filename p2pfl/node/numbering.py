"""Round numbers for people, round indices for the protocol cores: the one place they meet.

Everything a node shows counts rounds 1..R: its log, ``status.json``, the
checkpoint files (``round-000001.ckpt`` holds the model after round 1), their
metadata, the audit log, its ledger records (progress, dropout declarations,
published metrics), its RO-Crate and its events. "Completed" is the number of
rounds completed, which is also the number of the last completed round: 0
before the first.

The protocol cores (``protocols.rounds``, ``protocols.secagg``), the learner's
batch seeds, the topology's schedule and the masks of private metrics count
rounds from 0, as the simulation engines do; a node computes exactly what the
engines compute only if it hands them the same indices. The node converts
here and nowhere else: ``index`` where a number goes into one of them (the
exchange's calls into its core, the learner, the graph, the masks),
``number`` where one of theirs comes out (the core's events).
"""

from __future__ import annotations

FIRST = 1
"""The number of a run's first round."""


def index(number: int) -> int:
    """The protocol's index of round ``number`` (round 1 is index 0)."""
    return number - FIRST


def number(index: int) -> int:
    """The number people see for the protocol's round ``index`` (index 0 is round 1)."""
    return index + FIRST
