"""The status file a running node keeps in its data directory (``p2pfl node status`` reads it).

``status.json`` is rewritten atomically (temp file, rename; not fsynced, as
nothing is resumed from it; from a worker thread, ``StatusWriter``) whenever the node
changes phase and every ``status_interval`` seconds, and once more when it
stops, after its links are closed, so a reader never sees half a file. Writes
are at least ``MIN_GAP`` seconds apart: a node of a small model runs tens of
rounds a second and changes phase three times in each, and writing every change
cost it a fifth of its CPU; a snapshot that comes sooner waits, and the newest of
them is written at the end of the gap, so the file is never more than that behind. It
holds the node id, the federation, the phase (the text of a
``p2pfl.node.phases.Phase``: ``finished``, ``stopped`` or ``failed`` once the
run is over), the round in progress (``round``, numbered from 1), the rounds
completed (``completed``: 0 before the first), each neighbour link's live state
with the last round mixed with it, and the last error.

Readers take what they find: ``read_status`` promises a JSON object, nothing
about its fields (another version, or a hand, may have written it).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from p2pfl.atomic import atomic_write_bytes
from p2pfl.errors import P2PFLError

STATUS_FILE = "status.json"
MIN_GAP = 0.2
"""Seconds at least between two writes of the status file (module docstring)."""


def write_status(data_dir: str | os.PathLike[str], status: dict[str, Any]) -> None:
    text = json.dumps(status, indent=2, sort_keys=True, default=str) + "\n"
    # Not fsynced: it says what is true now, is rewritten within seconds, and a reader
    # (or a killed node) still sees one whole version (``p2pfl.atomic``).
    atomic_write_bytes(Path(data_dir) / STATUS_FILE, text.encode(), durable=False)


class StatusWriter:
    """Writes a node's status file from a worker thread: the newest snapshot wins.

    The node hands over a snapshot (``submit``) and goes on; a rename under load
    takes milliseconds it would otherwise spend in the round path. After a write
    the worker waits ``min_gap`` seconds; snapshots that arrive while it writes or
    waits are coalesced into the newest, written when the gap ends (and handing
    one over then costs no thread hop). ``flush`` and ``close`` cut the gap short
    and wait for the writes handed over; after ``close``, ``submit`` writes at once,
    in the caller's thread (the node's last word). Write errors are ignored, as for
    any status write: the next one may succeed.
    """

    def __init__(self, data_dir: str | os.PathLike[str], min_gap: float = MIN_GAP) -> None:
        self.data_dir = Path(data_dir)
        self.min_gap = min_gap
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._busy = False
        self._hurry = threading.Event()  # set by flush (until it is done) and close: no gaps
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    def submit(self, status: dict[str, Any]) -> None:
        """Write ``status`` soon, with ``peak_rss_bytes`` taken when it is written
        (``getrusage`` is slow in a busy process with many threads: not in the round path)."""
        if self._closed:
            self._write(status)
            return
        with self._lock:
            self._pending = status
            if self._busy:
                return
            self._busy = True
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="p2pfl-status")
        self._executor.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                status, self._pending = self._pending, None
                if status is None:
                    self._busy = False
                    return
            self._write(status)
            self._hurry.wait(self.min_gap)

    def _write(self, status: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            write_status(self.data_dir, {**status, "peak_rss_bytes": peak_rss()})

    def flush(self) -> None:
        """Wait until the snapshots handed over so far are written (the worker is FIFO)."""
        if self._executor is not None:
            self._hurry.set()
            self._executor.submit(self._hurry.clear).result()

    def close(self) -> None:
        self._closed = True
        self._hurry.set()
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def peak_rss() -> int | None:
    """This process's peak resident set size in bytes (None where unknown)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024  # Linux counts KiB


def read_status(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(data_dir) / STATUS_FILE
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise P2PFLError(f"{path}: no status file (has the node ever run here?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise P2PFLError(f"{path}: unreadable status file: {exc}") from None
    if not isinstance(document, dict):
        raise P2PFLError(f"{path}: not a status file")
    return document


def process_alive(pid: object) -> bool:
    """Whether a process with this pid exists (the daemon that wrote the status may be gone)."""
    if type(pid) is not int or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True
