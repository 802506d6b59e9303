"""``p2pfl federation status``: where each member of a federation stands, from its ledger alone.

One row per member the ledger knows (revoked ones too), in node id order:

- ``epoch``: the number of the epoch (``protocols.membership.ledger_timeline``)
  of the round the member is in (one past its last completed one; a joiner's
  first round until it completes one), or of the last epoch it was part of;
  ``None`` for a member of no epoch yet;
- ``last_round``: its last completed round (its ``progress`` record; ``None``
  without one: it completed none);
- ``state``, the first that fits: ``revoked``; ``left`` (it signed a leave);
  ``not yet approved`` (no approval of the current plan); ``joining`` (approved,
  its join still waits for acknowledgements); ``absent`` (the round it is in is
  more than ``absent_after`` rounds behind the one after the highest any member
  completed); ``active``.

``ABSENT_AFTER`` is the default: sync rounds keep neighbours within one round of
each other, so a member that is still taking part is at most as many rounds
behind the highest as the graph's diameter, and 5 covers the diameter of the
federations this project ships plans for (rings of up to ten members included).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from p2pfl.errors import P2PFLError

if TYPE_CHECKING:  # the ledger (pycrdt) loads in the handler, not for --help
    from protocols.ledger import Ledger
    from protocols.membership import Timeline

from protocols.membership import ABSENT_AFTER

SHORT_ID = 10
"""Characters of a node id the table shows (``--json`` has them whole)."""


def register(sub: Any) -> None:
    status = sub.add_parser(
        "status", help="each member's epoch, last round and state (active, absent, left, ...)"
    )
    status.add_argument("ledger", metavar="LEDGER", help="ledger file")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--absent-after",
        type=int,
        default=ABSENT_AFTER,
        metavar="K",
        help=f"absent: more than K rounds behind the highest (default {ABSENT_AFTER})",
    )
    status.set_defaults(handler=_status)


def federation_status(ledger: Ledger, absent_after: int = ABSENT_AFTER) -> dict[str, Any]:
    """What ``status --json`` prints."""
    from protocols.membership import ledger_timeline

    if absent_after < 0:
        raise P2PFLError(f"--absent-after is a number of rounds >= 0, not {absent_after}")
    members = ledger.members(include_revoked=True)
    order = sorted(members)
    revoked, left, approvers = set(ledger.revoked()), ledger.left(), ledger.approvers()
    progress = ledger.progress()
    timeline, pending = ledger_timeline(order, approvers, left, revoked, ledger.acks())
    highest = max(progress.values(), default=0)
    rows = []
    for node in order:
        done, first = progress.get(node), timeline.first_round(node)
        at = max(done or 0, (first or 1) - 1)  # a joiner begins in its first round
        if node in revoked:
            state = "revoked"
        elif node in left:
            state = "left"
        elif node not in approvers:
            state = "not yet approved"
        elif first is None:
            state = "joining"
        elif highest - at > absent_after:
            state = "absent"
        else:
            state = "active"
        rows.append(
            {
                "node_id": node,
                "institution": members[node].institution,
                "epoch": _epoch_of(timeline, node, at + 1),
                "last_round": done,
                "state": state,
                "left_after": left.get(node),
            }
        )
    return {
        "federation_id": ledger.federation_id,
        "name": ledger.name,
        "highest_round": highest,
        "absent_after": absent_after,
        "epochs": [
            {"number": e.number, "start": e.start, "members": list(e.members)}
            for e in timeline.epochs
        ],
        "pending": pending,
        "members": rows,
    }


def _epoch_of(timeline: Timeline, node: str, round_: int) -> int | None:
    """The latest epoch up to ``round_`` whose roster holds ``node``."""
    number = None
    for epoch in timeline.epochs:
        if epoch.start > round_:
            break
        if node in epoch.members:
            number = epoch.number
    return number


def _status(args: argparse.Namespace) -> int:
    from p2pfl.ledger_file import load_ledger

    info = federation_status(load_ledger(args.ledger), args.absent_after)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"federation {info['name']!r} ({info['federation_id']})")
    print(
        f"highest round completed: {info['highest_round']}; absent: more than "
        f"{info['absent_after']} rounds behind it"
    )
    for epoch in info["epochs"]:
        count = len(epoch["members"])
        print(f"epoch {epoch['number']} from round {epoch['start']}: {count} members")
    rows = [("node", "institution", "epoch", "last round", "state")]
    for m in info["members"]:
        state = m["state"]
        if m["left_after"] is not None and state == "left":
            state = f"left (after round {m['left_after']})"
        rows.append(
            (
                m["node_id"][:SHORT_ID],
                m["institution"] or "-",
                "-" if m["epoch"] is None else str(m["epoch"]),
                "-" if m["last_round"] is None else str(m["last_round"]),
                state,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for *cells, last in rows:
        padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=True)]
        print("  ".join([*padded, last]))
    if info["pending"]:
        print("waiting for acknowledgements: " + ", ".join(info["pending"]))
    return 0
