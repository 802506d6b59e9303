"""Reading an audit log's hash chain back: every break found, explained, and tied to a line.

A genuine writer (``p2pfl.node.audit.AuditLog``) makes line i (1-based) with
``seq = i - 1`` and ``prev`` = the SHA-256 of line i - 1's bytes (``GENESIS`` for
line 1). The words used below:

- a line's *predecessor* is the line whose hash its ``prev`` names: 0 for
  ``GENESIS``, None when no line of the file has that hash;
- a line is *vouched for* when another line names it as predecessor; only a
  genuine line can be, as no one can forge a later line's hash of it after
  the fact without that later line showing up too.

How each break is explained, in this order:

1. a line that is not a JSON object with ``seq``, ``event`` and ``prev`` is
   *malformed*; the last line cut short (no final newline) is *torn*; a torn
   line the writer closed on reopening (the next entry is ``audit-torn-tail``
   and chains to it) is no damage;
2. a byte-for-byte copy of an earlier line is *inserted*;
3. two lines naming the same predecessor: the one not vouched for is
   *inserted* (so is anything that chains to an inserted line);
4. a line whose predecessor is unknown: if the line above is vouched for by
   another line, this one is *inserted*; if ``seq`` jumps, lines just before it
   were *removed*; otherwise the line above was *edited* (it no longer hashes
   to what this one recorded);
5. a line chained to the line above with the wrong ``seq`` is *inserted* (the
   writer counts lines, something else wrote this one);
6. what is left is genuine: cut into runs of lines each chained to the line
   above, the runs kept in place are those in every heaviest run sequence
   increasing in ``seq``; the others are *reordered*.

The end of the log is not covered: see ``p2pfl.node.audit``.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

GENESIS = "0" * 64
NOT_ENTRY = "not a JSON object with seq, event and prev"


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


class Damage(enum.StrEnum):
    """The kinds of damage a check tells apart (the value is what the CLI prints)."""

    MALFORMED = "malformed"
    TORN = "torn"
    EDITED = "edited"
    REMOVED = "removed"
    REORDERED = "reordered"
    INSERTED = "inserted"
    HEAD_MISSING = "head-missing"  # no line has the hash given as the expected head


class Problem(NamedTuple):
    """One finding: the 1-based line it concerns, its kind and a sentence for people."""

    line: int
    kind: Damage
    detail: str


@dataclass(frozen=True)
class Line:
    number: int  # 1-based, as editors show it
    raw: bytes
    digest: str
    entry: dict[str, Any] | None  # None when not a well-formed entry


def split_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines = lines[:-1]
    return lines


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # nested past the stack
        return None
    if not isinstance(entry, dict):
        return None
    seq = entry.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    if not isinstance(entry.get("prev"), str) or not isinstance(entry.get("event"), str):
        return None
    return entry


class ChainCheck:
    """The analysis of one log's bytes; ``lines``, ``by_hash`` and ``problems()``."""

    def __init__(self, data: bytes) -> None:
        self.torn_end = bool(data) and not data.endswith(b"\n")
        self.lines = [
            Line(n, raw, line_hash(raw), _parse(raw))
            for n, raw in enumerate(split_lines(data), start=1)
        ]
        self.by_hash: dict[str, int] = {}
        self.copies: dict[int, int] = {}  # line -> the earlier identical line
        for line in self.lines:
            if line.digest in self.by_hash:
                self.copies[line.number] = self.by_hash[line.digest]
            else:
                self.by_hash[line.digest] = line.number
        self.chained = [
            ln for ln in self.lines if ln.entry is not None and ln.number not in self.copies
        ]
        self.pred = {ln.number: self._predecessor(ln) for ln in self.chained}
        self.vouched = {p for p in self.pred.values() if p}
        self.found: dict[int, Problem] = {}

    def _predecessor(self, line: Line) -> int | None:
        assert line.entry is not None
        prev = line.entry["prev"]
        return 0 if prev == GENESIS else self.by_hash.get(prev)

    def _report(self, number: int, kind: Damage, detail: str) -> None:
        self.found.setdefault(number, Problem(number, kind, detail))

    def _inserted(self) -> set[int]:
        return {n for n, p in self.found.items() if p.kind is Damage.INSERTED}

    def problems(self) -> list[Problem]:
        """Every break, explained (the rules are in the module's docstring), by line."""
        self._malformed()
        for number, earlier in self.copies.items():
            self._report(number, Damage.INSERTED, f"a copy of line {earlier}")
        self._forks()
        for line in self.chained:
            if self.pred[line.number] is None:
                self._unlinked(line)
        self._descendants_of_inserted()
        for line in self.chained:
            self._seq(line)
        self._order()
        return sorted(self.found.values())

    def _malformed(self) -> None:
        for line in self.lines:
            if line.entry is not None:
                continue
            if line.number == len(self.lines) and self.torn_end:
                self._report(line.number, Damage.TORN, "cut short (a crash while writing?)")
            elif line.number == len(self.lines) or not self._closed_by_note(line):
                self._report(line.number, Damage.MALFORMED, NOT_ENTRY)

    def _closed_by_note(self, line: Line) -> bool:
        """A torn line that the writer closed on reopening: the next entry chains to it."""
        after = self.lines[line.number].entry  # the next line (numbers are 1-based)
        return (
            after is not None
            and after.get("event") == "audit-torn-tail"
            and after.get("prev") == line.digest
        )

    def _forks(self) -> None:
        """Two lines naming one predecessor: keep the one vouched for (else the first)."""
        claims: dict[int, list[int]] = {}
        for number, pred in self.pred.items():
            if pred is not None:
                claims.setdefault(pred, []).append(number)
        for pred, numbers in claims.items():
            if len(numbers) < 2:
                continue
            genuine = next((n for n in numbers if n in self.vouched), numbers[0])
            whose = "the start of the chain" if pred == 0 else f"line {pred}"
            for number in numbers:
                if number != genuine:
                    detail = f"claims {whose} as predecessor, as line {genuine} does"
                    self._report(number, Damage.INSERTED, detail)

    def _unlinked(self, line: Line) -> None:
        """``prev`` names no line of the file: something above was removed or changed."""
        number = line.number
        above = self.lines[number - 2] if number > 1 else None
        if above is not None and (above.entry is None or above.number in self.found):
            return  # explained by the line above
        assert line.entry is not None
        seq, expected = line.entry["seq"], self._expected_seq(number)
        if above is not None and above.number in self.vouched:
            detail = f"prev names no line, and line {above.number} has another successor"
            self._report(number, Damage.INSERTED, detail)
        elif seq > expected:
            where = "at the start of the log" if above is None else "just before this line"
            detail = f"{seq - expected} line(s) missing {where} (seq {expected}..{seq - 1})"
            self._report(number, Damage.REMOVED, detail)
        elif above is None and 0 in self.pred.values():
            self._report(number, Damage.INSERTED, "prev names no line, and another line is first")
        elif above is None:
            self._report(number, Damage.EDITED, "prev should be the genesis value")
        elif self._prev_edited(line):
            detail = (
                f"changed after it was written (line {number + 1} recorded another hash); its "
                f"prev does not name line {above.number} either, which may have changed too"
            )
            self._report(number, Damage.EDITED, detail)
        else:
            detail = f"changed after it was written (line {number} recorded another hash)"
            self._report(above.number, Damage.EDITED, detail)

    def _prev_edited(self, line: Line) -> bool:
        """The line below does not chain to this one either: one edit here explains both."""
        below = line.number + 1
        return line.number not in self.vouched and below in self.pred and self.pred[below] is None

    def _descendants_of_inserted(self) -> None:
        successors: dict[int, list[int]] = {}
        for number, pred in self.pred.items():
            if pred:
                successors.setdefault(pred, []).append(number)
        todo = sorted(self._inserted())
        while todo:
            source = todo.pop()
            for number in successors.get(source, ()):
                if number not in self.found:
                    self._report(number, Damage.INSERTED, f"chains to inserted line {source}")
                    todo.append(number)

    def _seq(self, line: Line) -> None:
        """A line that chains to the one above with the wrong ``seq`` is not the writer's."""
        if line.number in self.found or self.pred[line.number] != line.number - 1:
            return
        assert line.entry is not None
        seq, expected = line.entry["seq"], self._expected_seq(line.number)
        if seq != expected:
            detail = f"seq {seq}, expected {expected}: not written by the log's writer"
            self._report(line.number, Damage.INSERTED, detail)

    def _expected_seq(self, number: int) -> int:
        """The ``seq`` line ``number`` should have, counting from the nearest entry above."""
        for index in range(number - 2, -1, -1):  # walk up without copying: one step, mostly
            above = self.lines[index]
            if above.entry is not None:
                return int(above.entry["seq"]) + number - above.number
        return number - 1

    def _order(self) -> None:
        """Runs of genuine lines out of ``seq`` order are reported, one problem per run."""
        inserted = self._inserted()
        runs: list[list[Line]] = []
        for line in self.chained:
            if line.number in inserted:
                continue
            if runs and self.pred[line.number] == runs[-1][-1].number:
                runs[-1].append(line)
            else:
                runs.append([line])
        ranks = [_seq_of(run[0]) for run in runs]
        for index in sorted(moved_runs(ranks, [len(run) for run in runs])):
            first, last = runs[index][0].number, runs[index][-1].number
            lines = f"line {first}" if first == last else f"lines {first}..{last}"
            where = _belongs(first, self.pred[first])
            self._report(first, Damage.REORDERED, f"{lines} out of order: {where}")


def _seq_of(line: Line) -> int:
    assert line.entry is not None
    return int(line.entry["seq"])


def _belongs(number: int, pred: int | None) -> str:
    if pred is None:
        return f"line {number}'s predecessor is missing"
    return (
        f"line {number} starts the log" if pred == 0 else f"line {number} chains after line {pred}"
    )


def moved_runs(ranks: list[int], weights: list[int]) -> set[int]:
    """Indices of the runs that some heaviest strictly increasing run sequence leaves out.

    A run (``weights`` lines long, starting at ``seq`` ``ranks``) is in place when
    every heaviest sequence increasing in rank keeps it; the rest moved. Two
    swapped neighbours are thus both named: either could be the one that moved.
    """
    ending = _heaviest_ending(ranks, weights)
    starting = _heaviest_ending([-r for r in reversed(ranks)], weights[::-1])[::-1]
    best = max(ending, default=0)
    spans = sorted(
        (ending[i] - weights[i], ending[i], i)
        for i in range(len(ranks))
        if ending[i] + starting[i] - weights[i] == best
    )
    # Every heaviest sequence tiles (0, best] with the spans of its runs: a run is
    # in all of them exactly when no other run's span overlaps its own.
    kept, reach = set(), 0
    for k, (start, end, i) in enumerate(spans):
        overlaps_next = k + 1 < len(spans) and spans[k + 1][0] < end
        if start >= reach and not overlaps_next:
            kept.add(i)
        reach = max(reach, end)
    return set(range(len(ranks))) - kept


def _heaviest_ending(ranks: Iterable[int], weights: list[int]) -> list[int]:
    """For each position, the heaviest strictly increasing sequence ending there.

    A Fenwick tree of prefix maxima over the ranks keeps it O(k log k).
    """
    ranks = list(ranks)
    index = {rank: i for i, rank in enumerate(sorted(set(ranks)), start=1)}
    tree = [0] * (len(index) + 1)
    heaviest = []
    for rank, weight in zip(ranks, weights, strict=True):
        i, below = index[rank] - 1, 0
        while i > 0:
            below, i = max(below, tree[i]), i - (i & -i)
        value = below + weight
        heaviest.append(value)
        i = index[rank]
        while i < len(tree):
            tree[i], i = max(tree[i], value), i + (i & -i)
    return heaviest
