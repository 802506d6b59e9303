"""The phases of a node, in the order a run goes through them.

A node is ``CREATED``, then ``IDLE`` once started. ``run`` takes it through
``WAITING_APPROVAL`` (the plan's approvals), ``CHECKING_DATA`` (its data against
the plan's schema), ``CONNECTING`` (the neighbours' links), then ``TRAINING`` and
``MIXING`` in every round, ``LINGERING`` after the last one while the neighbours
finish, and ``FINISHED``. A node that stops ends ``STOPPED`` (asked to, before
finishing) or ``FAILED`` (an error). The values are the text of ``status.json``.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    CREATED = "created"
    IDLE = "idle"
    WAITING_APPROVAL = "waiting-approval"
    CHECKING_DATA = "checking-data"
    CONNECTING = "connecting"
    TRAINING = "training"
    MIXING = "mixing"
    LINGERING = "lingering"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"


ENDED = frozenset({Phase.STOPPED, Phase.FAILED})
"""The phases of a node that is no longer running (``FINISHED`` may still be serving)."""
