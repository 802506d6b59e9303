"""``p2pfl keys init`` and ``p2pfl keys show``."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from p2pfl.cli import main
from p2pfl.identity import load_identity, public_keys


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_init_writes_a_private_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.key"
    code, out, _ = run(capsys, "keys", "init", "--out", str(path))
    assert code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(path).node_id in out


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.key"
    run(capsys, "keys", "init", "--out", str(path))
    before = path.read_bytes()
    code, _, err = run(capsys, "keys", "init", "--out", str(path))
    assert code == 2 and err.startswith("p2pfl: error:") and "not overwritten" in err
    assert path.read_bytes() == before


def test_show_json_prints_exactly_the_public_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.key"
    run(capsys, "keys", "init", "--out", str(path))
    code, out, _ = run(capsys, "keys", "show", str(path), "--json")
    assert code == 0
    assert json.loads(out) == public_keys(load_identity(path))
    code, out, _ = run(capsys, "keys", "show", str(path))
    assert code == 0 and load_identity(path).node_id in out


def test_sealed_key_shows_without_its_passphrase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "pass"
    secret.write_text("a long passphrase\n")
    path = tmp_path / "sealed.key"
    code, out, _ = run(capsys, "keys", "init", "--out", str(path), "--passphrase-file", str(secret))
    assert code == 0 and "sealed" in out
    code, out, _ = run(capsys, "keys", "show", str(path), "--json")
    assert code == 0
    assert json.loads(out) == public_keys(load_identity(path, b"a long passphrase"))


def test_show_refuses_a_key_file_others_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.key"
    run(capsys, "keys", "init", "--out", str(path))
    path.chmod(0o644)
    code, _, err = run(capsys, "keys", "show", str(path))
    assert code == 2 and "chmod 600" in err


def test_show_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keys", "show", str(tmp_path / "absent"))
    assert code == 2 and "no such key file" in err
