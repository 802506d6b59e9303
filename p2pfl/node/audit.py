"""The node's audit log: append-only JSON lines, each chained to the one before by SHA-256.

Every line is one JSON object::

    {"seq": 7, "time": "2025-01-01T12:00:00.000000+00:00", "event": "auth-refused",
     "prev": "<sha256 hex of line 6's bytes>", ...event fields}

``prev`` is the SHA-256 of the previous line exactly as written (its UTF-8
bytes, without the newline); the first line has ``prev`` = 64 zeros, and
``seq`` counts lines from 0. Each line is handed to the kernel with one ``O_APPEND``
write as it is recorded, so a killed process (SIGKILL) loses at most the line
being written. By default each line is also fsync'ed; a log opened with
``sync_each=False`` (the node's) fsyncs when told (``sync``: the node does it once
per round, with the round's checkpoint, and at every status tick) and on
closing, so a power loss may also lose the lines since the last sync. A torn
last line found on opening is closed with a newline and the next entry chains
to it and says so (``audit-torn-tail``), so nothing is ever rewritten.

What the node records: start and stop, links up and down, refused handshakes
(strangers, revoked members, bad signatures, rate limiting), peers' protocol
errors, rounds completed, dropouts declared, checkpoints resumed, errors.

What ``verify`` can tell from the file alone: an edited, removed, inserted,
reordered or malformed line anywhere but at the very end breaks the chain, and
it names the line and the kind of damage. What it cannot: lines cut off the
end, or a changed last line, leave a valid (shorter) chain; only a hash noted
earlier somewhere else (``Verification.head``, checked with ``expect_head``)
reveals them, and a log that does not end with ``stop`` hints at them. The
chain has no key: whoever can write the file can rewrite all of it
consistently, so the chain proves integrity against partial edits and, up to
the last anchored head, against rewriting.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pfl.node.audit_chain import GENESIS, ChainCheck, Damage, Problem, line_hash, split_lines

MAX_FIELD_CHARS = 2000


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def _clean(value: Any) -> Any:
    """JSON-safe and bounded: long strings cut, bytes as hex, unknown types as str."""
    if isinstance(value, str):
        return value[:MAX_FIELD_CHARS]
    if isinstance(value, bytes):
        return value.hex()[:MAX_FIELD_CHARS]
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return [_clean(v) for v in items]
    return str(value)[:MAX_FIELD_CHARS]


class AuditLog:
    """Appends hash-chained entries to one file (``record``); open it with ``AuditLog(path)``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], str] = _utc_now,
        sync_each: bool = True,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._sync_each = sync_each
        self._written = 0  # lines written in this process; ``sync`` may run in another thread
        self._synced = 0
        self._prev, self._seq, torn = _tail(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if torn:
            os.write(self._fd, b"\n")
            self.record("audit-torn-tail", note="the previous line was cut short by a crash")

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one entry; returns it as written (``ValueError`` once closed).

        An append the disk refuses raises its ``OSError`` and closes the log: the
        line it cut short is a torn tail, closed and noted when the log is next
        opened (``audit-torn-tail``), so the chain still verifies.
        """
        if self._fd < 0:
            raise ValueError(f"{self.path}: the audit log is closed")
        entry: dict[str, Any] = {"seq": self._seq, "time": self._clock(), "event": event}
        entry.update({k: _clean(v) for k, v in fields.items() if k not in entry})
        entry["prev"] = self._prev
        line = json.dumps(entry, separators=(",", ":"), sort_keys=False).encode()
        try:
            rest = memoryview(line + b"\n")
            while rest:
                rest = rest[os.write(self._fd, rest) :]
            self._written += 1
            if self._sync_each:
                self.sync()
        except OSError:
            self.close()  # a line may be half written: nothing may chain past it from here
            raise
        self._prev = line_hash(line)
        self._seq += 1
        return entry

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def head(self) -> str:
        """Hash of the last line written: copied where this process cannot write, it anchors
        the log against lines cut off the end (``verify(..., expect_head=...)``)."""
        return self._prev

    def sync(self) -> None:
        """Put the lines recorded so far on disk (one fsync; none if nothing is new)."""
        written = self._written
        if self._fd >= 0 and written > self._synced:
            os.fsync(self._fd)
            self._synced = max(self._synced, written)

    def close(self) -> None:
        if self._fd >= 0:
            try:
                with contextlib.suppress(OSError):  # a closing log has no one left to tell
                    self.sync()
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tail(path: Path) -> tuple[str, int, bool]:
    """(hash of the last line, next seq, whether the file ends in a torn line)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return GENESIS, 0, False
    if not data:
        return GENESIS, 0, False
    torn = not data.endswith(b"\n")
    lines = data.split(b"\n")
    if not torn:
        lines = lines[:-1]
    last = lines[-1]
    seq = len(lines)
    return line_hash(last), seq, torn


@dataclass
class Verification:
    """What ``verify`` found.

    ``entries`` counts well-formed entries, ``lines`` all lines; ``problems`` are
    ``Problem(line, kind, detail)`` tuples in line order. ``head`` is the hash of
    the last line (``GENESIS`` for an empty log): kept where the log's writer
    cannot reach, it later proves that nothing up to that line was cut off or
    changed (``verify(..., expect_head=head)``). ``head_line`` is the line that
    matched the expected head, when one was given and found.
    """

    entries: int = 0
    problems: list[Problem] = field(default_factory=list)
    lines: int = 0
    head: str = GENESIS
    head_line: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_data(data: bytes, *, expect_head: str | None = None) -> Verification:
    """Check a log's bytes: every break in the chain, explained (``p2pfl.node.audit_chain``).

    ``expect_head`` is a line hash noted earlier (``Verification.head``): the log
    must still hold that line, which is the only way to notice lines cut off
    the end or a changed last line.
    """
    checker = ChainCheck(data)
    result = Verification(
        entries=sum(ln.entry is not None for ln in checker.lines),
        problems=checker.problems(),
        lines=len(checker.lines),
        head=checker.lines[-1].digest if checker.lines else GENESIS,
    )
    if expect_head is not None:
        result.head_line = 0 if expect_head == GENESIS else checker.by_hash.get(expect_head)
        if result.head_line is None:
            detail = (
                f"no line hashes to the expected head {expect_head}: lines were cut off "
                "the end, or that line was changed"
            )
            result.problems.append(Problem(result.lines, Damage.HEAD_MISSING, detail))
    return result


def verify(path: str | os.PathLike[str], *, expect_head: str | None = None) -> Verification:
    """Check the log at ``path`` (``verify_data``); ``OSError`` if it cannot be read."""
    return verify_data(Path(path).read_bytes(), expect_head=expect_head)


def entries_in(data: bytes) -> list[dict[str, Any]]:
    """The entries of a log's bytes that parse as JSON objects, in file order."""
    entries = []
    for line in split_lines(data):
        try:
            entry = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def read_entries(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The log's entries that parse (for tools and tests)."""
    return entries_in(Path(path).read_bytes())


__all__ = [
    "GENESIS",
    "AuditLog",
    "Damage",
    "Problem",
    "Verification",
    "entries_in",
    "line_hash",
    "read_entries",
    "verify",
    "verify_data",
]
