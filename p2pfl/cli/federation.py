"""``p2pfl federation``: found a federation, invite, join, approve the plan, revoke, leave,
show, status (``p2pfl.cli.federation_status``).

Every command that changes a ledger loads it, signs one record with the node's
key and writes the file back atomically (``p2pfl.ledger_file``). An invitation
is JSON: the federation id and a snapshot of the inviter's ledger, which
already holds the newcomer's signed member record.

``show`` lists who has not yet approved the current plan hash
(``awaiting_approval``): a node trains only once every valid member of its
roster has approved that very hash, so this list is what holds a federation up.
An approval of an earlier plan does not count for the current one.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import json
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from p2pfl.atomic import atomic_write_bytes
from p2pfl.cli.federation_status import register as register_status
from p2pfl.cli.keys import add_passphrase_argument, load_key_argument
from p2pfl.errors import ConfigError, KeyFileError, LedgerFileError, P2PFLError

if TYPE_CHECKING:  # the ledger (pycrdt) and key libraries load in the handlers, not for --help
    from p2pfl.identity import Identity
    from protocols.ledger import Ledger

INVITATION_FORMAT = "p2pfl-invitation/1"
MAX_INVITATION = 256 << 20


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("federation", help="create, join and inspect a federation")
    sub = parser.add_subparsers(dest="federation_command", metavar="ACTION", required=True)

    create = _keyed(sub, "create", "found a federation and publish its training plan")
    create.add_argument("--name", required=True, help="the federation's name")
    create.add_argument("--plan", required=True, metavar="PLAN.toml", help="training plan")
    create.add_argument("--out", required=True, metavar="LEDGER", help="ledger file to create")
    _member_details(create, "this node's address (wss://HOST:PORT)", required=False)
    create.set_defaults(handler=_create)

    invite = _keyed(sub, "invite", "admit a node and write its invitation")
    invite.add_argument("--ledger", required=True, help="ledger file (updated)")
    invite.add_argument(
        "--member", required=True, metavar="PUBLIC_KEYS.json", help="`p2pfl keys show --json`"
    )
    where = invite.add_mutually_exclusive_group(required=True)
    where.add_argument("--address", default="", help="the new member's address (wss://HOST:PORT)")
    where.add_argument(
        "--unreachable",
        action="store_true",
        help="the new member accepts no inbound connection (recorded without an address: "
        "it dials out, and a reachable member relays its links to other such sites)",
    )
    invite.add_argument("--institution", default="", help="a name people recognise")
    invite.add_argument("--admin", action="store_true", help="let it admit and revoke (founder)")
    invite.add_argument("--out", metavar="FILE", help="write the invitation here, not to stdout")
    invite.set_defaults(handler=_invite)

    join = _keyed(sub, "join", "start this node's ledger from an invitation")
    join.add_argument("--invitation", required=True, metavar="FILE", help="invitation file")
    join.add_argument("--out", required=True, metavar="LEDGER", help="ledger file to create")
    join.set_defaults(handler=_join)

    approve = _keyed(sub, "approve", "sign the hash of the ledger's current training plan")
    approve.add_argument("--ledger", required=True, help="ledger file (updated)")
    approve.set_defaults(handler=_approve)

    revoke = _keyed(sub, "revoke", "revoke a member (founder or admin)")
    revoke.add_argument("--ledger", required=True, help="ledger file (updated)")
    revoke.add_argument("--reason", default="", help="recorded with the revocation")
    revoke.add_argument("node_id", metavar="NODE_ID", help="the member to revoke")
    revoke.set_defaults(handler=_revoke)

    leave = _keyed(sub, "leave", "sign this member's leave: it takes part up to a round")
    leave.add_argument("--ledger", required=True, help="ledger file (updated)")
    leave.add_argument(
        "--after-round", required=True, type=int, metavar="N", help="its last round (from 1)"
    )
    leave.set_defaults(handler=_leave)

    show = sub.add_parser("show", help="members, plan, approvals, progress, rejected records")
    show.add_argument("ledger", metavar="LEDGER", help="ledger file")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_show)
    register_status(sub)


def _keyed(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument("--key", required=True, metavar="K", help="this node's key file")
    add_passphrase_argument(parser, "passphrase of a sealed key file")
    return parser


def _member_details(parser: argparse.ArgumentParser, address_help: str, *, required: bool) -> None:
    parser.add_argument("--address", required=required, default="", help=address_help)
    parser.add_argument("--institution", default="", help="a name people recognise")


def check_address(address: str) -> str:
    """``wss://HOST:PORT`` (or ``ws://`` for tests on one machine)."""
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        port = None
        parts = urlsplit("")
    if parts.scheme not in ("wss", "ws") or not parts.hostname or port is None:
        raise ConfigError(f"address {address!r} is not of the form wss://HOST:PORT")
    return address


def read_plan(path: str) -> dict[str, Any]:
    """A training plan from TOML; dates are refused (the ledger stores plain data)."""
    try:
        with open(path, "rb") as handle:
            plan = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such plan file") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a TOML plan: {exc}") from None
    _refuse_dates(plan, path, "")
    if not plan:
        raise ConfigError(f"{path}: the plan is empty")
    return plan


def _refuse_dates(value: object, path: str, where: str) -> None:
    if isinstance(value, datetime.date | datetime.time):
        raise ConfigError(f"{path}: {where or 'plan'}: dates and times cannot go in a plan")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_dates(item, path, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_dates(item, path, f"{where}[{index}]")


def _create(args: argparse.Namespace) -> int:
    from p2pfl.ledger_file import save_ledger
    from p2pfl.spec import plan_from_table
    from protocols.ledger import Ledger

    identity = load_key_argument(args)
    plan = read_plan(args.plan)
    plan_from_table(plan, args.plan)  # refuse a plan no daemon could run, before anyone signs
    address = check_address(args.address) if args.address else ""
    ledger = Ledger.found(
        identity.signing_key,
        name=args.name,
        nonce=os.urandom(16),
        address=address,
        institution=args.institution,
    )
    ledger.set_plan(identity.signing_key, plan, clock=ledger.next_clock())
    save_ledger(ledger, args.out, overwrite=False)
    print(f"federation {args.name!r}: id {ledger.federation_id}")
    print(f"founder {identity.node_id}; plan hash {_hex(ledger.plan_hash())}")
    print(f"wrote {args.out}")
    return 0


def _require_admin(ledger: Ledger, identity: Identity, action: str) -> None:
    member = ledger.members().get(identity.node_id)
    if member is None or not member.admin:
        raise P2PFLError(
            f"node {identity.node_id} is not the founder or an admin of this federation; "
            f"it cannot {action}"
        )


def _invite(args: argparse.Namespace) -> int:
    from p2pfl.ledger_file import load_ledger, save_record

    identity = load_key_argument(args)
    ledger = load_ledger(args.ledger)
    newcomer = _read_public_keys(args.member)
    _require_admin(ledger, identity, "invite")
    if args.admin and identity.node_id != ledger.founder:
        raise P2PFLError("only the founder can make admins")
    if newcomer["node_id"] in ledger.revoked():
        raise P2PFLError(f"node {newcomer['node_id']} was revoked; it cannot be invited again")
    update = ledger.admit(
        identity.signing_key,
        bytes.fromhex(newcomer["verify_key"]),
        clock=ledger.next_clock(),
        address="" if args.unreachable else check_address(args.address),
        institution=args.institution,
        admin=args.admin,
    )
    save_record(ledger, args.ledger, update)
    invitation = {
        "format": INVITATION_FORMAT,
        "federation_id": ledger.federation_id,
        "federation": ledger.name,
        "inviter": identity.node_id,
        "member": newcomer["node_id"],
        "ledger": base64.b64encode(ledger.encode_state()).decode("ascii"),
    }
    text = json.dumps(invitation, indent=2) + "\n"
    if args.out:
        atomic_write_bytes(args.out, text.encode(), mode=0o600)
        print(f"admitted {newcomer['node_id']}; invitation written to {args.out}")
    else:
        print(text, end="")
    return 0


def _read_public_keys(path: str) -> dict[str, str]:
    from p2pfl.identity import check_public_keys

    try:
        document = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read public keys: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise KeyFileError(f"{path}: not JSON (expected `p2pfl keys show --json`)") from None
    if not isinstance(document, dict) or set(document) != {"node_id", "verify_key", "box_key"}:
        raise KeyFileError(f"{path}: expected exactly node_id, verify_key and box_key")
    try:
        return check_public_keys(document)
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def _join(args: argparse.Namespace) -> int:
    from p2pfl.ledger_file import ledger_from_updates, save_ledger

    identity = load_key_argument(args)
    federation_id, member, snapshot = _read_invitation(args.invitation)
    if member != identity.node_id:
        raise P2PFLError(
            f"{args.invitation}: the invitation is for node {member}, not {identity.node_id}"
        )
    ledger = ledger_from_updates(federation_id, [snapshot], args.invitation)
    if identity.node_id not in ledger.members():
        raise P2PFLError(
            f"{args.invitation}: the invitation does not admit node {identity.node_id} "
            "(or its member record was rejected)"
        )
    save_ledger(ledger, args.out, overwrite=False)
    print(f"joined federation {ledger.name!r} ({federation_id}) as {identity.node_id}")
    print(f"wrote {args.out}")
    return 0


def _read_invitation(path: str) -> tuple[str, str, bytes]:
    try:
        raw = Path(path).read_bytes()[:MAX_INVITATION]
        document = json.loads(raw)
    except OSError as exc:
        raise LedgerFileError(f"{path}: cannot read the invitation: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise LedgerFileError(f"{path}: not an invitation (not JSON)") from None
    if not isinstance(document, dict) or document.get("format") != INVITATION_FORMAT:
        raise LedgerFileError(f"{path}: not a p2pfl invitation")
    federation_id, member, snapshot = (
        document.get(name) for name in ("federation_id", "member", "ledger")
    )
    if not (isinstance(federation_id, str) and isinstance(member, str)):
        raise LedgerFileError(f"{path}: the invitation lacks its federation id or member")
    if not isinstance(snapshot, str):
        raise LedgerFileError(f"{path}: the invitation lacks its ledger")
    try:
        return federation_id, member, base64.b64decode(snapshot, validate=True)
    except binascii.Error:
        raise LedgerFileError(f"{path}: the invitation's ledger is not base64") from None


def _approve(args: argparse.Namespace) -> int:
    from p2pfl.ledger_file import load_ledger, save_record
    from p2pfl.node.preflight import ledger_plan
    from p2pfl.spec import PlanError

    identity = load_key_argument(args)
    ledger = load_ledger(args.ledger)
    plan_hash = ledger.plan_hash()
    if plan_hash is None:
        raise P2PFLError(f"{args.ledger}: the ledger holds no valid plan to approve")
    if identity.node_id not in ledger.members():
        raise P2PFLError(f"node {identity.node_id} is not a member of this federation")
    try:
        ledger_plan(ledger)  # the check `create` ran: never sign a plan no daemon could run
    except PlanError as exc:
        raise PlanError(f"{args.ledger}: not approved: {exc}") from None
    update = ledger.approve(identity.signing_key, plan_hash, clock=ledger.next_clock())
    save_record(ledger, args.ledger, update)
    print(f"{identity.node_id} approved plan {plan_hash.hex()}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from p2pfl.ledger_file import load_ledger, save_record

    identity = load_key_argument(args)
    ledger = load_ledger(args.ledger)
    _require_admin(ledger, identity, "revoke")
    target = ledger.members(include_revoked=True).get(args.node_id)
    if target is None:
        raise P2PFLError(f"{args.node_id} is not a member of this federation")
    if target.revoked:
        print(f"{args.node_id} is already revoked")
        return 0
    if args.node_id == ledger.founder or (target.admin and identity.node_id != ledger.founder):
        raise P2PFLError(f"{identity.node_id} may not revoke {args.node_id}")
    update = ledger.revoke(
        identity.signing_key, args.node_id, clock=ledger.next_clock(), reason=args.reason
    )
    save_record(ledger, args.ledger, update)
    print(f"revoked {args.node_id}")
    return 0


def _leave(args: argparse.Namespace) -> int:
    from p2pfl.ledger_file import load_ledger, save_record

    identity = load_key_argument(args)
    ledger = load_ledger(args.ledger)
    if args.after_round < 0:
        raise P2PFLError(f"--after-round is a round number >= 0, not {args.after_round}")
    if identity.node_id not in ledger.members():
        raise P2PFLError(f"node {identity.node_id} is not a member of this federation")
    known = ledger.left().get(identity.node_id)
    if known is not None:
        raise P2PFLError(f"node {identity.node_id} already leaves after round {known}")
    update = ledger.leave(identity.signing_key, args.after_round, clock=ledger.next_clock())
    save_record(ledger, args.ledger, update)
    print(f"{identity.node_id} leaves after round {args.after_round}")
    return 0


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def summary(ledger: Ledger) -> dict[str, Any]:
    """What ``show --json`` prints."""
    approvers = ledger.approvers()
    plan_hash = ledger.plan_hash()
    waiting = [] if plan_hash is None else sorted(set(ledger.members()) - approvers)
    members = [
        {
            "node_id": m.node_id,
            "status": "revoked" if m.revoked else "valid",
            "admin": m.admin,
            "founder": m.node_id == ledger.founder,
            "address": m.address,
            "institution": m.institution,
            "inviter": m.inviter,
            "verify_key": m.verify_key.hex(),
            "box_key": m.box_key.hex(),
        }
        for m in sorted(ledger.members(include_revoked=True).values(), key=lambda m: m.node_id)
    ]
    return {
        "federation_id": ledger.federation_id,
        "name": ledger.name,
        "founder": ledger.founder,
        "members": members,
        "plan_hash": _hex(ledger.plan_hash()),
        "approved_by": sorted(approvers),
        "awaiting_approval": waiting,
        "progress": dict(sorted(ledger.progress().items())),  # rounds completed, from 1
        "rejected": ledger.rejected_count,
        "rejections": dict(sorted(ledger.rejections().items())),
    }


def _show(args: argparse.Namespace) -> int:
    from p2pfl.ledger_file import load_ledger

    info = summary(load_ledger(args.ledger))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"federation {info['name']!r} ({info['federation_id']})")
    print(f"members ({len(info['members'])}):")
    for m in info["members"]:
        role = "founder" if m["founder"] else "admin" if m["admin"] else "member"
        where = " ".join(x for x in (m["address"], m["institution"]) if x)
        print(f"  {m['node_id']}  {m['status']:<7}  {role:<7}  {where}  (by {m['inviter']})")
    valid = sum(1 for m in info["members"] if m["status"] == "valid")
    print(f"plan: {info['plan_hash'] or '(none)'}")
    print(f"  approved by {len(info['approved_by'])} of {valid} valid members")
    for node_id in info["approved_by"]:
        print(f"    {node_id}")
    waiting = info["awaiting_approval"]
    if waiting:
        print(f"  not yet approved by {len(waiting)} (no node trains until they do):")
        for node_id in waiting:
            print(f"    {node_id}")
    elif info["plan_hash"]:
        print("  approved by every valid member: nodes may train")
    print("progress (last round completed):" if info["progress"] else "progress: (none)")
    for node_id, completed in info["progress"].items():
        print(f"  {node_id}  round {completed}")
    reasons = ", ".join(f"{k} {v}" for k, v in info["rejections"].items())
    print(f"rejected records: {info['rejected']}" + (f" ({reasons})" if reasons else ""))
    return 0
