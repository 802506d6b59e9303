"""Per-round checkpoints: the model after round r, written atomically, never pickled.

File ``round-000012.ckpt`` in the node's ``checkpoints/`` directory::

    b"P2PFL-CKPT\\x00\\x01" | metadata length (uint32 LE) | msgpack metadata | model

The model is the flat parameter vector as raw little-endian float32. The
metadata (a msgpack map) holds at least ``round``, ``dim`` and ``sha256`` (of
the model bytes); the node adds the federation, plan hash, roster, metrics,
stragglers and bytes sent. Writing streams the model to a temporary file in
the same directory, fsyncs it, renames it into place and fsyncs the
directory, so a reader sees the whole checkpoint or none; a damaged file
(truncated, altered) fails its hash and is skipped by ``latest`` with a
warning. Loading never executes anything: msgpack and raw floats only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np
import numpy.typing as npt

from p2pfl.node.errors import CheckpointError

log = logging.getLogger(__name__)

MAGIC = b"P2PFL-CKPT\x00\x01"
_LENGTH = struct.Struct("<I")
MAX_METADATA = 1 << 20
_NAME = re.compile(r"^round-(\d{6,})\.ckpt$")
_BLOCK = 1 << 20  # bytes hashed at a time when the model is not kept


@dataclass(frozen=True, eq=False)
class Checkpoint:
    round: int
    model: npt.NDArray[np.float32]
    meta: dict[str, Any]
    path: Path


def checkpoint_name(round_: int) -> str:
    return f"round-{round_:06d}.ckpt"


def write_checkpoint(
    directory: str | os.PathLike[str],
    round_: int,
    model: npt.NDArray[np.float32],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``round_`` atomically; returns its path."""
    if round_ < 0:
        raise ValueError("round must be non-negative")
    flat = np.ascontiguousarray(model, dtype="<f4").reshape(-1)
    data = flat.view(np.uint8).data
    header = dict(meta or {})
    header.update(round=int(round_), dim=int(flat.size), sha256=hashlib.sha256(data).digest())
    packed = msgpack.packb(header, use_bin_type=True)
    if len(packed) > MAX_METADATA:
        raise ValueError(f"checkpoint metadata of {len(packed)} bytes is over {MAX_METADATA}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / checkpoint_name(round_)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(MAGIC + _LENGTH.pack(len(packed)) + packed)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(directory)
    return target


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint(path: str | os.PathLike[str], *, model: bool = True) -> Checkpoint:
    """Load and check one checkpoint; ``CheckpointError`` if it is damaged.

    The model is read straight into its array (one model-sized allocation) and
    hashed there. With ``model=False`` it is hashed as it streams from the file
    and not kept (``Checkpoint.model`` is empty): the whole file is checked, for
    the price of its metadata.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            meta, array = _read(path, handle, model)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {exc.strerror}") from None
    return Checkpoint(int(meta["round"]), array, meta, path)


def _read(path: Path, handle: BinaryIO, keep: bool) -> tuple[dict[str, Any], npt.NDArray[Any]]:
    size = os.fstat(handle.fileno()).st_size
    start = len(MAGIC) + _LENGTH.size
    prefix = handle.read(start)
    if not prefix.startswith(MAGIC) or len(prefix) < start:
        raise CheckpointError(f"{path}: not a p2pfl checkpoint")
    (length,) = _LENGTH.unpack_from(prefix, len(MAGIC))
    if length > MAX_METADATA or start + length > size:
        raise CheckpointError(f"{path}: truncated metadata")
    try:
        meta = msgpack.unpackb(handle.read(length), raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise CheckpointError(f"{path}: metadata is not msgpack: {exc}") from None
    if not isinstance(meta, dict) or not all(k in meta for k in ("round", "dim", "sha256")):
        raise CheckpointError(f"{path}: metadata lacks round, dim or sha256")
    nbytes = size - start - length
    dim = meta["dim"]
    if type(dim) is not int or nbytes != 4 * dim:
        raise CheckpointError(f"{path}: truncated model ({nbytes} bytes for {dim!r})")
    array = np.empty(dim if keep else 0, dtype="<f4")
    digest = hashlib.sha256()
    target = array.view(np.uint8).data if keep else memoryview(bytearray(min(nbytes, _BLOCK)))
    done = 0
    while done < nbytes:
        window = target[done:] if keep else target[: min(len(target), nbytes - done)]
        got = handle.readinto(window)
        if not got:
            raise CheckpointError(f"{path}: truncated model ({done} bytes for {dim!r})")
        digest.update(window[:got])
        done += got
    if digest.digest() != meta["sha256"]:
        raise CheckpointError(f"{path}: the model does not match its hash")
    return meta, array.astype(np.float32, copy=False)


def list_checkpoints(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(round, path) of the checkpoint files in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike[str]) -> Checkpoint | None:
    """The newest checkpoint that reads back whole, or None; damaged ones are logged."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return read_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping a damaged checkpoint: %s", exc)
    return None


def prune_checkpoints(directory: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints (``keep`` = 0 keeps all)."""
    if keep <= 0:
        return []
    removed = []
    for _, path in list_checkpoints(directory)[:-keep]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        removed.append(path)
    return removed
