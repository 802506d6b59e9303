"""``p2pfl federation leave`` and ``p2pfl federation status``: a leave signed once, and
each member's epoch, last round and state read from the ledger alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from p2pfl.cli import main
from p2pfl.cli.federation_status import ABSENT_AFTER
from p2pfl.identity import Identity, save_identity
from p2pfl.ledger_file import inbox_of, load_ledger, save_ledger, take_inbox
from protocols.ledger import Ledger

NAMES = ("f", "a", "b", "c", "d")
ROW_KEYS = ["epoch", "institution", "last_round", "left_after", "node_id", "state"]
TOP_KEYS = [
    "absent_after",
    "epochs",
    "federation_id",
    "highest_round",
    "members",
    "name",
    "pending",
]


class Site:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.dir = tmp_path
        self.capsys = capsys
        self.ids = {n: Identity.from_seed(bytes([i + 1]) * 32) for i, n in enumerate(NAMES)}
        self.ids["x"] = Identity.from_seed(b"x" * 32)  # never invited
        for name, identity in self.ids.items():
            save_identity(identity, tmp_path / f"{name}.key")
        self.ledger = str(tmp_path / "ledger")

    def node(self, name: str) -> str:
        return self.ids[name].node_id

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err

    def leave(self, name: str, after: int) -> tuple[int, str, str]:
        key = str(self.dir / f"{name}.key")
        return self(
            "federation",
            "leave",
            "--key",
            key,
            "--ledger",
            self.ledger,
            "--after-round",
            str(after),
        )

    def status(self, *extra: str) -> dict[str, Any]:
        code, out, err = self("federation", "status", self.ledger, "--json", *extra)
        assert code == 0, err
        result: dict[str, Any] = json.loads(out)
        return result

    def states(self, *extra: str) -> dict[str, str]:
        return {m["node_id"]: m["state"] for m in self.status(*extra)["members"]}

    def write(self, edit: Any) -> None:
        """Load the ledger, let ``edit`` sign records into it, save it."""
        ledger = load_ledger(self.ledger)
        edit(ledger)
        save_ledger(ledger, self.ledger)

    def revoke(self, name: str) -> None:
        key = self.ids["f"].signing_key
        self.write(lambda ledger: ledger.revoke(key, self.node(name), clock=ledger.next_clock()))

    def ack(self, name: str, changes: dict[str, int]) -> None:
        key = self.ids[name].signing_key
        self.write(lambda ledger: ledger.ack(key, changes, clock=ledger.next_clock()))


@pytest.fixture
def site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Site:
    """Founder f and members a, b, c, d; all but d approved the plan; progress 10, 9, 3, 8."""
    s = Site(tmp_path, capsys)
    key = {n: s.ids[n].signing_key for n in NAMES}
    ledger = Ledger.found(key["f"], name="demo", nonce=b"n", institution="founders")
    for name in NAMES[1:]:
        verify_key = bytes(s.ids[name].verify_key)
        ledger.admit(key["f"], verify_key, clock=ledger.next_clock(), institution=f"site {name}")
    ledger.set_plan(key["f"], {"training": {"rounds": 20}}, clock=ledger.next_clock())
    plan_hash = ledger.plan_hash()
    assert plan_hash is not None
    for name, done in zip(("f", "a", "b", "c"), (10, 9, 3, 8), strict=True):
        ledger.approve(key[name], plan_hash, clock=ledger.next_clock())
        ledger.report_progress(key[name], done, clock=ledger.next_clock())
    save_ledger(ledger, s.ledger, overwrite=False)
    return s


def test_status_shows_each_members_round_and_state(site: Site) -> None:
    info = site.status()
    assert sorted(info) == TOP_KEYS and info["name"] == "demo"
    assert all(sorted(m) == ROW_KEYS for m in info["members"])
    assert [m["node_id"] for m in info["members"]] == sorted(site.node(n) for n in NAMES)
    rows = {m["node_id"]: m for m in info["members"]}
    assert rows[site.node("a")]["institution"] == "site a"
    assert [rows[site.node(n)]["last_round"] for n in NAMES] == [10, 9, 3, 8, None]
    assert info["highest_round"] == 10 and info["absent_after"] == ABSENT_AFTER == 5
    states = {n: rows[site.node(n)]["state"] for n in NAMES}
    assert states == {
        "f": "active",
        "a": "active",
        "b": "absent",  # 7 rounds behind the highest
        "c": "active",
        "d": "not yet approved",
    }
    assert info["epochs"] == [
        {"number": 0, "start": 0, "members": sorted(site.node(n) for n in "fabc")}
    ]
    assert [rows[site.node(n)]["epoch"] for n in NAMES] == [0, 0, 0, 0, None]
    assert info["pending"] == []
    assert site.states("--absent-after", "7")[site.node("b")] == "active"
    assert site.states("--absent-after", "6")[site.node("b")] == "absent"


def test_status_as_a_table(site: Site) -> None:
    code, out, err = site("federation", "status", site.ledger)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("federation 'demo'")
    assert "highest round completed: 10" in lines[1]
    header = next(line for line in lines if line.startswith("node"))
    assert header.split() == ["node", "institution", "epoch", "last", "round", "state"]
    row = next(line for line in lines if line.startswith(site.node("b")[:10] + " "))
    assert site.node("b") not in out  # short ids
    assert row.split()[-1] == "absent" and "site b" in row
    row = next(line for line in lines if line.startswith(site.node("d")[:10]))
    assert row.endswith("not yet approved") and " - " in row


def test_leave_once_then_status_says_left_and_the_epoch_follows(site: Site) -> None:
    code, out, err = site.leave("c", 9)
    assert code == 0, err
    assert site.node("c") in out
    rows = {m["node_id"]: m for m in site.status()["members"]}
    assert rows[site.node("c")]["state"] == "left" and rows[site.node("c")]["left_after"] == 9
    info = site.status()
    assert info["pending"] == [f"leave:{site.node('c')}"]  # nobody acknowledged it yet
    code, _, err = site.leave("c", 12)
    assert code == 2 and "already leaves after round 9" in err
    code, _, err = site.leave("c", 9)
    assert code == 2 and "already leaves" in err

    for name, round_ in (("f", 10), ("a", 10), ("b", 4)):
        site.ack(name, {f"leave:{site.node('c')}": round_})
    info = site.status()
    assert info["pending"] == []
    assert [(e["number"], e["start"]) for e in info["epochs"]] == [(0, 0), (1, 11)]
    assert info["epochs"][1]["members"] == sorted(site.node(n) for n in "fab")
    rows = {m["node_id"]: m for m in info["members"]}
    assert rows[site.node("c")]["epoch"] == 0  # its last epoch
    assert rows[site.node("f")]["epoch"] == 1  # in round 11, the first of epoch 1
    assert rows[site.node("a")]["epoch"] == 0  # in round 10
    code, out, _ = site("federation", "status", site.ledger)
    assert "left (after round 9)" in out and "epoch 1 from round 11: 3 members" in out


def test_leave_refuses_a_negative_round_and_non_members(site: Site) -> None:
    code, _, err = site.leave("a", -1)
    assert code == 2 and "--after-round" in err
    code, _, err = site.leave("x", 3)
    assert code == 2 and "not a member" in err
    site.revoke("a")
    code, _, err = site.leave("a", 3)
    assert code == 2 and "not a member" in err
    assert site.status()["members"] and load_ledger(site.ledger).left() == {}


def test_a_revoked_member_shows_revoked_and_a_bad_threshold_is_refused(site: Site) -> None:
    site.revoke("b")
    info = site.status()
    rows = {m["node_id"]: m for m in info["members"]}
    assert rows[site.node("b")]["state"] == "revoked"
    assert rows[site.node("b")]["last_round"] is None  # a revoked member's records are void
    assert info["pending"] == [f"revoke:{site.node('b')}"]
    code, _, err = site("federation", "status", site.ledger, "--absent-after", "-1")
    assert code == 2 and "--absent-after" in err


def test_a_joiner_waits_for_every_acknowledgement(site: Site) -> None:
    def join(ledger: Ledger) -> None:
        plan_hash = ledger.plan_hash()
        assert plan_hash is not None
        ledger.approve(site.ids["d"].signing_key, plan_hash, clock=ledger.next_clock())
        for name in ("f", "a", "b"):
            changes = {f"join:{site.node('d')}": 10}
            ledger.ack(site.ids[name].signing_key, changes, clock=ledger.next_clock())

    site.write(join)
    info = site.status()
    assert site.states()[site.node("d")] == "joining"
    assert info["pending"] == [f"join:{site.node('d')}"]
    site.ack("c", {f"join:{site.node('d')}": 9})
    info = site.status()
    assert info["pending"] == []
    assert site.states()[site.node("d")] == "active"  # it begins in round 11, its first
    assert [(e["number"], e["start"]) for e in info["epochs"]] == [(0, 0), (1, 11)]
    assert {m["node_id"]: m["epoch"] for m in info["members"]}[site.node("d")] == 1


def test_a_leave_reaches_a_running_node_through_its_inbox(site: Site) -> None:
    inbox_of(site.ledger).mkdir()  # as a running node makes it
    code, _, err = site.leave("a", 4)
    assert code == 0, err
    ((_, posted),) = take_inbox(site.ledger, load_ledger(site.ledger).federation_id)
    assert isinstance(posted, list)
    fresh = Ledger.from_updates(load_ledger(site.ledger).federation_id, posted)
    assert fresh.entries("left") == load_ledger(site.ledger).entries("left")
