"""Run ``p2pfl node run`` with a fault injected at one point of a round (tests only).

``python tests/p2pfl/node/killer.py CONFIG POINT N`` patches the function at
``POINT`` in this process, then runs the real CLI (``node run --config CONFIG
--insecure``). The product carries no test hooks; the faults are:

- ``train``: the Nth call of the learner's ``train`` SIGKILLs the process (a
  round's local training);
- ``masked``: the Nth ``Exchange.start_round`` SIGKILLs it before the round core
  masks the input (in a secure round: after the shares were dealt, before the
  masked input is sent);
- ``checkpoint``: the Nth temporary file of a checkpoint is half written,
  synced, and the process SIGKILLed (the rename that would publish it never
  happens); ``ledger``: so is the first one of the ledger file after the Nth
  checkpoint, the save of round N's durable group or one just before it (the
  node also saves a changed ledger at any status tick, so a count of ledger
  saves would land anywhere in the run, even after the last round's frames left);
- ``enospc``: from the Nth checkpoint on, every temporary file written in the
  data directory fails with ``ENOSPC`` after half its first block (a full disk);
- ``erofs``: from the Nth checkpoint on, every checkpoint write fails with
  ``EROFS`` (a read-only checkpoint volume; the status file can still be written);
- ``ledger-enospc``: from the Nth save of the ledger file on, every one fails with
  ``ENOSPC`` (the other files still write);
- ``audit-enospc``: from the Nth checkpoint on, every append to the audit log
  writes half its line and fails with ``ENOSPC`` (the other files still write).

Tests run as root, so permission bits cannot make a directory read-only: the
faults are raised where the writes happen (``os.fdopen`` of the temporary file,
recognised by its name).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from p2pfl.cli import exit_now, main  # noqa: E402
from p2pfl.node import audit, exchange, local  # noqa: E402

POINTS = (
    "train",
    "masked",
    "checkpoint",
    "ledger",
    "enospc",
    "erofs",
    "ledger-enospc",
    "audit-enospc",
)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_on_call(owner: Any, name: str, n: int) -> None:
    """The Nth call of ``owner.name`` kills the process before it does anything."""
    original = getattr(owner, name)
    calls = [0]

    def patched(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            die()
        return original(*args, **kwargs)

    setattr(owner, name, patched)


class Faulty:
    """A file object whose ``write`` writes half its data, then kills or raises."""

    def __init__(self, handle: Any, fault: int | None) -> None:
        self.handle = handle
        self.fault = fault  # an errno to raise, or None to SIGKILL

    def __enter__(self) -> Faulty:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def write(self, data: Any) -> int:
        part = memoryview(data).cast("B")[: max(1, len(memoryview(data).cast("B")) // 2)]
        self.handle.write(part)
        self.handle.flush()
        os.fsync(self.handle.fileno())
        if self.fault is None:
            die()
        raise OSError(self.fault, os.strerror(self.fault))


def fault_writes(point: str, n: int) -> None:
    """Patch ``os.fdopen``: temporary files of the kind ``point`` names get ``Faulty``."""
    original = os.fdopen
    seen = {"checkpoint": 0, "ledger": 0}
    failing = [False]

    def kind_of(fd: int) -> str:
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if not name.endswith(".tmp"):
            return ""
        if name.startswith(".round-"):
            return "checkpoint"
        if name.startswith(".ledger.") and not name.startswith(".ledger.prev."):
            return "ledger"
        return "other"

    def patched(fd: int, *args: Any, **kwargs: Any) -> Any:
        handle = original(fd, *args, **kwargs)
        kind = kind_of(fd)
        if kind in seen:
            seen[kind] += 1
        if point == "ledger":
            return Faulty(handle, None) if kind == "ledger" and seen["checkpoint"] >= n else handle
        if point in seen:
            return Faulty(handle, None) if kind == point and seen[kind] == n else handle
        if point == "ledger-enospc":
            return Faulty(handle, errno.ENOSPC) if kind == "ledger" and seen[kind] >= n else handle
        if kind == "checkpoint" and seen[kind] == n:
            failing[0] = True
        if point == "audit-enospc":
            if failing[0]:
                fail_audit_appends()
            return handle
        if not failing[0] or not kind:
            return handle
        if point == "enospc":
            return Faulty(handle, errno.ENOSPC)
        return Faulty(handle, errno.EROFS) if kind == "checkpoint" else handle

    os.fdopen = patched  # type: ignore[assignment]


class _FullDiskOs:
    """``os`` as the audit log sees it: appends to ``audit.jsonl`` half written, then ENOSPC."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name != "audit.jsonl":
            return os.write(fd, data)
        view = memoryview(data).cast("B")
        os.write(fd, view[: max(1, len(view) // 2)])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_audit_appends() -> None:
    audit.os = _FullDiskOs()  # type: ignore[assignment]


def arm(point: str, n: int) -> None:
    if point == "train":
        kill_on_call(local.Learner, "train", n)
    elif point == "masked":
        kill_on_call(exchange.Exchange, "start_round", n)
    elif point in POINTS:
        fault_writes(point, n)
    else:
        raise SystemExit(f"killer.py: unknown point {point!r} (one of {', '.join(POINTS)})")


if __name__ == "__main__":
    config, point, count = sys.argv[1:4]
    arm(point, int(count))
    exit_now(main(["node", "run", "--config", config, "--insecure"]))
