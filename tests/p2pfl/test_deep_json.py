"""JSON nested past Python's stack, in every file p2pfl reads as JSON from elsewhere: an audit
log, a key file, an invitation. Each is refused as malformed (found by the fuzz targets:
``json.loads`` raises ``RecursionError``, which is none of the documented errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pfl.cli.federation import _read_invitation
from p2pfl.errors import KeyFileError, LedgerFileError
from p2pfl.identity import MAX_KEY_FILE, load_identity
from p2pfl.node.audit import entries_in, verify_data

DEEP = b"[" * 100_000


def test_an_audit_line_nested_too_deep_is_a_broken_line() -> None:
    result = verify_data(DEEP + b"\n", expect_head="0" * 64)
    assert result.lines == 1 and result.entries == 0 and result.problems
    assert entries_in(DEEP) == []


def test_a_key_file_nested_too_deep_is_not_a_key_file(tmp_path: Path) -> None:
    path = tmp_path / "deep.key"
    path.write_bytes(DEEP[:MAX_KEY_FILE])
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not JSON"):
        load_identity(path)


def test_an_invitation_nested_too_deep_is_not_an_invitation(tmp_path: Path) -> None:
    path = tmp_path / "deep.invitation"
    path.write_bytes(DEEP)
    with pytest.raises(LedgerFileError, match="not an invitation"):
        _read_invitation(str(path))
