"""Write a file so that readers see either the old content or the new, never half of it.

The data goes to a temporary file in the same directory, then is renamed over
the target (``os.replace``) or, when overwriting is refused, hard-linked to it
(``os.link`` fails if the target exists, so two writers cannot both win).

A durable write (the default) fsyncs the temporary file before the rename and
the directory after it, so the new content survives a power loss. A write with
``durable=False`` skips both: readers and a killed process (SIGKILL) still see
the old file or the new one whole, since the kernel holds what was written;
only a power loss may bring back the old one. That is for files that say what
is true now and are rewritten soon anyway (``p2pfl.node.status``).

A writer killed before the rename leaves its temporary file behind (hidden,
``.NAME.XXXXXXXX.tmp``), never a half-written target; ``remove_partial`` deletes
such leftovers where a single writer owns the directory (a node, under its data
directory's lock, at start-up).

Callers create the directory first. (Also used by ``p2pfl.report``,
``p2pfl.simulate`` and the node's checkpoints, ``p2pfl.node.checkpoint``.)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write(
    path: str | os.PathLike[str],
    chunks: Iterable[Any],
    *,
    mode: int = 0o644,
    overwrite: bool = True,
    durable: bool = True,
) -> None:
    """Write the buffers ``chunks`` one after the other to ``path`` (permission bits ``mode``).

    Each chunk is anything ``write`` takes (bytes, a memoryview of an array): a
    model is streamed from its parameters, never joined into one copy first.
    With ``overwrite=False`` an existing ``path`` raises ``FileExistsError`` and is
    left as it was; ``durable`` is the module docstring's.
    """
    target = Path(path)
    directory = target.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_exclusive(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable:
        fsync_directory(directory)


def atomic_write_bytes(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o644,
    overwrite: bool = True,
    durable: bool = True,
) -> None:
    """``atomic_write`` of one buffer."""
    atomic_write(path, (data,), mode=mode, overwrite=overwrite, durable=durable)


def remove_partial(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that interrupted writes left in ``directory``; return them.

    Only for a directory whose writers are all stopped: a running writer's
    temporary file looks the same.
    """
    removed = []
    for path in sorted(Path(directory).glob(".*.*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _link_exclusive(tmp: Path, target: Path) -> None:
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:
        # A file system without hard links: check, then rename (a race remains, but only there).
        if target.exists():
            raise FileExistsError(str(target)) from None
        os.replace(tmp, target)
        return
    tmp.unlink()


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make the renames in ``directory`` survive a power loss (where the system can)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not possible everywhere (Windows); the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
