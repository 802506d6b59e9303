"""``p2pfl node init / run / status``, and a two-site federation set up by hand with the CLI.

Daemons run as subprocesses; the tests wait on what they print (a log line) or
on their exit, always with a deadline.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pfl.cli import main
from p2pfl.node.audit import read_entries, verify
from p2pfl.node.config import load_config

ROOT = Path(__file__).resolve().parents[3]

PLAN = """\
seed = 0
[data]
input_shape = [37]
num_classes = 2
[model]
name = "logreg"
[training]
rounds = 2
local_epochs = 1
lr = 0.05
[topology]
kind = "complete"
[gossip]
mode = "sync"
round_timeout = 60.0
"""


def cli(*argv: object) -> int:
    return main([str(a) for a in argv])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon(config: Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "p2pfl", "node", "run", "--config", str(config), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    """Read the daemon's log until a line contains ``needle``; fail after ``timeout`` s."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                break
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if needle in line:
                return lines
    pytest.fail(f"no {needle!r} in the daemon's log:\n{''.join(lines)[-3000:]}")


def test_node_init_writes_a_key_a_tls_pair_and_a_config_that_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "site"
    assert cli("node", "init", directory, "--tls") == 0
    out = capsys.readouterr().out
    assert "node id" in out and "p2pfl node run --config" in out
    for name in ("node.key", "tls-key.pem"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    config = load_config(directory / "node.toml")
    assert config.key_file == directory / "node.key"
    assert config.path(config.tls.cert).is_file() and config.path(config.tls.key).is_file()
    assert config.node.listen.startswith("wss://")
    assert "# " in (directory / "node.toml").read_text()  # commented for the operator
    assert cli("node", "init", directory) == 2  # never overwrites
    assert "not overwritten" in capsys.readouterr().err


def test_node_run_names_an_unknown_config_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nkey = "node.key"\n[data]\nentry_point = "x:y"\n')
    assert cli("node", "run", "--config", config) == 2
    err = capsys.readouterr().err
    assert "unknown key 'entry_point'" in err and "entrypoint" in err
    config.write_text('[node]\nkey = "node.key"\n')
    assert cli("node", "status", "--config", config) == 2
    assert "no status file" in capsys.readouterr().err


def make_site(tmp_path: Path, name: str, port: int) -> Path:
    directory = tmp_path / name
    assert cli("node", "init", directory, "--listen", f"ws://127.0.0.1:{port}") == 0
    text = (directory / "node.toml").read_text()
    site = {"a": "Cleveland", "b": "Hungary"}[name]
    (directory / "node.toml").write_text(text.replace('args = ["Cleveland"]', f'args = ["{site}"]'))
    (tmp_path / f"{name}.json").write_text(
        _capture(["keys", "show", "--json", str(directory / "node.key")])
    )
    return directory


def _capture(argv: list[str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "p2pfl", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=60,
        check=True,
    )
    return result.stdout


def two_sites(tmp_path: Path) -> tuple[Path, Path]:
    """Sites a and b, federated by hand: create, invite, join, approve (plain ws, loopback)."""
    port_a, port_b = free_port(), free_port()
    a, b = make_site(tmp_path, "a", port_a), make_site(tmp_path, "b", port_b)
    (tmp_path / "plan.toml").write_text(PLAN)
    steps = [
        ("federation", "create", "--key", a / "node.key", "--name", "two",
         "--plan", tmp_path / "plan.toml", "--out", a / "ledger",
         "--address", f"ws://127.0.0.1:{port_a}"),
        ("federation", "invite", "--key", a / "node.key", "--ledger", a / "ledger",
         "--member", tmp_path / "b.json", "--address", f"ws://127.0.0.1:{port_b}",
         "--out", tmp_path / "b.invitation"),
        ("federation", "join", "--key", b / "node.key", "--invitation",
         tmp_path / "b.invitation", "--out", b / "ledger"),
        ("federation", "approve", "--key", a / "node.key", "--ledger", a / "ledger"),
        ("federation", "approve", "--key", b / "node.key", "--ledger", b / "ledger"),
    ]  # fmt: skip
    for step in steps:
        assert cli(*step) == 0, step
    return a, b


def test_two_daemons_federated_with_the_cli_train_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = two_sites(tmp_path)
    capsys.readouterr()
    procs = [daemon(site / "node.toml", "--insecure") for site in (a, b)]
    try:
        logs = [proc.communicate(timeout=180)[1] for proc in procs]
    finally:
        for proc in procs:
            reap(proc)
    assert [proc.returncode for proc in procs] == [0, 0], logs
    for log in logs:
        assert "INSECURE" in log  # plain ws is said loudly
        assert "round 1/2 done" in log and "round 2/2 done" in log
        assert "finished: 2 rounds completed" in log
    # b learnt a's approval through ledger sync, and a learnt b's progress.
    assert cli("federation", "show", a / "ledger", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert sorted(shown["progress"].values()) == [2, 2]  # rounds completed
    assert cli("node", "status", "--config", b / "node.toml", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["phase"] == "finished" and not status["running"]
    assert status["completed"] == 2 and len(status["neighbours"]) == 1
    assert cli("node", "status", "--config", a / "node.toml") == 0
    text = capsys.readouterr().out
    assert "not running (last phase: finished): 2 of 2 rounds completed" in text
    assert verify(a / "audit.jsonl").ok


def test_sigterm_stops_a_waiting_daemon_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = two_sites(tmp_path)
    proc = daemon(a / "node.toml", "--insecure")
    try:
        wait_for_line(proc, "waiting for the plan's approval", timeout=120)  # b never comes
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    assert proc.returncode == 0, err
    assert "SIGTERM received: stopping cleanly" in err
    capsys.readouterr()
    assert cli("node", "status", "--config", a / "node.toml") == 0
    out = capsys.readouterr().out
    assert "not running (last phase: stopped)" in out
    entries = read_entries(a / "audit.jsonl")
    assert entries[-1]["event"] == "stop" and entries[-1]["reason"] == "requested"
    assert verify(a / "audit.jsonl").ok
