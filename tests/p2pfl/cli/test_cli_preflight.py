"""``p2pfl node run`` and ``federation approve / create`` refuse, in one line and exit 2, what
a node could not run, and a refused ``node run`` leaves the data directory as it was.

Sites are set up in a tmp dir (``local_federation``) on loopback; the CLI runs through
its ``main``, and a daemon that must hold a directory runs as a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from p2pfl.cli import main
from p2pfl.identity import create_identity, save_identity
from p2pfl.ledger_file import load_ledger, save_ledger
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.config import load_config
from p2pfl.transport.tls import make_self_signed
from protocols.ledger import Ledger

ROOT = Path(__file__).resolve().parents[3]
# A started daemon rewrites nothing while a test looks; one that should have been refused
# (a regression) gives up waiting for its neighbours and ends its short run in bounded time.
QUIET = {"status_interval": 3600.0, "backoff_max": 5.0, "start_timeout": 60.0}

PLAN: dict[str, Any] = {
    "seed": 0,
    "data": {"input_shape": [37], "num_classes": 2},
    "model": {"name": "logreg"},
    "training": {"rounds": 2, "local_epochs": 1, "lr": 0.05},
    "topology": {"kind": "complete"},
    "gossip": {"mode": "sync", "round_timeout": 5.0},
}


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def sites(
    tmp_path: Path,
    plan: dict[str, Any] | None = None,
    *,
    tls: bool = False,
    entrypoint: str = "p2pfl.node.examples:heart_site",
    address: str = "",
) -> list[SiteFiles]:
    """Two sites on loopback ports; ``address`` is site a's ledger record (default: its listen)."""
    scheme = "wss" if tls else "ws"
    ports = free_ports(2)
    return local_federation(
        tmp_path,
        [
            Site(
                name,
                f"{scheme}://127.0.0.1:{port}",
                entrypoint,
                [hospital],
                address=address if name == "a" else "",
                limits=QUIET,
            )
            for name, hospital, port in zip("ab", ("Cleveland", "Hungary"), ports, strict=True)
        ],
        plan or PLAN,
        tls=tls,
    )


def snapshot(directory: Path, live: frozenset[str] = frozenset()) -> dict[str, str]:
    """Each file's digest, leaving out the ``live`` names and their atomic-write temp siblings
    (``.NAME.XXXXXXXX.tmp``), which a running node creates and removes at any moment."""

    def rewritten(path: Path) -> bool:
        name = path.name
        return name in live or any(
            name.startswith(f".{each}.") and name.endswith(".tmp") for each in live
        )

    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not rewritten(p)
    }


def refused(
    capsys: pytest.CaptureFixture[str],
    site: SiteFiles,
    *extra: str,
    insecure: bool = True,
    live: frozenset[str] = frozenset(),
) -> str:
    """``node run`` on ``site``: exit 2, one error line, no traceback, the directory unchanged.

    ``live``: files a node already running there rewrites on its own (its status), left
    out of the comparison.
    """
    before = snapshot(site.directory, live)
    capsys.readouterr()
    flags = ["--insecure"] if insecure else []
    assert main(["node", "run", "--config", str(site.config), *flags, *extra]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("p2pfl: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert snapshot(site.directory, live) == before
    return errors[0]


# -- the plan -------------------------------------------------------------------------------


def test_node_run_refuses_an_invalid_ledger_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = {**PLAN, "training": {"rounds": 2, "learning_rate": 0.1}}
    a, _ = sites(tmp_path, plan)
    line = refused(capsys, a)
    assert "unknown key 'learning_rate'" in line and "corrected plan" in line


def test_approve_refuses_a_plan_no_daemon_could_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    founder = create_identity()
    save_identity(founder, tmp_path / "f.key")
    ledger = Ledger.found(founder.signing_key, name="typo", nonce=os.urandom(16))
    bad = {**PLAN, "trainng": {"rounds": 2}}
    ledger.set_plan(founder.signing_key, bad, clock=ledger.next_clock())
    save_ledger(ledger, tmp_path / "f.ledger")
    before = (tmp_path / "f.ledger").read_bytes()
    argv = ["federation", "approve", "--key", str(tmp_path / "f.key")]
    assert main([*argv, "--ledger", str(tmp_path / "f.ledger")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not approved" in err and "unknown key 'trainng'" in err
    assert (tmp_path / "f.ledger").read_bytes() == before
    assert not load_ledger(tmp_path / "f.ledger").approvals()


@pytest.mark.parametrize("allow", [None, False, True])
def test_create_refuses_zero_dropout_tolerance_unless_the_plan_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], allow: bool | None
) -> None:
    secure: dict[str, Any] = {"enabled": True}
    if allow is not None:
        secure["allow_no_dropout"] = allow
    (tmp_path / "plan.toml").write_text(tomli_w.dumps({**PLAN, "members": 3, "secure": secure}))
    save_identity(create_identity(), tmp_path / "f.key")
    argv = ["federation", "create", "--key", str(tmp_path / "f.key"), "--name", "three"]
    code = main([*argv, "--plan", str(tmp_path / "plan.toml"), "--out", str(tmp_path / "ledger")])
    err = capsys.readouterr().err
    if allow:
        assert code == 0, err
        return
    assert code == 2 and err.count("\n") == 1
    assert "tolerate no dropout" in err and "allow_no_dropout = true" in err
    assert not (tmp_path / "ledger").exists()


def test_node_run_refuses_rounds_beyond_the_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = sites(tmp_path)
    line = refused(capsys, a, "--rounds", "3")
    assert "3 rounds asked, but the approved plan has 2" in line


# -- the data directory and the port ----------------------------------------------------------


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> None:
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                break
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if needle in line:
                return
    pytest.fail(f"no {needle!r} in the daemon's log:\n{''.join(seen)[-3000:]}")


def test_a_second_node_run_on_one_data_directory_exits_2_naming_the_pid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = sites(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pfl", "node", "run", "--config", str(a.config), "--insecure"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        wait_for_line(proc, "waiting up to", timeout=120)  # b never comes: it waits, quietly
        line = refused(capsys, a, live=frozenset({"status.json"}))  # the first one's own
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert str(a.directory) in line and f"pid {proc.pid}" in line


def test_node_run_on_a_taken_port_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = sites(tmp_path)
    port = int(a.address.rsplit(":", 1)[1])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        line = refused(capsys, a)
    assert f"port {port} is in use" in line


def test_node_run_refuses_a_listen_address_other_than_its_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (elsewhere,) = free_ports(1)
    a, _ = sites(tmp_path, address=f"ws://127.0.0.1:{elsewhere}")
    line = refused(capsys, a)
    listen = load_config(a.config).node.listen
    assert listen != a.address and listen in line and f"ws://127.0.0.1:{elsewhere}" in line
    assert "set [node] listen" in line


# -- TLS and data -----------------------------------------------------------------------------


def test_node_run_refuses_a_tls_key_of_another_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = sites(tmp_path, tls=True)
    other = make_self_signed(tmp_path / "other")
    config = a.config.read_text().replace('key = "tls-key.pem"', f'key = "{other.key_file}"')
    a.config.write_text(config)
    line = refused(capsys, a, insecure=False)
    assert "is not the key of certificate" in line and "p2pfl tls init" in line


def test_node_run_refuses_an_entrypoint_it_cannot_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = sites(tmp_path, entrypoint="hospital_loader_not_installed:load")
    line = refused(capsys, a)
    assert "no module" in line and "PYTHONPATH" in line and "p2pfl node check-data" in line


# -- the documented plan ----------------------------------------------------------------------


def documented_plan() -> dict[str, Any]:
    """The example plan of docs/node.md ("The training plan"), as TOML."""
    text = (ROOT / "docs" / "node.md").read_text()
    section = text.split("## The training plan", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    return tomllib.loads(block)


def test_the_documented_plan_tolerates_a_dropout_or_says_it_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = documented_plan()
    save_identity(create_identity(), tmp_path / "f.key")

    def create(table: dict[str, Any], name: str) -> int:
        (tmp_path / f"{name}.toml").write_text(tomli_w.dumps(table))
        argv = ["federation", "create", "--key", str(tmp_path / "f.key"), "--name", name]
        out = str(tmp_path / f"{name}.ledger")
        return main([*argv, "--plan", str(tmp_path / f"{name}.toml"), "--out", out])

    assert plan["secure"]["enabled"] and plan["secure"]["allow_no_dropout"] is False
    assert create(plan, "four") == 0, capsys.readouterr().err
    three = {**plan, "members": 3}
    assert create(three, "three") == 2
    assert "tolerate no dropout" in capsys.readouterr().err
    accepted = {**three, "secure": {**plan["secure"], "allow_no_dropout": True}}
    assert create(accepted, "accepted") == 0, capsys.readouterr().err
