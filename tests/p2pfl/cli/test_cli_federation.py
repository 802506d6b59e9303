"""``p2pfl federation``: the whole life of a small federation, tampering, and bad input.

Also the ledger file (``p2pfl.ledger_file``): checksummed, atomic, previous version kept.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map

from p2pfl.cli import main
from p2pfl.errors import LedgerFileError
from p2pfl.identity import load_identity
from p2pfl.ledger_file import decode_ledger_file, encode_ledger_file, load_ledger
from protocols.records import seal

PLAN = """\
[data]
input_shape = [4]
num_classes = 2
[model]
name = "mlp"
[training]
rounds = 20
lr = 0.05
"""


class Cli:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.dir = tmp_path
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *argv: str) -> str:
        code, out, err = self(*argv)
        assert code == 0, err
        return out

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def new_key(self, name: str, passphrase: str | None = None) -> str:
        extra = []
        if passphrase is not None:
            (self.dir / f"{name}.pass").write_text(passphrase + "\n")
            extra = ["--passphrase-file", self.path(f"{name}.pass")]
        self.ok("keys", "init", "--out", self.path(f"{name}.key"), *extra)
        (self.dir / f"{name}.json").write_text(
            self.ok("keys", "show", self.path(f"{name}.key"), "--json")
        )
        return str(json.loads((self.dir / f"{name}.json").read_text())["node_id"])

    def show(self, ledger: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(
            self.ok("federation", "show", self.path(ledger), "--json")
        )
        return result


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path, capsys)


@pytest.fixture
def founded(cli: Cli) -> dict[str, str]:
    """A federation: founder f, member a (invited), member b (sealed key, joined)."""
    ids = {"f": cli.new_key("f"), "a": cli.new_key("a"), "b": cli.new_key("b", "b's secret")}
    (cli.dir / "plan.toml").write_text(PLAN)
    cli.ok(
        "federation",
        "create",
        "--key",
        cli.path("f.key"),
        "--name",
        "demo",
        "--plan",
        cli.path("plan.toml"),
        "--out",
        cli.path("f.ledger"),
        "--address",
        "wss://f.example:8443",
    )
    for name in ("a", "b"):
        cli.ok(
            "federation",
            "invite",
            "--key",
            cli.path("f.key"),
            "--ledger",
            cli.path("f.ledger"),
            "--member",
            cli.path(f"{name}.json"),
            "--address",
            f"wss://{name}.example:8443",
            "--out",
            cli.path(f"{name}.inv"),
        )
    cli.ok(
        "federation",
        "join",
        "--key",
        cli.path("b.key"),
        "--passphrase-file",
        cli.path("b.pass"),
        "--invitation",
        cli.path("b.inv"),
        "--out",
        cli.path("b.ledger"),
    )
    return ids


def test_create_invite_join_approve_show(cli: Cli, founded: dict[str, str]) -> None:
    assert stat.S_IMODE(Path(cli.path("f.ledger")).stat().st_mode) == 0o600
    cli.ok(
        "federation",
        "approve",
        "--key",
        cli.path("b.key"),
        "--passphrase-file",
        cli.path("b.pass"),
        "--ledger",
        cli.path("b.ledger"),
    )
    info = cli.show("b.ledger")
    statuses = {m["node_id"]: m["status"] for m in info["members"]}
    assert statuses == {founded["f"]: "valid", founded["a"]: "valid", founded["b"]: "valid"}
    assert info["founder"] == founded["f"] and info["name"] == "demo"
    assert len(info["plan_hash"]) == 64
    assert info["approved_by"] == [founded["b"]]
    assert info["rejected"] == 0 and info["progress"] == {}
    text = cli.ok("federation", "show", cli.path("b.ledger"))
    assert "approved by 1 of 3" in text and "rejected records: 0" in text


def test_invite_prints_the_invitation_without_out(cli: Cli, founded: dict[str, str]) -> None:
    cli.new_key("c")
    out = cli.ok(
        "federation",
        "invite",
        "--key",
        cli.path("f.key"),
        "--ledger",
        cli.path("f.ledger"),
        "--member",
        cli.path("c.json"),
        "--address",
        "wss://c.example:1",
    )
    invitation = json.loads(out)
    assert invitation["federation_id"] == load_ledger(cli.path("f.ledger")).federation_id
    (cli.dir / "c.inv").write_text(out)
    cli.ok(
        "federation",
        "join",
        "--key",
        cli.path("c.key"),
        "--invitation",
        cli.path("c.inv"),
        "--out",
        cli.path("c.ledger"),
    )
    assert len(cli.show("c.ledger")["members"]) == 4


def test_revoke_marks_the_member_revoked(cli: Cli, founded: dict[str, str]) -> None:
    out = cli.ok(
        "federation",
        "revoke",
        "--key",
        cli.path("f.key"),
        "--ledger",
        cli.path("f.ledger"),
        founded["a"],
    )
    assert founded["a"] in out
    statuses = {m["node_id"]: m["status"] for m in cli.show("f.ledger")["members"]}
    assert statuses[founded["a"]] == "revoked" and statuses[founded["b"]] == "valid"
    code, _, err = cli(
        "federation",
        "revoke",
        "--key",
        cli.path("a.key"),
        "--ledger",
        cli.path("f.ledger"),
        founded["b"],
    )
    assert code == 2 and "cannot revoke" in err


def test_a_flipped_byte_and_a_foreign_signature_are_rejected_and_counted(
    cli: Cli, founded: dict[str, str]
) -> None:
    """Tamper with the ledger file directly (not through a replica, which would put back
    what it verified), then look through the CLI."""
    ledger = load_ledger(cli.path("f.ledger"))
    (member_key,) = [k for k in ledger.entries("members") if k.startswith(founded["a"])]
    fid, updates = decode_ledger_file(Path(cli.path("f.ledger")).read_bytes())
    doc: Doc = Doc()
    for update in updates:
        doc.apply_update(update)
    members = doc.get("members", type=Map)
    value = bytearray(members[member_key])
    value[40] ^= 0x01  # inside the signed body
    members[member_key] = bytes(value)
    b = load_identity(cli.path("b.key"), b"b's secret")
    clock = ledger.next_clock()  # b re-signs a progress record in f's namespace
    entry_key, forged = seal(b.signing_key, fid, "progress", founded["f"], clock, {"round": 99})
    doc.get("progress", type=Map)[entry_key] = forged
    Path(cli.path("f.ledger")).write_bytes(encode_ledger_file(fid, [bytes(doc.get_update())]))

    info = cli.show("f.ledger")
    assert founded["a"] not in {m["node_id"] for m in info["members"]}
    assert info["progress"] == {}
    assert info["rejected"] == 2
    assert info["rejections"] == {"bad_signature": 1, "not_authorized": 1}
    assert "rejected records: 2" in cli.ok("federation", "show", cli.path("f.ledger"))


def test_join_refuses_an_invitation_for_another_node(cli: Cli, founded: dict[str, str]) -> None:
    code, _, err = cli(
        "federation",
        "join",
        "--key",
        cli.path("a.key"),
        "--invitation",
        cli.path("b.inv"),
        "--out",
        cli.path("a.ledger"),
    )
    assert code == 2 and "the invitation is for node" in err
    assert not Path(cli.path("a.ledger")).exists()


def test_join_refuses_a_snapshot_that_does_not_admit_the_node(
    cli: Cli, founded: dict[str, str]
) -> None:
    invitation = json.loads(Path(cli.path("b.inv")).read_text())
    cli.new_key("c")
    invitation["member"] = json.loads(Path(cli.path("c.json")).read_text())["node_id"]
    Path(cli.path("c.inv")).write_text(json.dumps(invitation))
    code, _, err = cli(
        "federation",
        "join",
        "--key",
        cli.path("c.key"),
        "--invitation",
        cli.path("c.inv"),
        "--out",
        cli.path("c.ledger"),
    )
    assert code == 2 and "does not admit" in err


def test_join_refuses_a_snapshot_of_another_federation(cli: Cli, founded: dict[str, str]) -> None:
    invitation = json.loads(Path(cli.path("b.inv")).read_text())
    invitation["federation_id"] = "0" * 32
    Path(cli.path("x.inv")).write_text(json.dumps(invitation))
    code, _, err = cli(
        "federation",
        "join",
        "--key",
        cli.path("b.key"),
        "--passphrase-file",
        cli.path("b.pass"),
        "--invitation",
        cli.path("x.inv"),
        "--out",
        cli.path("x.ledger"),
    )
    assert code == 2 and "no valid genesis record" in err


def test_commands_need_the_passphrase_of_a_sealed_key(cli: Cli, founded: dict[str, str]) -> None:
    code, _, err = cli(
        "federation", "approve", "--key", cli.path("b.key"), "--ledger", cli.path("b.ledger")
    )
    assert code == 2 and "passphrase" in err


def test_only_admins_invite(cli: Cli, founded: dict[str, str]) -> None:
    cli.new_key("c")
    code, _, err = cli(
        "federation",
        "invite",
        "--key",
        cli.path("a.key"),
        "--ledger",
        cli.path("f.ledger"),
        "--member",
        cli.path("c.json"),
        "--address",
        "wss://c:1",
    )
    assert code == 2 and "cannot invite" in err


@pytest.mark.parametrize("address", ["c.example:1", "https://c:1", "wss://c", "wss://:1"])
def test_invite_wants_a_websocket_address(cli: Cli, founded: dict[str, str], address: str) -> None:
    cli.new_key("c")
    code, _, err = cli(
        "federation",
        "invite",
        "--key",
        cli.path("f.key"),
        "--ledger",
        cli.path("f.ledger"),
        "--member",
        cli.path("c.json"),
        "--address",
        address,
    )
    assert code == 2 and "wss://HOST:PORT" in err


def test_member_file_must_be_keys_show_json(cli: Cli, founded: dict[str, str]) -> None:
    (cli.dir / "bad.json").write_text(json.dumps({"node_id": founded["a"]}))
    code, _, err = cli(
        "federation",
        "invite",
        "--key",
        cli.path("f.key"),
        "--ledger",
        cli.path("f.ledger"),
        "--member",
        cli.path("bad.json"),
        "--address",
        "wss://c:1",
    )
    assert code == 2 and "node_id, verify_key and box_key" in err


def test_create_refuses_dates_and_existing_ledgers(cli: Cli, founded: dict[str, str]) -> None:
    code, _, err = cli(
        "federation",
        "create",
        "--key",
        cli.path("f.key"),
        "--name",
        "x",
        "--plan",
        cli.path("plan.toml"),
        "--out",
        cli.path("f.ledger"),
    )
    assert code == 2 and "not overwritten" in err
    (cli.dir / "dated.toml").write_text("[schedule]\nstart = 2024-01-01\n")
    code, _, err = cli(
        "federation",
        "create",
        "--key",
        cli.path("f.key"),
        "--name",
        "x",
        "--plan",
        cli.path("dated.toml"),
        "--out",
        cli.path("n.ledger"),
    )
    assert code == 2 and "schedule.start" in err


def test_a_truncated_ledger_is_a_clear_error_and_stays(cli: Cli, founded: dict[str, str]) -> None:
    path = Path(cli.path("f.ledger"))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    code, _, err = cli("federation", "show", str(path))
    assert code == 2 and "truncated or corrupted" in err
    assert path.read_bytes() == data[:-10]
    code, _, err = cli("federation", "approve", "--key", cli.path("f.key"), "--ledger", str(path))
    assert code == 2 and path.read_bytes() == data[:-10]


def test_each_save_keeps_the_previous_file(cli: Cli, founded: dict[str, str]) -> None:
    path = Path(cli.path("f.ledger"))
    before = path.read_bytes()
    cli.ok("federation", "approve", "--key", cli.path("f.key"), "--ledger", str(path))
    assert Path(str(path) + ".prev").read_bytes() == before
    assert load_ledger(str(path) + ".prev").approvals() == {}
    assert load_ledger(path).approvals() != {}


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:5],
        lambda d: b"X" + d[1:],
        lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:],
        lambda d: b"",
    ],
)
def test_damaged_ledger_files(cli: Cli, founded: dict[str, str], damage: Any) -> None:
    path = Path(cli.path("f.ledger"))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(LedgerFileError):
        load_ledger(path)


def test_missing_ledger(cli: Cli) -> None:
    code, _, err = cli("federation", "show", cli.path("absent.ledger"))
    assert code == 2 and "no such ledger file" in err


def test_the_example_plan_is_a_valid_plan(cli: Cli) -> None:
    from p2pfl.cli.federation import read_plan

    example = Path(__file__).resolve().parents[3] / "simulations" / "plans" / "heart_disease.toml"
    plan = read_plan(str(example))
    assert plan["model"]["name"] == "logreg" and plan["secure"]["enabled"] is True


def test_invite_unreachable_records_no_address_and_needs_one_or_the_other(
    cli: Cli, founded: dict[str, str]
) -> None:
    c = cli.new_key("c")
    invite = ("federation", "invite", "--key", cli.path("f.key"), "--ledger", cli.path("f.ledger"),
              "--member", cli.path("c.json"))  # fmt: skip
    for extra in ((), ("--unreachable", "--address", "wss://c.example:8443")):
        with pytest.raises(SystemExit):
            cli(*invite, *extra, "--out", cli.path("c.inv"))
    cli.capsys.readouterr()
    cli.ok(*invite, "--unreachable", "--out", cli.path("c.inv"))
    members = {m["node_id"]: m for m in cli.show("f.ledger")["members"]}
    assert members[c]["address"] == ""
    assert members[founded["a"]]["address"] == "wss://a.example:8443"
