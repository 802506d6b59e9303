"""The first error that must stop a running node, whoever meets it.

Most of what a node writes is written in its run task (checkpoints, the ledger
save that ends a round), where an error simply propagates. The audit log is
appended from everywhere: link callbacks, the handshake's refusals, protocol
faults, the rounds. An append the disk refuses there cannot be raised into the
link or timer task that made it (it would take that link down, not the node),
so it is latched here (``fail``) and the run task, which waits on the latch
beside the rounds (``run``), stops the node with it: the same clean stop, one
line and exit status 2, as a checkpoint the disk refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from p2pfl.errors import P2PFLError

T = TypeVar("T")


class FailureLatch:
    """Holds the first error ``fail`` is given; ``run`` raises it into the run task."""

    def __init__(self) -> None:
        self.error: P2PFLError | None = None
        self._set = asyncio.Event()

    def fail(self, error: P2PFLError) -> bool:
        """Latch ``error`` unless one is latched already; True if it was the first."""
        if self.error is not None:
            return False
        self.error = error
        self._set.set()
        return True

    def check(self) -> None:
        """Raise the latched error, if any: for ``work`` to stop at once where it must not
        go on (``run`` cancels it only when the loop next turns, which a fast step outruns:
        a round trained in a millisecond sent its frame after an audit append had failed)."""
        if self.error is not None:
            raise self.error

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """``work``'s result, or the latched error as soon as there is one (``work`` cancelled)."""
        task = asyncio.ensure_future(work)
        latched = asyncio.ensure_future(self._set.wait())
        try:
            await asyncio.wait({task, latched}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            latched.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.done() and not task.cancelled() and task.exception() is not None:
            return task.result()  # its own error first: it says what it could not do
        if self.error is not None:
            raise self.error
        return task.result()
