"""Write a file so that readers see either the old content or the new, never half of it.

The data goes to a temporary file in the same directory, is flushed and
fsync'ed, then renamed over the target (``os.replace``) or, when overwriting is
refused, hard-linked to it (``os.link`` fails if the target exists, so two
writers cannot both win). The directory is fsync'ed last so the rename survives
a crash.

A writer killed before the rename leaves its temporary file behind (hidden,
``.NAME.XXXXXXXX.tmp``), never a half-written target; ``remove_partial`` deletes
such leftovers where a single writer owns the directory (a node, under its data
directory's lock, at start-up).

Callers create the directory first. (Also used by ``p2pfl.report`` and ``p2pfl.simulate``.)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644, overwrite: bool = True
) -> None:
    """Write ``data`` to ``path`` with permission bits ``mode``.

    With ``overwrite=False`` an existing ``path`` raises ``FileExistsError`` and is
    left as it was.
    """
    target = Path(path)
    directory = target.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_exclusive(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_directory(directory)


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


def _fsync_directory(directory: Path) -> None:
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
