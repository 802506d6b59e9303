"""Records a tool signed into the ledger file of a running node (``p2pfl.ledger_file``).

``p2pfl federation revoke`` (approve, invite, leave) run beside a node saves the
ledger file and posts the record to the file's inbox. The node merges each post
into its replica as it would a neighbour's update (checked, a forged overwrite
put back) and floods what changed, then deletes the post; a post it cannot
read or that belongs to another federation is audited and deleted. The node
takes its inbox when it starts and at every status interval.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pfl.errors import LedgerFileError
from p2pfl.ledger_file import take_inbox
from protocols.errors import DecodeError
from protocols.ledger import Ledger

log = logging.getLogger(__name__)


def merge_inbox(
    ledger_file: Path,
    ledger: Ledger,
    *,
    flood: Callable[[bytes], None],
    record: Callable[..., Any],
) -> int:
    """Merge every post in the inbox of ``ledger_file``; the number of posts that changed it."""
    merged = 0
    for post, found in take_inbox(ledger_file, ledger.federation_id):
        if isinstance(found, LedgerFileError):
            log.warning("%s", found)
            record("inbox-refused", post=post.name, error=str(found))
        else:
            changes = _merge(post, found, ledger, record)
            for change in changes:
                flood(change)
            merged += bool(changes)
            record("inbox-merged", post=post.name, changed=bool(changes))
        with contextlib.suppress(FileNotFoundError):
            post.unlink()
    return merged


def _merge(
    post: Path, updates: list[bytes], ledger: Ledger, record: Callable[..., Any]
) -> list[bytes]:
    changes: list[bytes] = []
    for update in updates:
        try:
            changes += ledger.apply_update(update, origin="inbox")
        except DecodeError as exc:
            record("inbox-refused", post=post.name, error=f"not a ledger update: {exc}")
            break
    for lost in ledger.take_violations():  # put back already
        what = f"{lost.map_name}[{lost.key!r}] by {lost.author}"
        record("inbox-refused", post=post.name, error=f"{lost.kind} verified record {what}")
    return changes
