"""``p2pfl audit``: check a node's hash-chained audit log and summarise the run it records.

``p2pfl audit verify FILE`` exits 0 when the chain is intact and 1 when it is not,
naming each damaged line and the kind of damage; either way it prints what the
log says about the run. What the chain can and cannot reveal is written in
``p2pfl.node.audit``: in short, lines cut off the end show only against a head
hash noted earlier (``--expect-head``), which the summary prints for next time.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2pfl.errors import P2PFLError

_HASH = re.compile(r"[0-9a-f]{64}")

_EPILOG = """\
exit status: 0 intact, 1 damaged (each damaged line is named), 2 unreadable file.
Lines removed from the end, or a changed last line, leave a valid chain: keep the
printed head hash somewhere the node cannot write, and pass it later with
--expect-head to check that the log still holds that line."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("audit", help="check a node's audit log")
    sub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "verify",
        help="check the hash chain of an audit log and summarise the run it records",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", help="the audit log (audit.jsonl in the node's data_dir)")
    check.add_argument(
        "--expect-head",
        metavar="HASH",
        type=_head_hash,
        help="a head hash printed by an earlier verify: the log must still hold that line",
    )
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=_verify)


def _head_hash(text: str) -> str:
    value = text.strip().lower()
    if not _HASH.fullmatch(value):
        raise argparse.ArgumentTypeError(f"expected 64 hex digits (a SHA-256), got {text!r}")
    return value


def _verify(args: argparse.Namespace) -> int:
    from p2pfl.node.audit import entries_in, verify_data

    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise P2PFLError(f"cannot read the audit log {args.file}: {exc.strerror}") from None
    result = verify_data(data, expect_head=args.expect_head)
    report = {
        "file": str(args.file),
        "intact": result.ok,
        "lines": result.lines,
        "entries": result.entries,
        "head": result.head,
        "head_line": result.head_line,
        "problems": [
            {"line": p.line, "kind": str(p.kind), "detail": p.detail} for p in result.problems
        ],
        "summary": summarize(entries_in(data)),
    }
    report["notes"] = _notes(report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(_text(report)))
    return 0 if result.ok else 1


# -- summary --------------------------------------------------------------------------------


def summarize(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a node's log says about its run, from the event names the node records.

    Round numbers are as recorded (the node counts rounds from 0). Entries
    that fail the chain check are summarised too: read the summary of a
    damaged log with that in mind.
    """
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_kind.setdefault(str(entry.get("event")), []).append(entry)
    starts = by_kind.get("start", [])
    times = [e["time"] for e in entries if isinstance(e.get("time"), str)]
    return {
        "first_time": times[0] if times else None,
        "last_time": times[-1] if times else None,
        "nodes": _distinct(e.get("node") for e in starts),
        "federations": _distinct(e.get("federation") for e in starts),
        "events": dict(sorted(Counter(str(e.get("event")) for e in entries).items())),
        "starts": len(starts),
        "stops": len(by_kind.get("stop", [])),
        "last_event": entries[-1].get("event") if entries else None,
        "rounds": _rounds(by_kind),
        "links": _links(by_kind),
        "refused": _refused(by_kind.get("auth-refused", [])),
        "dropouts": _dropouts(by_kind.get("dropouts-declared", [])),
        "stragglers": len(by_kind.get("straggler", [])),
        "errors": _errors(by_kind),
    }


def _distinct(values: Any) -> list[Any]:
    """Distinct non-None values in first-seen order (JSON-friendly)."""
    seen: list[Any] = []
    for value in values:
        if value is not None and value not in seen:
            seen.append(value)
    return seen


def _rounds(by_kind: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    done = sorted({e["round"] for e in by_kind.get("round", []) if isinstance(e.get("round"), int)})
    return {
        "completed": len(done),
        "first": done[0] if done else None,
        "last": done[-1] if done else None,
        "skipped": len(by_kind.get("rounds-skipped", [])),
        "abandoned": len(by_kind.get("round-abandoned", [])),
        "resumed": len(by_kind.get("resumed", [])),
    }


def _links(by_kind: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    ups = by_kind.get("link-up", [])
    return {
        "up": len(ups),
        "down": len(by_kind.get("link-down", [])),
        "closed": len(by_kind.get("link-closed", [])),
        "peers": sorted(_distinct(str(e.get("peer")) for e in ups)),
    }


def _refused(refusals: list[dict[str, Any]]) -> dict[str, Any]:
    codes = Counter(str(e.get("code")) for e in refusals)
    return {"total": len(refusals), "by_code": dict(sorted(codes.items()))}


def _dropouts(declared: list[dict[str, Any]]) -> dict[str, Any]:
    peers = [p for e in declared if isinstance(e.get("dropped"), list) for p in e["dropped"]]
    return {"declared": len(declared), "peers": sorted(_distinct(str(p) for p in peers))}


def _errors(by_kind: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    errors = by_kind.get("error", [])
    return {
        "total": len(errors),
        "peer_protocol": len(by_kind.get("peer-protocol-error", [])),
        "last": errors[-1].get("error") if errors else None,
    }


# -- output ---------------------------------------------------------------------------------


def _notes(report: dict[str, Any]) -> list[str]:
    """Things worth knowing that are not damage to the chain."""
    notes = []
    summary = report["summary"]
    if summary["last_event"] not in (None, "stop"):
        notes.append(
            "the log does not end with a stop entry: the node is running, crashed, or lines "
            "were cut off the end (only --expect-head can tell)"
        )
    torn = summary["events"].get("audit-torn-tail", 0)
    if torn:
        notes.append(f"{torn} line(s) cut short by a crash, closed when the node reopened the log")
    head_line = report["head_line"]
    if head_line is not None and head_line < report["lines"]:
        notes.append(f"{report['lines'] - head_line} line(s) written after the expected head")
    return notes


def _text(report: dict[str, Any]) -> list[str]:
    counts = f"{report['entries']} entries, {report['lines']} lines"
    if report["intact"]:
        out = [f"{report['file']}: intact ({counts})"]
    else:
        out = [f"{report['file']}: NOT INTACT ({counts}, {len(report['problems'])} problem(s))"]
        out += [f"  line {p['line']}: {p['kind']}: {p['detail']}" for p in report["problems"]]
    out.append(f"head: {report['head']} (keep it elsewhere; check later with --expect-head)")
    out += _summary_text(report["summary"])
    out += [f"note: {note}" for note in report["notes"]]
    return out


def _summary_text(s: dict[str, Any]) -> list[str]:
    rounds, links, refused, dropouts, errors = (
        s[k] for k in ("rounds", "links", "refused", "dropouts", "errors")
    )
    span = f" (rounds {rounds['first']}..{rounds['last']})" if rounds["completed"] else ""
    codes = ", ".join(f"{code}: {n}" for code, n in refused["by_code"].items())
    lines = [
        f"node: {', '.join(map(str, s['nodes'])) or 'not recorded'}",
        f"time: {s['first_time'] or '-'} .. {s['last_time'] or '-'}",
        f"starts: {s['starts']}, stops: {s['stops']}",
        f"rounds completed: {rounds['completed']}{span}, skipped {rounds['skipped']}, "
        f"abandoned {rounds['abandoned']}, resumed {rounds['resumed']} time(s)",
        f"links: {links['up']} up, {links['down']} down, {links['closed']} closed; "
        f"peers: {', '.join(links['peers']) or '-'}",
        f"refused handshakes: {refused['total']}" + (f" ({codes})" if codes else ""),
        f"dropouts declared: {dropouts['declared']}; peers: {', '.join(dropouts['peers']) or '-'}",
        f"stragglers: {s['stragglers']}",
        f"errors: {errors['total']}, peer protocol errors: {errors['peer_protocol']}"
        + (f"; last: {errors['last']}" if errors["last"] else ""),
        "events: " + (", ".join(f"{k} {n}" for k, n in s["events"].items()) or "-"),
    ]
    return lines
