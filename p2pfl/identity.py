"""A node's identity: an Ed25519 key pair, its X25519 twin, and the node id both answer to.

The X25519 key (for secure aggregation's pairwise secrets) is derived from the
Ed25519 one with libsodium's conversion, so one secret seed is all a node keeps.
The node id is ``protocols.records.node_id_for(verify_key)``: a 26-character
base32 hash of the verify key, which no other key can claim.

Key file: JSON, one file, mode 0600, written atomically and never over an
existing file::

    {"format": "p2pfl-key/1", "node_id": ..., "verify_key": hex, "box_key": hex,
     "secret": {"kind": "plain", "seed": hex}}

or, sealed with a passphrase, ``"secret": {"kind": "argon2id+secretbox", "salt",
"opslimit", "memlimit", "box"}``: the seed in a NaCl secret box whose key is
Argon2id of the passphrase (libsodium's ``crypto_pwhash``, the "interactive"
limits by default: 64 MiB, about 0.1 s; the limits used are in the file).
Public keys are in clear so ``p2pfl keys show`` needs no passphrase; loading
checks that they match the seed.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.signing
import nacl.utils
from nacl.public import PrivateKey, PublicKey

from p2pfl.atomic import atomic_write_bytes
from p2pfl.errors import KeyFileError
from protocols.records import node_id_for

FORMAT = "p2pfl-key/1"
SEED_SIZE = 32
_KDF = nacl.pwhash.argon2id
DEFAULT_OPSLIMIT = _KDF.OPSLIMIT_INTERACTIVE
DEFAULT_MEMLIMIT = _KDF.MEMLIMIT_INTERACTIVE
_MAX_OPSLIMIT = _KDF.OPSLIMIT_SENSITIVE
_MAX_MEMLIMIT = _KDF.MEMLIMIT_SENSITIVE
MAX_KEY_FILE = 64 * 1024


@dataclass(frozen=True)
class Identity:
    """A node's keys. Build with ``create_identity`` or ``Identity.from_seed``."""

    signing_key: nacl.signing.SigningKey
    verify_key: nacl.signing.VerifyKey
    box_private: PrivateKey
    box_public: PublicKey
    node_id: str

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        signing_key = nacl.signing.SigningKey(bytes(seed))
        verify_key = signing_key.verify_key
        box_private = signing_key.to_curve25519_private_key()
        return cls(
            signing_key=signing_key,
            verify_key=verify_key,
            box_private=box_private,
            box_public=box_private.public_key,
            node_id=node_id_for(bytes(verify_key)),
        )

    def sign(self, message: bytes) -> bytes:
        """The detached 64-byte Ed25519 signature of ``message``."""
        return bytes(self.signing_key.sign(message).signature)

    def __repr__(self) -> str:  # never print the secret
        return f"Identity(node_id={self.node_id!r})"


def create_identity() -> Identity:
    """A fresh identity from the operating system's random source."""
    return Identity.from_seed(nacl.utils.random(SEED_SIZE))


def public_keys(identity: Identity) -> dict[str, str]:
    """What others need to know about a node: exactly what ``p2pfl keys show --json`` prints."""
    return {
        "node_id": identity.node_id,
        "verify_key": bytes(identity.verify_key).hex(),
        "box_key": bytes(identity.box_public).hex(),
    }


def save_identity(
    identity: Identity,
    path: str | os.PathLike[str],
    passphrase: bytes | None = None,
    *,
    opslimit: int = DEFAULT_OPSLIMIT,
    memlimit: int = DEFAULT_MEMLIMIT,
) -> None:
    """Write a key file (mode 0600); ``KeyFileError`` if ``path`` already exists."""
    seed = bytes(identity.signing_key)
    if passphrase is None:
        secret: dict[str, Any] = {"kind": "plain", "seed": seed.hex()}
    else:
        if not passphrase:
            raise KeyFileError("the passphrase is empty")
        salt = nacl.utils.random(_KDF.SALTBYTES)
        key = _KDF.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit, memlimit)
        secret = {
            "kind": "argon2id+secretbox",
            "salt": salt.hex(),
            "opslimit": opslimit,
            "memlimit": memlimit,
            "box": bytes(nacl.secret.SecretBox(key).encrypt(seed)).hex(),
        }
    document = {"format": FORMAT, **public_keys(identity), "secret": secret}
    data = (json.dumps(document, indent=2) + "\n").encode()
    try:
        atomic_write_bytes(path, data, mode=0o600, overwrite=False)
    except FileExistsError:
        raise KeyFileError(f"{path}: a key file is already there; it was not overwritten") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write the key file: {exc.strerror}") from exc


def read_key_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a key file's JSON, refusing one that others can read; check its public part."""
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyFileError(
                    f"{path}: the key file is accessible to others "
                    f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
                )
            raw = handle.read(MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path}: is a directory, not a key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key file: {exc.strerror}") from exc
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise KeyFileError(f"{path}: not a p2pfl key file (not JSON)") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise KeyFileError(f"{path}: not a p2pfl key file (format is not {FORMAT})")
    try:
        check_public_keys(document)
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from None
    return document


def check_public_keys(document: dict[str, Any]) -> dict[str, str]:
    """Validate ``{node_id, verify_key, box_key}`` (hex) as ``public_keys`` writes them."""
    try:
        verify_key = bytes.fromhex(document["verify_key"])
        box_key = bytes.fromhex(document["box_key"])
        node_id = document["node_id"]
        expected = public_keys_for(verify_key)
    except (KeyError, TypeError, ValueError, nacl.exceptions.CryptoError):
        raise KeyFileError(
            "bad public keys: node_id, verify_key and box_key (hex) needed"
        ) from None
    if expected["node_id"] != node_id or expected["box_key"] != box_key.hex():
        raise KeyFileError("the node id or box key does not belong to the verify key")
    return expected


def public_keys_for(verify_key: bytes) -> dict[str, str]:
    verify = nacl.signing.VerifyKey(verify_key)
    return {
        "node_id": node_id_for(verify_key),
        "verify_key": verify_key.hex(),
        "box_key": bytes(verify.to_curve25519_public_key()).hex(),
    }


def load_identity(path: str | os.PathLike[str], passphrase: bytes | None = None) -> Identity:
    """Load a key file; ``KeyFileError`` if missing, insecure, sealed without passphrase..."""
    document = read_key_document(path)
    secret = document.get("secret")
    try:
        if not isinstance(secret, dict):
            raise KeyError("secret")
        seed = _open_secret(secret, passphrase, path)
    except (KeyError, TypeError, ValueError):
        raise KeyFileError(f"{path}: the key file's secret part is damaged") from None
    if len(seed) != SEED_SIZE:
        raise KeyFileError(f"{path}: the key file's secret part is damaged")
    identity = Identity.from_seed(seed)
    if public_keys(identity) != {k: document[k] for k in ("node_id", "verify_key", "box_key")}:
        raise KeyFileError(f"{path}: the public keys in the file do not match its secret")
    return identity


def _open_secret(
    secret: dict[str, Any], passphrase: bytes | None, path: str | os.PathLike[str]
) -> bytes:
    if secret["kind"] == "plain":
        return bytes.fromhex(secret["seed"])
    if secret["kind"] != "argon2id+secretbox":
        raise KeyFileError(f"{path}: unknown secret kind {secret['kind']!r}")
    if passphrase is None:
        raise KeyFileError(f"{path}: the key is sealed with a passphrase; give --passphrase-file")
    opslimit, memlimit = secret["opslimit"], secret["memlimit"]
    if not (type(opslimit) is int and type(memlimit) is int):
        raise TypeError("limits")
    if not (0 < opslimit <= _MAX_OPSLIMIT and 0 < memlimit <= _MAX_MEMLIMIT):
        raise KeyFileError(f"{path}: the key file asks for unreasonable Argon2id limits")
    salt = bytes.fromhex(secret["salt"])
    try:
        key = _KDF.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit, memlimit)
        return bytes(nacl.secret.SecretBox(key).decrypt(bytes.fromhex(secret["box"])))
    except nacl.exceptions.CryptoError:
        raise KeyFileError(f"{path}: wrong passphrase (or a damaged key file)") from None


def read_passphrase_file(path: str | os.PathLike[str]) -> bytes:
    """A passphrase from a file: its bytes, without one trailing newline; never empty."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the passphrase file: {exc.strerror}") from exc
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise KeyFileError(f"{path}: the passphrase file is empty")
    return data
