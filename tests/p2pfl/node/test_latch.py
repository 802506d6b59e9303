"""The failure latch: an error met in any task stops the run task, and only the first counts."""

from __future__ import annotations

import asyncio

import pytest

from p2pfl.node.errors import StorageError
from p2pfl.node.latch import FailureLatch


def test_the_work_s_result_when_nothing_fails() -> None:
    async def main() -> int:
        async def work() -> int:
            await asyncio.sleep(0)
            return 7

        return await FailureLatch().run(work())

    assert asyncio.run(main()) == 7


def test_a_latched_error_cancels_the_work_and_is_raised_in_its_place() -> None:
    cancelled = []

    async def main() -> None:
        latch = FailureLatch()

        async def work() -> int:
            try:
                await asyncio.Event().wait()  # a round waiting for its neighbours
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            return 0

        async def callback() -> None:  # a link's task, say, whose audit append failed
            await asyncio.sleep(0.01)
            assert latch.fail(StorageError("audit.jsonl: cannot write the audit log"))
            assert not latch.fail(StorageError("a second one"))  # the first one counts

        async with asyncio.timeout(5):
            await asyncio.gather(latch.run(work()), callback())

    with pytest.raises(StorageError, match="cannot write the audit log"):
        asyncio.run(main())
    assert cancelled == [True]


def test_the_work_s_own_error_comes_first() -> None:
    async def main() -> None:
        latch = FailureLatch()

        async def work() -> int:
            latch.fail(StorageError("latched while the work was failing anyway"))
            raise StorageError("the checkpoint of round 2")

        await latch.run(work())

    with pytest.raises(StorageError, match="the checkpoint of round 2"):
        asyncio.run(main())
