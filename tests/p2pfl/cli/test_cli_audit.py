"""``p2pfl audit verify``: a real log written by ``AuditLog``, then damaged in every way we know.

Each damage must make the command exit 1 and name the line it concerns and the
kind of damage; an intact log exits 0 and is summarised.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p2pfl.cli import main
from p2pfl.node.audit import AuditLog, line_hash
from p2pfl.node.audit_chain import moved_runs

Lines = list[bytes]


def _clock() -> Callable[[], str]:
    ticks: Iterator[int] = iter(range(10_000))
    return lambda: f"2025-01-01T12:00:{next(ticks):02d}+00:00"


def _write_run(path: Path) -> None:
    """A node's run: start, links, a refusal, three rounds, a dropout, an error, stop."""
    with AuditLog(path, clock=_clock()) as audit:
        audit.record("start", node="node-a", federation="fed-1", pid=1, listen="x", insecure=False)
        audit.record("link-up", peer="node-b")  # line 2
        audit.record("link-up", peer="node-c")  # line 3
        audit.record("auth-refused", peer="mallory", code="not-member", inbound=True)  # 4
        audit.record("round", round=1, arrived=["node-b", "node-c"], stragglers=[])  # 5
        audit.record("round", round=2, arrived=["node-b", "node-c"], stragglers=[])  # 6
        audit.record("dropouts-declared", round=3, dropped=["node-c"])  # 7
        audit.record("link-down", peer="node-c", reason="closed")  # 8
        audit.record("round", round=3, arrived=["node-b"], stragglers=[])  # 9
        audit.record("peer-protocol-error", peer="node-b", error="bad frame")  # 10
        audit.record("error", error="RuntimeError: disk full")  # 11
        audit.record("stop", reason="requested")  # 12


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    _write_run(path)
    return path


def _lines(path: Path) -> Lines:
    return path.read_bytes().splitlines()


def _save(path: Path, lines: Lines) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def _verify_json(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict]:
    code = main(["audit", "verify", str(path), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def _found(report: dict) -> set[tuple[int, str]]:
    return {(p["line"], p["kind"]) for p in report["problems"]}


# -- an intact log --------------------------------------------------------------------------


def test_an_intact_log_exits_0_and_is_summarised(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "verify", str(log)]) == 0
    out = capsys.readouterr().out
    assert f"{log}: intact (12 entries, 12 lines)" in out
    assert f"head: {line_hash(_lines(log)[-1])}" in out
    assert "node: node-a" in out
    assert "time: 2025-01-01T12:00:00+00:00 .. 2025-01-01T12:00:11+00:00" in out
    assert "rounds completed: 3 (rounds 1..3" in out
    assert "links: 2 up, 1 down" in out and "peers: node-b, node-c" in out
    assert "refused handshakes: 1 (not-member: 1)" in out
    assert "dropouts declared: 1; peers: node-c" in out
    assert "errors: 1, peer protocol errors: 1; last: RuntimeError: disk full" in out
    assert "NOT INTACT" not in out and "note:" not in out


def test_json_gives_the_same_summary(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = _verify_json(log, capsys)
    assert code == 0 and report["intact"] is True and report["problems"] == []
    assert report["entries"] == report["lines"] == 12
    s = report["summary"]
    assert s["nodes"] == ["node-a"] and s["federations"] == ["fed-1"]
    assert s["first_time"] == "2025-01-01T12:00:00+00:00"
    assert s["last_time"] == "2025-01-01T12:00:11+00:00"
    assert (
        s["events"]["round"] == 3
        and s["events"]["link-up"] == 2
        and sum(s["events"].values()) == 12
    )
    assert s["rounds"] == {
        "completed": 3,
        "first": 1,
        "last": 3,
        "skipped": 0,
        "abandoned": 0,
        "resumed": 0,
    }
    assert s["links"] == {"up": 2, "down": 1, "closed": 0, "peers": ["node-b", "node-c"]}
    assert s["refused"] == {"total": 1, "by_code": {"not-member": 1}}
    assert s["dropouts"] == {"declared": 1, "peers": ["node-c"]}
    assert s["errors"]["total"] == 1 and s["errors"]["peer_protocol"] == 1
    assert s["starts"] == s["stops"] == 1 and s["last_event"] == "stop"


# -- each kind of damage --------------------------------------------------------------------


def _edit_field(lines: Lines) -> Lines:
    lines[3] = lines[3].replace(b'"code":"not-member"', b'"code":"member"')
    return lines


def _remove_middle(lines: Lines) -> Lines:
    del lines[5]  # line 6: round 2
    return lines


def _remove_first(lines: Lines) -> Lines:
    return lines[1:]


def _swap(lines: Lines) -> Lines:
    lines[4], lines[5] = lines[5], lines[4]
    return lines


def _swap_far(lines: Lines) -> Lines:
    lines[1], lines[8] = lines[8], lines[1]
    return lines


def _forge(lines: Lines) -> Lines:
    """A round that never happened, chained to line 6 as the writer would have done."""
    entry = {"seq": 6, "time": "2025-01-01T12:00:05+00:00", "event": "round", "round": 7}
    entry["prev"] = line_hash(lines[5])
    lines.insert(6, json.dumps(entry, separators=(",", ":")).encode())
    return lines


def _malform(lines: Lines) -> Lines:
    lines[6] = lines[6][:-10]  # a cut in the middle of line 7
    return lines


def _duplicate(lines: Lines) -> Lines:
    lines.insert(4, lines[3])  # the refusal twice
    return lines


DAMAGE: dict[str, tuple[Callable[[Lines], Lines], set[tuple[int, str]]]] = {
    "edited field": (_edit_field, {(4, "edited")}),
    "removed middle line": (_remove_middle, {(6, "removed")}),
    "removed first line": (_remove_first, {(1, "removed")}),
    "swapped lines": (_swap, {(5, "reordered"), (6, "reordered")}),
    "swapped far apart": (_swap_far, {(2, "reordered"), (9, "reordered")}),
    "inserted forged line": (_forge, {(7, "inserted")}),
    "malformed line": (_malform, {(7, "malformed")}),
    "duplicated line": (_duplicate, {(5, "inserted")}),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damage_exits_1_naming_the_line_and_kind(
    log: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    damage, expected = DAMAGE[name]
    _save(log, damage(_lines(log)))
    code, report = _verify_json(log, capsys)
    assert code == 1 and report["intact"] is False
    assert _found(report) == expected


def test_the_text_output_names_the_damaged_line(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _save(log, _edit_field(_lines(log)))
    assert main(["audit", "verify", str(log)]) == 1
    out = capsys.readouterr().out
    assert "NOT INTACT (12 entries, 12 lines, 1 problem(s))" in out
    assert "  line 4: edited: changed after it was written (line 5 recorded another hash)" in out
    assert "node: node-a" in out  # the summary is still printed


def test_a_removed_run_of_lines_says_how_many(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _lines(log)
    _save(log, lines[:2] + lines[5:])
    code, report = _verify_json(log, capsys)
    assert code == 1 and _found(report) == {(3, "removed")}
    assert "3 line(s) missing just before this line (seq 2..4)" in report["problems"][0]["detail"]


def test_a_moved_block_is_named_once(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _lines(log)
    _save(log, lines[:1] + lines[4:10] + lines[1:4] + lines[10:])  # lines 2..4 moved down
    code, report = _verify_json(log, capsys)
    assert code == 1 and _found(report) == {(8, "reordered")}
    assert report["problems"][0]["detail"].startswith("lines 8..10 out of order")


def test_a_torn_last_line_is_reported(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = log.read_bytes()
    log.write_bytes(data[:-15])  # the stop entry cut short, no final newline
    code, report = _verify_json(log, capsys)
    assert code == 1 and _found(report) == {(12, "torn")}


# -- the end of the log: only an anchor shows what was cut off ------------------------------


def test_a_cut_tail_passes_the_chain_but_not_an_anchor(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _lines(log)
    head = line_hash(lines[-1])
    _save(log, lines[:-2])
    code, report = _verify_json(log, capsys)
    assert code == 0  # the chain alone cannot tell: documented
    assert any("does not end with a stop entry" in note for note in report["notes"])
    code, report = _verify_json(log, capsys, "--expect-head", head)
    assert code == 1 and _found(report) == {(10, "head-missing")}


def test_the_writer_knows_its_head(log: Path) -> None:
    with AuditLog(log) as audit:
        assert audit.head == line_hash(_lines(log)[-1])
        audit.record("start", node="node-a")
        assert audit.head == line_hash(_lines(log)[-1])


def test_an_anchor_accepts_lines_written_since(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = line_hash(_lines(log)[-1])
    with AuditLog(log) as audit:
        audit.record("start", node="node-a")
    code, report = _verify_json(log, capsys, "--expect-head", head.upper())
    assert code == 0 and report["head_line"] == 12
    assert "1 line(s) written after the expected head" in report["notes"]


def test_a_changed_last_line_fails_against_its_anchor(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _lines(log)
    head = line_hash(lines[-1])
    lines[-1] = lines[-1].replace(b"requested", b"crashed")
    _save(log, lines)
    code, report = _verify_json(log, capsys, "--expect-head", head)
    assert code == 1 and _found(report) == {(12, "head-missing")}


# -- bad input ------------------------------------------------------------------------------


def test_a_missing_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(tmp_path / "nope.jsonl")]) == 2
    assert "cannot read the audit log" in capsys.readouterr().err


def test_a_bad_head_hash_is_refused(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "verify", str(log), "--expect-head", "abc"])
    assert exit_info.value.code == 2
    assert "expected 64 hex digits" in capsys.readouterr().err


def test_an_empty_log_is_intact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    code, report = _verify_json(path, capsys)
    assert code == 0 and report["entries"] == 0 and report["summary"]["nodes"] == []


# -- the ordering maths ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranks", "weights", "moved"),
    [
        ([0, 1, 2], [1, 1, 1], set()),
        ([0, 2, 1, 3], [1, 1, 1, 1], {1, 2}),  # two neighbours swapped: either moved
        ([0, 5, 2, 1, 6], [2, 1, 3, 1, 2], {1, 3}),  # two runs swapped over a heavy one
        ([3, 0], [5, 1], {1}),  # the light run moved, not the heavy one
        ([], [], set()),
    ],
)
def test_moved_runs(ranks: list[int], weights: list[int], moved: set[int]) -> None:
    assert moved_runs(ranks, weights) == moved
