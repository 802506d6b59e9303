"""Identities and key files: derived keys, mode 0600, no overwrite, sealing, atomic writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import nacl.pwhash
import nacl.signing
import pytest

from p2pfl.atomic import atomic_write_bytes
from p2pfl.errors import KeyFileError
from p2pfl.identity import (
    Identity,
    create_identity,
    load_identity,
    public_keys,
    read_passphrase_file,
    save_identity,
)
from protocols.records import node_id_for

# The cheapest Argon2id limits, so that sealing tests stay fast; the defaults are tested once.
CHEAP = {
    "opslimit": nacl.pwhash.argon2id.OPSLIMIT_MIN,
    "memlimit": nacl.pwhash.argon2id.MEMLIMIT_MIN,
}


def test_keys_derive_from_one_seed() -> None:
    identity = create_identity()
    assert identity.node_id == node_id_for(bytes(identity.verify_key))
    assert bytes(identity.box_public) == bytes(identity.verify_key.to_curve25519_public_key())
    assert identity.box_private.public_key == identity.box_public
    message = b"challenge"
    identity.verify_key.verify(message, identity.sign(message))
    assert len(identity.sign(message)) == 64
    assert Identity.from_seed(bytes(identity.signing_key)) == identity
    assert "signing_key" not in repr(identity)


def test_public_keys_are_exactly_three_hex_fields() -> None:
    identity = Identity.from_seed(b"\x07" * 32)
    keys = public_keys(identity)
    assert set(keys) == {"node_id", "verify_key", "box_key"}
    assert bytes.fromhex(keys["verify_key"]) == bytes(identity.verify_key)
    assert bytes.fromhex(keys["box_key"]) == bytes(identity.box_public)


def test_save_then_load_with_mode_0600(tmp_path: Path) -> None:
    identity = create_identity()
    path = tmp_path / "node.key"
    save_identity(identity, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(path) == identity
    assert os.listdir(tmp_path) == ["node.key"]  # no temporary file left behind


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_identity(create_identity(), path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already there"):
        save_identity(create_identity(), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["node.key"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620])
def test_load_refuses_a_file_others_can_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    save_identity(create_identity(), path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_identity(path)


def test_sealed_key_needs_the_right_passphrase(tmp_path: Path) -> None:
    identity = create_identity()
    path = tmp_path / "sealed.key"
    save_identity(identity, path, b"correct horse", **CHEAP)
    assert bytes(identity.signing_key).hex() not in path.read_text()
    with pytest.raises(KeyFileError, match="passphrase"):
        load_identity(path)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_identity(path, b"wrong")
    assert load_identity(path, b"correct horse") == identity


def test_default_limits_seal_and_open(tmp_path: Path) -> None:
    identity = create_identity()
    path = tmp_path / "sealed.key"
    save_identity(identity, path, b"pass")
    secret = json.loads(path.read_text())["secret"]
    assert secret["memlimit"] == nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE
    assert load_identity(path, b"pass") == identity


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="empty"):
        save_identity(create_identity(), tmp_path / "k", b"")


def _rewrite(path: Path, change: dict[str, object]) -> None:
    document = json.loads(path.read_text())
    document.update(change)
    path.write_text(json.dumps(document))
    path.chmod(0o600)


def test_a_key_file_whose_public_part_lies_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_identity(create_identity(), path)
    other = public_keys(create_identity())
    _rewrite(path, other)  # consistent public keys, but not this seed's
    with pytest.raises(KeyFileError, match="do not match"):
        load_identity(path)
    _rewrite(path, {"node_id": "a" * 26})
    with pytest.raises(KeyFileError, match="does not belong"):
        load_identity(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[]", b'{"format": "other"}', b'{"format": "p2pfl-key/1"}'],
)
def test_damaged_key_files_are_clear_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        load_identity(path)


def test_damaged_secrets_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_identity(create_identity(), path)
    _rewrite(path, {"secret": {"kind": "plain", "seed": "zz"}})
    with pytest.raises(KeyFileError, match="damaged"):
        load_identity(path)
    _rewrite(path, {"secret": {"kind": "rot13"}})
    with pytest.raises(KeyFileError, match="unknown secret kind"):
        load_identity(path)
    sealed = tmp_path / "sealed.key"
    save_identity(create_identity(), sealed, b"p", **CHEAP)
    document = json.loads(sealed.read_text())
    document["secret"]["memlimit"] = 1 << 40
    sealed.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match="unreasonable"):
        load_identity(sealed, b"p")


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such key file"):
        load_identity(tmp_path / "absent.key")


def test_passphrase_files_lose_one_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    path.write_bytes(b"secret words\n")
    assert read_passphrase_file(path) == b"secret words"
    path.write_bytes(b"secret\r\n")
    assert read_passphrase_file(path) == b"secret"
    path.write_bytes(b"\n")
    with pytest.raises(KeyFileError, match="empty"):
        read_passphrase_file(path)
    with pytest.raises(KeyFileError):
        read_passphrase_file(tmp_path / "absent")


def test_atomic_write_replaces_or_refuses(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two", mode=0o600)
    assert path.read_bytes() == b"two" and stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        atomic_write_bytes(path, b"three", overwrite=False)
    assert path.read_bytes() == b"two"
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "no" / "dir", b"x")
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_identity_signs_like_nacl() -> None:
    seed = b"\x05" * 32
    assert Identity.from_seed(seed).sign(b"m") == nacl.signing.SigningKey(seed).sign(b"m").signature
