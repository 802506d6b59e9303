"""A ledger on disk: a file of Yjs updates, checksummed, replaced atomically.

Layout: ``MAGIC``, then the msgpack array ``[federation_id, [update, ...]]``,
then a 32-byte BLAKE2b digest of everything before it. A truncated or altered
file fails the digest and is reported as such; it is never overwritten by a
failed load. Each save first keeps the file it replaces as ``LEDGER.prev``
(a hard link where the file system has them), then renames the new file in.

A node running on a ledger file owns it: it rewrites the file from its replica,
so a tool that edits the file meanwhile (``p2pfl federation revoke``) would see
its record overwritten. The node therefore keeps an inbox beside the file
(``LEDGER.inbox/``, made when it starts): a tool saves the file and posts the
record it signed there too (``save_record``); the node merges each posted
record into its replica, floods it to its neighbours and deletes the post
(``take_inbox``). Without an inbox (no node ever ran on the file) the file
alone holds the record, and a node started later reads it there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path

from p2pfl.atomic import atomic_write_bytes
from p2pfl.errors import LedgerFileError
from p2pfl.threads import parallel_map
from protocols.errors import DecodeError
from protocols.ledger import Ledger
from protocols.records import canonical, unpack
from protocols.yjs_bounds import Limits

MAGIC = b"P2PFL-LEDGER\x00\x01"
DIGEST_SIZE = 32
MAX_LEDGER_FILE = 1 << 30
FILE_LIMITS = Limits(max_bytes=MAX_LEDGER_FILE, max_elements=1 << 24)
"""What one update of a ledger file may hold: a whole ledger, larger than a peer may send."""


def encode_ledger_file(federation_id: str, updates: list[bytes]) -> bytes:
    body = MAGIC + canonical([federation_id, updates])
    return body + hashlib.blake2b(body, digest_size=DIGEST_SIZE).digest()


def decode_ledger_file(data: bytes, where: str = "ledger file") -> tuple[str, list[bytes]]:
    """``(federation_id, updates)`` of a ledger file's bytes; ``LedgerFileError`` if damaged."""
    if not data.startswith(MAGIC):
        raise LedgerFileError(f"{where}: not a p2pfl ledger file")
    body, digest = data[:-DIGEST_SIZE], data[-DIGEST_SIZE:]
    if len(data) < len(MAGIC) + DIGEST_SIZE or (
        hashlib.blake2b(body, digest_size=DIGEST_SIZE).digest() != digest
    ):
        raise LedgerFileError(
            f"{where}: truncated or corrupted (checksum mismatch); the file was left as it is"
        )
    try:
        content = unpack(body[len(MAGIC) :], max_size=MAX_LEDGER_FILE)
    except DecodeError:
        content = None
    if not (
        isinstance(content, list)
        and len(content) == 2
        and isinstance(content[0], str)
        and isinstance(content[1], list)
        and all(isinstance(u, bytes) for u in content[1])
    ):
        raise LedgerFileError(f"{where}: the checksum holds but the content is not a ledger")
    return content[0], content[1]


def load_ledger(path: str | os.PathLike[str], *, client_id: int | None = None) -> Ledger:
    """Read a ledger file; ``LedgerFileError`` if it is missing, damaged or has no genesis."""
    try:
        size = os.path.getsize(path)
        if size > MAX_LEDGER_FILE:
            raise LedgerFileError(f"{path}: {size} bytes is larger than a ledger may be")
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise LedgerFileError(f"{path}: no such ledger file") from None
    except OSError as exc:
        raise LedgerFileError(f"{path}: cannot read the ledger: {exc.strerror}") from exc
    return ledger_from_bytes(data, str(path), client_id=client_id)


def ledger_from_bytes(data: bytes, where: str, *, client_id: int | None = None) -> Ledger:
    federation_id, updates = decode_ledger_file(data, where)
    return ledger_from_updates(federation_id, updates, where, client_id=client_id)


def ledger_from_updates(
    federation_id: str, updates: list[bytes], where: str, *, client_id: int | None = None
) -> Ledger:
    """A ledger from updates; ``LedgerFileError`` unless they hold the federation's genesis."""
    try:
        ledger = Ledger.from_updates(
            federation_id, updates, client_id=client_id, limits=FILE_LIMITS, checks=parallel_map
        )
    except DecodeError as exc:
        raise LedgerFileError(f"{where}: holds an invalid Yjs update ({exc})") from None
    if ledger.founder is None:
        ledger.store.close()  # an open document is never freed (its observer holds it)
        raise LedgerFileError(
            f"{where}: no valid genesis record for federation {federation_id} in it"
        )
    return ledger


def save_ledger(ledger: Ledger, path: str | os.PathLike[str], *, overwrite: bool = True) -> None:
    """Write the ledger atomically (mode 0600), keeping the replaced file as ``PATH.prev``."""
    write_ledger_file(ledger_file_bytes(ledger), path, overwrite=overwrite)


def ledger_file_bytes(ledger: Ledger) -> bytes:
    """What ``save_ledger`` writes: taken where the ledger lives, written anywhere."""
    return encode_ledger_file(ledger.federation_id, [ledger.encode_state()])


def write_ledger_file(data: bytes, path: str | os.PathLike[str], *, overwrite: bool = True) -> None:
    """``save_ledger`` of bytes ``ledger_file_bytes`` gave (one writer at a time per path)."""
    target = Path(path)
    try:
        if overwrite and target.exists():
            _keep_previous(target)
        atomic_write_bytes(target, data, mode=0o600, overwrite=overwrite)
    except FileExistsError:
        raise LedgerFileError(f"{path}: a file is already there; it was not overwritten") from None
    except OSError as exc:
        raise LedgerFileError(f"{path}: cannot write the ledger: {exc.strerror}") from exc


def _keep_previous(target: Path) -> None:
    previous = target.with_name(target.name + ".prev")
    staging = target.with_name(f".{target.name}.prev.tmp")
    with contextlib.suppress(FileNotFoundError):
        staging.unlink()
    try:
        os.link(target, staging)
    except OSError:
        atomic_write_bytes(previous, target.read_bytes(), mode=0o600)
        return
    os.replace(staging, previous)
    # A save killed before its rename left the file and its ``.prev`` one file (two
    # links): renaming a link onto another of the same file does nothing, and the
    # staging name would stay behind.
    with contextlib.suppress(FileNotFoundError):
        staging.unlink()


INBOX_SUFFIX = ".inbox"
POST_SUFFIX = ".update"


def inbox_of(path: str | os.PathLike[str]) -> Path:
    """Where a node running on the ledger file ``path`` takes records from tools."""
    target = Path(path)
    return target.with_name(target.name + INBOX_SUFFIX)


def open_inbox(path: str | os.PathLike[str]) -> Path:
    """Make the inbox of the ledger file ``path`` (private, like the file) if it is not there."""
    inbox = inbox_of(path)
    inbox.mkdir(mode=0o700, exist_ok=True)
    return inbox


def save_record(ledger: Ledger, path: str | os.PathLike[str], update: bytes) -> bool:
    """Save ``ledger`` holding a record just signed (``update``, as the write returned it),
    and post the record to the node running on the file; True if there is such an inbox."""
    save_ledger(ledger, path)
    return post_update(path, ledger.federation_id, update)


def post_update(path: str | os.PathLike[str], federation_id: str, update: bytes) -> bool:
    """Put ``update`` in the inbox of the ledger file ``path``; False when it has none."""
    inbox = inbox_of(path)
    if not update or not inbox.is_dir():
        return False
    post = inbox / f"{time.time_ns():020d}-{os.getpid()}{POST_SUFFIX}"
    try:
        atomic_write_bytes(post, encode_ledger_file(federation_id, [update]), mode=0o600)
    except OSError as exc:
        raise LedgerFileError(f"{inbox}: cannot post the record: {exc.strerror}") from exc
    return True


def take_inbox(
    path: str | os.PathLike[str], federation_id: str
) -> list[tuple[Path, list[bytes] | LedgerFileError]]:
    """The posts in the inbox of ``path``, oldest first: each one's updates, or why not.

    The caller deletes each post once it has merged it. A post still being
    written is a hidden temporary file (``p2pfl.atomic``), never listed here.
    """
    found: list[tuple[Path, list[bytes] | LedgerFileError]] = []
    try:
        posts = sorted(inbox_of(path).glob(f"*{POST_SUFFIX}"))
    except OSError:
        return found
    for post in posts:
        try:
            if post.stat().st_size > MAX_LEDGER_FILE:
                raise LedgerFileError(f"{post}: larger than a ledger may be")
            posted, updates = decode_ledger_file(post.read_bytes(), str(post))
        except FileNotFoundError:
            continue
        except OSError as exc:
            found.append((post, LedgerFileError(f"{post}: cannot read it: {exc.strerror}")))
            continue
        except LedgerFileError as exc:
            found.append((post, exc))
            continue
        if posted != federation_id:
            error = LedgerFileError(f"{post}: a record of federation {posted}, not {federation_id}")
            found.append((post, error))
        else:
            found.append((post, updates))
    return found
