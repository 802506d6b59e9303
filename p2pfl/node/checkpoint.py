"""Per-round checkpoints: the model after round r, written atomically, never pickled.

File ``round-000012.ckpt`` in the node's ``checkpoints/`` directory holds the
model after round 12, rounds numbered from 1 as everywhere a node shows them
(``p2pfl.node.numbering``)::

    b"P2PFL-CKPT\\x00\\x03" | metadata length (uint32 LE) | msgpack metadata | model | state

The model is the flat parameter vector as raw little-endian float32. The
metadata (a msgpack map) holds at least ``round``, ``dim`` and ``sha256`` (of
the model bytes); the node adds the federation, plan hash, roster, metrics,
stragglers and bytes sent. The state is the trainer's optimizer state
(momentum buffer, Adam moments and step count), named float32 arrays stored
one after the other behind the model, as metadata ``state`` lists them
(``[[name, size], ...]``), with ``state_sha256`` over their bytes; a
checkpoint of plain SGD has none.

Older versions still read: version 2 (``...\\x00\\x02``) and version 1
(``...\\x00\\x01``, written before the state was kept, so read back with an
empty state) counted rounds from 0, file names and ``round`` alike: their
``round`` is read as the number it stands for (one more; ``Checkpoint.version``
says which format it was), so a node upgraded in the middle of a run resumes
after the right round. Their file names keep the old count, one below the
round they hold; a directory's files still sort in round order, since the
first round written afterwards is numbered after the last one read.

Writing streams the model and the state to a temporary file in the same
directory, fsyncs it, renames it into place and fsyncs the directory
(``p2pfl.atomic``), so a reader sees the whole checkpoint or none; a damaged
file (truncated, altered) fails its hash and is skipped by ``latest`` with a
warning. Loading never
executes anything: msgpack and raw floats only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np
import numpy.typing as npt

from p2pfl.atomic import atomic_write
from p2pfl.node.errors import CheckpointError

log = logging.getLogger(__name__)

VERSION = 3
MAGIC = b"P2PFL-CKPT\x00\x03"
_PREFIX = MAGIC[:-1]
COUNTED_FROM_ZERO = frozenset({1, 2})
"""The versions whose ``round`` is the round's index (0 for the first), read as its number."""
STATELESS = 1
"""Version 1: the model only, no optimizer state."""
_LENGTH = struct.Struct("<I")
MAX_METADATA = 1 << 20
_NAME = re.compile(r"^round-(\d{6,})\.ckpt$")
_BLOCK = 1 << 20  # bytes hashed at a time when the model is not kept


@dataclass(frozen=True, eq=False)
class Checkpoint:
    round: int
    """The number of the round this model is the result of (1 for the first)."""
    model: npt.NDArray[np.float32]
    meta: dict[str, Any]
    path: Path
    state: dict[str, npt.NDArray[np.float32]] = dataclasses.field(default_factory=dict)
    """The trainer's optimizer state (``StackedTrainer.export_state``); empty if none was kept."""
    version: int = VERSION
    """The file's format version (older ones are read as the module docstring says)."""

    @property
    def has_state(self) -> bool:
        """Whether the file recorded the optimizer state (an empty one included)."""
        return "state" in self.meta


def checkpoint_name(round_: int) -> str:
    return f"round-{round_:06d}.ckpt"


def write_checkpoint(
    directory: str | os.PathLike[str],
    round_: int,
    model: npt.NDArray[np.float32],
    meta: dict[str, Any] | None = None,
    state: Mapping[str, npt.NDArray[np.float32]] | None = None,
) -> Path:
    """Write the checkpoint of round number ``round_`` (1 or more) atomically; returns its path.

    ``state`` (named arrays, flattened to float32) is stored behind the model; with
    ``None`` the checkpoint says it holds no state (``Checkpoint.has_state`` False).
    """
    if round_ < 1:
        raise ValueError(f"rounds are numbered from 1: no checkpoint of round {round_}")
    flat = _flat(model)
    data = flat.view(np.uint8).data
    header = dict(meta or {})
    header.update(round=int(round_), dim=int(flat.size), sha256=hashlib.sha256(data).digest())
    arrays = [(str(name), _flat(value)) for name, value in (state or {}).items()]
    if state is not None:
        digest = hashlib.sha256()
        for _, array in arrays:
            digest.update(array.view(np.uint8).data)
        header.update(
            state=[[name, int(array.size)] for name, array in arrays],
            state_sha256=digest.digest(),
        )
    packed = msgpack.packb(header, use_bin_type=True)
    if len(packed) > MAX_METADATA:
        raise ValueError(f"checkpoint metadata of {len(packed)} bytes is over {MAX_METADATA}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / checkpoint_name(round_)
    chunks = [MAGIC + _LENGTH.pack(len(packed)) + packed, data]
    chunks += [array.view(np.uint8).data for _, array in arrays]
    atomic_write(target, chunks, mode=0o600)
    return target


def _flat(array: npt.ArrayLike) -> npt.NDArray[Any]:
    return np.ascontiguousarray(array, dtype="<f4").reshape(-1)


def read_checkpoint(path: str | os.PathLike[str], *, model: bool = True) -> Checkpoint:
    """Load and check one checkpoint; ``CheckpointError`` if it is damaged.

    The model and the state are read straight into their arrays (one allocation
    each) and hashed there. With ``model=False`` they are hashed as they stream
    from the file and not kept (``Checkpoint.model`` and ``state`` are empty):
    the whole file is checked, for the price of its metadata.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            version, meta, array, state = _read(path, handle, model)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {exc.strerror}") from None
    return Checkpoint(meta["round"], array, meta, path, state, version)


def _version(path: Path, prefix: bytes, start: int) -> int:
    """The format version of a file that starts with ``prefix`` (``start`` bytes long)."""
    if len(prefix) < start or not prefix.startswith(_PREFIX) or prefix[len(_PREFIX)] < 1:
        raise CheckpointError(f"{path}: not a p2pfl checkpoint")
    version = prefix[len(_PREFIX)]
    if version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this p2pfl reads "
            f"({VERSION}); upgrade p2pfl on this node"
        )
    return version


def _read(
    path: Path, handle: BinaryIO, keep: bool
) -> tuple[int, dict[str, Any], npt.NDArray[Any], dict[str, npt.NDArray[np.float32]]]:
    size = os.fstat(handle.fileno()).st_size
    start = len(MAGIC) + _LENGTH.size
    prefix = handle.read(start)
    version = _version(path, prefix, start)
    (length,) = _LENGTH.unpack_from(prefix, len(MAGIC))
    if length > MAX_METADATA or start + length > size:
        raise CheckpointError(f"{path}: truncated metadata")
    try:
        meta = msgpack.unpackb(handle.read(length), raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise CheckpointError(f"{path}: metadata is not msgpack: {exc}") from None
    _check_fields(path, meta)
    if version in COUNTED_FROM_ZERO:
        meta["round"] += 1
    if meta["round"] < 1:
        raise CheckpointError(f"{path}: metadata round {meta['round']!r} is not a round number")
    if version == STATELESS:
        meta.pop("state", None)
    layout = _state_layout(path, meta)
    nbytes = size - start - length
    dim = meta["dim"]
    if nbytes != 4 * (dim + sum(n for _, n in layout)):
        raise CheckpointError(f"{path}: truncated model ({nbytes} bytes for {dim!r})")
    array = _read_array(path, handle, dim, keep, meta["sha256"], "the model")
    digest = hashlib.sha256()
    state = {
        name: _read_array(path, handle, n, keep, digest, f"state {name!r}") for name, n in layout
    }
    if layout and digest.digest() != meta.get("state_sha256"):
        raise CheckpointError(f"{path}: the optimizer state does not match its hash")
    return version, meta, array, state if keep else {}


def _check_fields(path: Path, meta: object) -> None:
    """The fields every checkpoint has, with the types the reader relies on."""
    if not isinstance(meta, dict) or not all(k in meta for k in ("round", "dim", "sha256")):
        raise CheckpointError(f"{path}: metadata lacks round, dim or sha256")
    for name in ("round", "dim"):
        value = meta[name]
        if type(value) is not int or value < 0:
            raise CheckpointError(f"{path}: metadata {name!r} is not a non-negative integer")
    for name in ("sha256", "state_sha256"):
        digest = meta.get(name, b"\0" * 32)
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise CheckpointError(f"{path}: metadata {name!r} is not a SHA-256 digest")


def _state_layout(path: Path, meta: dict[str, Any]) -> list[tuple[str, int]]:
    layout = meta.get("state", [])
    if not isinstance(layout, list) or not all(
        isinstance(item, list)
        and len(item) == 2
        and isinstance(item[0], str)
        and type(item[1]) is int
        and item[1] >= 0
        for item in layout
    ):
        raise CheckpointError(f"{path}: metadata 'state' is not a list of [name, size]")
    return [(name, n) for name, n in layout]


def _read_array(
    path: Path, handle: BinaryIO, n: int, keep: bool, check: Any, what: str
) -> npt.NDArray[np.float32]:
    """Read ``n`` float32 values, hashing them: against ``check`` (bytes) or into it (a hash)."""
    array = np.empty(n if keep else 0, dtype="<f4")
    digest = hashlib.sha256() if isinstance(check, bytes) else check
    nbytes = 4 * n
    target = array.view(np.uint8).data if keep else memoryview(bytearray(min(nbytes, _BLOCK)))
    done = 0
    while done < nbytes:
        window = target[done:] if keep else target[: min(len(target), nbytes - done)]
        got = handle.readinto(window)
        if not got:
            raise CheckpointError(f"{path}: truncated {what} ({done} bytes for {n})")
        digest.update(window[:got])
        done += got
    if isinstance(check, bytes) and digest.digest() != check:
        raise CheckpointError(f"{path}: {what} does not match its hash")
    return array.astype(np.float32, copy=False)


def list_checkpoints(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(number in the name, path) of the checkpoint files in ``directory``, oldest first.

    The number is the round a current file holds; a version 1 or 2 file's is one less
    (module docstring): read the file for its round.
    """
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
