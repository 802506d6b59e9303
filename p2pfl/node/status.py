"""The status file a running node keeps in its data directory (``p2pfl node status`` reads it).

``status.json`` is rewritten atomically (temp file, rename) whenever the node
changes phase and every ``status_interval`` seconds, and once more when it
stops, after its links are closed, so a reader never sees half a file. It
holds the node id, the federation, the phase (the text of a
``p2pfl.node.phases.Phase``: ``finished``, ``stopped`` or ``failed`` once the
run is over), the round in progress (``round``, numbered from 1), the rounds
completed (``completed``: 0 before the first), each neighbour link's live state
with the last round mixed with it, and the last error.

Readers take what they find: ``read_status`` promises a JSON object, nothing
about its fields (another version, or a hand, may have written it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from p2pfl.atomic import atomic_write_bytes
from p2pfl.errors import P2PFLError

STATUS_FILE = "status.json"


def write_status(data_dir: str | os.PathLike[str], status: dict[str, Any]) -> None:
    text = json.dumps(status, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(Path(data_dir) / STATUS_FILE, text.encode())


def read_status(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(data_dir) / STATUS_FILE
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise P2PFLError(f"{path}: no status file (has the node ever run here?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise P2PFLError(f"{path}: unreadable status file: {exc}") from None
    if not isinstance(document, dict):
        raise P2PFLError(f"{path}: not a status file")
    return document


def process_alive(pid: object) -> bool:
    """Whether a process with this pid exists (the daemon that wrote the status may be gone)."""
    if type(pid) is not int or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True
