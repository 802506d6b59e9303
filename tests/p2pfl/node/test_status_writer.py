"""The status file's writer: the newest snapshot wins, and writes keep a gap between them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from p2pfl.node import status as status_module
from p2pfl.node.status import StatusWriter, read_status


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``n`` of each snapshot written, in order."""
    done: list[int] = []
    real = status_module.write_status

    def spy(data_dir: Path, status: dict[str, object]) -> None:
        real(data_dir, status)
        done.append(int(status["n"]))  # type: ignore[call-overload]

    monkeypatch.setattr(status_module, "write_status", spy)
    return done


def on_disk(directory: Path) -> int | None:
    try:
        return int(read_status(directory)["n"])
    except Exception:
        return None


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return False


def test_snapshots_within_the_gap_are_one_write_of_the_newest(
    tmp_path: Path, writes: list[int]
) -> None:
    writer = StatusWriter(tmp_path, min_gap=30.0)
    try:
        writer.submit({"n": 0})
        assert wait_for(lambda: on_disk(tmp_path) == 0)
        for n in range(1, 60):  # a node's phase changes over 20 fast rounds
            writer.submit({"n": n})
        time.sleep(0.1)
        assert on_disk(tmp_path) == 0 and writes == [0], "no write before the gap ends"
        writer.flush()  # cuts the gap short
        assert on_disk(tmp_path) == 59 and writes == [0, 59]
        assert read_status(tmp_path)["peak_rss_bytes"] > 0
    finally:
        started = time.monotonic()
        writer.close()
    assert time.monotonic() - started < 5.0, "close does not wait the gap out"
    writer.submit({"n": 60})  # after close: at once, in this thread
    assert on_disk(tmp_path) == 60 and writes == [0, 59, 60]


def test_the_newest_snapshot_is_written_when_the_gap_ends(
    tmp_path: Path, writes: list[int]
) -> None:
    writer = StatusWriter(tmp_path, min_gap=0.05)
    try:
        writer.submit({"n": 1})
        assert wait_for(lambda: writes == [1])
        writer.submit({"n": 2})
        writer.submit({"n": 3})
        assert wait_for(lambda: on_disk(tmp_path) == 3), "the last snapshot is not left behind"
        assert writes == [1, 3]
    finally:
        writer.close()


def test_a_write_error_is_ignored_and_the_next_write_goes_through(
    tmp_path: Path, writes: list[int]
) -> None:
    missing = tmp_path / "gone"
    writer = StatusWriter(missing, min_gap=0.0)
    try:
        writer.submit({"n": 1})  # the directory is not there: the write fails, quietly
        writer.flush()
        missing.mkdir()
        writer.submit({"n": 2})
        writer.flush()
        assert on_disk(missing) == 2 and writes == [2]
    finally:
        writer.close()
