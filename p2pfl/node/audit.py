"""The node's audit log: append-only JSON lines, each chained to the one before by SHA-256.

Every line is one JSON object::

    {"seq": 7, "time": "2025-01-01T12:00:00.000000+00:00", "event": "auth-refused",
     "prev": "<sha256 hex of line 6's bytes>", ...event fields}

``prev`` is the SHA-256 of the previous line exactly as written (its UTF-8
bytes, without the newline); the first line has ``prev`` = 64 zeros. Editing,
removing or reordering any line breaks the chain at the line after it, which
``verify`` reports. Lines are written with ``O_APPEND``, flushed and fsync'ed
one by one, so a crash loses at most the line being written; a torn last line
found on opening is closed with a newline and the next entry chains to it and
says so (``audit-torn-tail``), so nothing is ever rewritten.

What the node records: start and stop, links up and down, refused handshakes
(strangers, revoked members, bad signatures, rate limiting), peers' protocol
errors, rounds completed, dropouts declared, checkpoints resumed, errors.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
MAX_FIELD_CHARS = 2000


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


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
        self, path: str | os.PathLike[str], *, clock: Callable[[], str] = _utc_now
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._prev, self._seq, torn = _tail(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if torn:
            os.write(self._fd, b"\n")
            self.record("audit-torn-tail", note="the previous line was cut short by a crash")

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one entry; returns it as written (``ValueError`` once closed)."""
        if self._fd < 0:
            raise ValueError(f"{self.path}: the audit log is closed")
        entry: dict[str, Any] = {"seq": self._seq, "time": self._clock(), "event": event}
        entry.update({k: _clean(v) for k, v in fields.items() if k not in entry})
        entry["prev"] = self._prev
        line = json.dumps(entry, separators=(",", ":"), sort_keys=False).encode()
        os.write(self._fd, line + b"\n")
        os.fsync(self._fd)
        self._prev = line_hash(line)
        self._seq += 1
        return entry

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
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
    """What ``verify`` found: entries read, and the problems (line number, what)."""

    entries: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: str | os.PathLike[str]) -> Verification:
    """Check every line's ``prev`` against the hash of the line before it, and the ``seq``s."""
    result = Verification()
    prev = GENESIS
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines = lines[:-1]
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            entry = None
        if not isinstance(entry, dict):
            if number < len(lines):  # a torn line may only be followed by a torn-tail note
                following = lines[number]
                if b'"event":"audit-torn-tail"' not in following:
                    result.problems.append((number, "not a JSON object"))
            else:
                result.problems.append((number, "not a JSON object (torn last line)"))
        else:
            result.entries += 1
            if entry.get("prev") != prev:
                result.problems.append((number, "prev does not match the previous line's hash"))
            if entry.get("seq") != number - 1:
                result.problems.append((number, f"seq {entry.get('seq')!r}, expected {number - 1}"))
        prev = line_hash(line)
    return result


def read_entries(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The log's entries that parse (for tools and tests)."""
    entries = []
    for line in Path(path).read_bytes().split(b"\n"):
        try:
            entry = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries
