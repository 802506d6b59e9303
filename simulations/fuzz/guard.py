"""The guard every fuzz target runs its decoder under (``guarded``), its ``Bug``, and ``scratch``.

A call passes when the decoder returns or raises one of its documented errors.
It is a ``Bug`` otherwise: another exception (let through as it is), a Rust
panic from pycrdt (``pyo3_runtime.PanicException``, a ``BaseException``), more
than ``MAX_SECONDS`` of CPU time (CPU, not wall time: the machine may be
shared), or a peak resident memory more than ``MAX_PEAK_BYTES`` above where the
call started (``VmHWM``, reset per call through ``/proc/self/clear_refs``, so
Rust's allocations count too).

Importing this module sets ``RUST_BACKTRACE=0`` for the process: where it asks
for backtraces, the first pycrdt panic in a process (contained, so no ``Bug``)
resolves the library's symbols to print one, 50-66 MiB allocated once, which the
memory limit would count against whichever input panicked first (a campaign
met it on the 7-byte update kept in ``tests/fuzz_cases/ledger_update/``).
"""

from __future__ import annotations

import atexit
import functools
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MAX_SECONDS = 5.0
MAX_PEAK_BYTES = 64 << 20
os.environ["RUST_BACKTRACE"] = "0"  # read by Rust at the first panic (module docstring)


class Bug(AssertionError):
    """A decoder did something other than decode or raise its documented error."""


# -- the guard every target runs under -------------------------------------------------------


class _Memory:
    """This process's resident memory, read from ``/proc`` through descriptors kept open.

    Opening and parsing ``/proc/self/status`` twice a call cost ~250 µs, more than
    most decoders; ``pread`` on open files costs ~50 µs. ``/proc/self`` names the
    process that opened it, so a forked child opens its own (``current``).
    """

    _PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self) -> None:
        self.pid = os.getpid()
        try:
            self._refs = os.open("/proc/self/clear_refs", os.O_WRONLY)
        except OSError:
            self._refs = -1
        try:
            self._statm = os.open("/proc/self/statm", os.O_RDONLY)
            self._status = os.open("/proc/self/status", os.O_RDONLY)
        except OSError:
            self._refs = self._statm = self._status = -1

    @classmethod
    def current(cls) -> _Memory:
        global _memory
        if _memory is None or _memory.pid != os.getpid():
            _memory = cls()
        return _memory

    def reset_peak(self) -> int | None:
        """Reset ``VmHWM`` to the current resident size (Linux) and return it in bytes.

        ``None`` where that is refused (no ``/proc``, or no ``clear_refs``).
        """
        if self._refs < 0:
            return None
        try:
            os.write(self._refs, b"5")
            return int(os.pread(self._statm, 128, 0).split()[1]) * self._PAGE
        except OSError:
            return None

    def peak(self) -> int:
        """``VmHWM`` in bytes: the most resident memory since the last reset."""
        status = os.pread(self._status, 8192, 0)
        at = status.index(b"VmHWM:") + 6
        return int(status[at : status.index(b"kB", at)]) * 1024


_memory: _Memory | None = None


@contextmanager
def guarded(allowed: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Run a decoder: ``allowed`` errors pass silently; panics, hangs and blow-ups are a ``Bug``."""
    memory = _Memory.current()
    start = memory.reset_peak()
    start_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if start is None else 0
    started = time.process_time()
    try:
        yield
    except allowed:
        pass
    except BaseException as exc:
        if type(exc).__name__ == "PanicException":
            raise Bug(f"pycrdt panicked: {exc}") from None
        raise
    elapsed = time.process_time() - started
    if elapsed > MAX_SECONDS:
        raise Bug(f"one call took {elapsed:.1f} s of CPU time")
    if start is not None:
        grown = memory.peak() - start
    else:
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_peak) * 1024
    if grown > MAX_PEAK_BYTES:
        raise Bug(f"one call raised the peak resident memory by {grown >> 20} MiB")


# -- the files the targets read ---------------------------------------------------------


@functools.cache
def scratch() -> Path:
    """A directory for the files the targets read, in memory where the system has one.

    Overwriting a file on ext4 costs milliseconds (the replaced blocks are
    flushed), measured as 95% of the file targets' time; on tmpfs it is
    microseconds. libFuzzer ends a process without running ``atexit``, so the
    directory is named by the process id and the next process removes those of
    processes that are gone.
    """
    parent = _parent()
    sweep()
    path = parent / f"p2pfl-fuzz-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _parent() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def sweep() -> None:
    """Remove the scratch directories of processes that are gone."""
    for old in _parent().glob("p2pfl-fuzz-*"):
        pid = old.name.removeprefix("p2pfl-fuzz-")
        try:  # another process may be sweeping too
            if pid.isdigit() and not _alive(int(pid)) and old.stat().st_uid == os.getuid():
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
