"""What a node keeps in its data directory, and when each file is made durable.

``NodeStorage`` owns the node's writes other than checkpoints
(``p2pfl.node.checkpoint``): the audit log, the ledger file and the status file.
Each is written so that a killed process (SIGKILL) leaves every file whole and
loses only what was not yet handed to the kernel; what differs is when the
writes are fsynced, i.e. what a power loss may take back:

- a round's group (``persist``, once per round, after its checkpoint): the
  ledger file, fsynced, and the audit lines recorded so far, fsynced, in one trip
  to a worker thread, so the event loop goes on serving frames meanwhile. A
  refusal of the disk raises ``StorageError``: the node stops after that round;
- the ledger's other saves (housekeeping, while it has changed, and at the stop)
  and the audit's other lines: synced at the status tick (``status_interval``),
  errors only logged (the next round's group decides);
- the status file: never fsynced (nothing is resumed from it), written from its
  own thread (``p2pfl.node.status.StatusWriter``).

One lock orders the ledger saves of the loop and of worker threads (the file
keeps the replaced one as ``.prev``, through one staging name).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from p2pfl.atomic import remove_partial
from p2pfl.errors import LedgerFileError
from p2pfl.ledger_file import ledger_file_bytes, write_ledger_file
from p2pfl.node.audit import AuditLog
from p2pfl.node.config import NodeConfig
from p2pfl.node.errors import StorageError, storage_error
from p2pfl.node.status import StatusWriter
from protocols.ledger import Ledger

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.jsonl"


class NodeStorage:
    """The audit log, ledger file and status file of one node (module docstring)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.data_dir = config.data_dir
        self.audit: AuditLog | None = None
        self.status = StatusWriter(config.data_dir)
        self.ledger_dirty = False
        self._saving = threading.Lock()

    def open_audit(self) -> AuditLog:
        self.audit = AuditLog(self.data_dir / AUDIT_FILE, sync_each=False)
        return self.audit

    def remove_partial(self) -> list[Path]:
        """Temporary files of writes a kill interrupted (data directory and checkpoints)."""
        removed: list[Path] = []
        for directory in (self.data_dir, self.data_dir / "checkpoints"):
            removed += remove_partial(directory)
        return removed

    # -- the ledger file ----------------------------------------------------------------

    def save_ledger(self, ledger: Ledger) -> None:
        """Put the ledger on disk now; ``StorageError`` if the directory refuses it."""
        self.ledger_dirty = False
        self._write_ledger(ledger_file_bytes(ledger))

    def save_ledger_quietly(self, ledger: Ledger) -> str | None:
        """``save_ledger``, an error returned (and logged) rather than raised."""
        try:
            self.save_ledger(ledger)
        except (StorageError, LedgerFileError) as exc:
            log.error("%s", exc)
            return str(exc)
        return None

    async def save_ledger_in_thread(self, ledger: Ledger) -> str | None:
        """``save_ledger_quietly`` with the file's writing in a worker thread."""
        self.ledger_dirty = False
        data = ledger_file_bytes(ledger)  # the ledger is read in the loop's thread only
        try:
            await asyncio.to_thread(self._write_ledger, data)
        except (StorageError, LedgerFileError) as exc:
            log.error("%s", exc)
            return str(exc)
        return None

    async def persist(self, ledger: Ledger) -> None:
        """A round's durable group: the ledger file and the audit lines so far, fsynced.

        The ledger is encoded here, in the loop's thread; the writes and fsyncs run in
        one worker thread. ``StorageError`` if the disk refuses either.
        """
        self.ledger_dirty = False
        data = ledger_file_bytes(ledger)
        await asyncio.to_thread(self._persist, data)

    def _persist(self, data: bytes) -> None:
        self._write_ledger(data)
        self.sync_audit()

    def _write_ledger(self, data: bytes) -> None:
        path = self.config.ledger_file
        try:
            with self._saving:
                write_ledger_file(data, path)
        except LedgerFileError as exc:
            self.ledger_dirty = True  # still to save
            cause = exc.__cause__
            if not isinstance(cause, OSError):
                raise
            raise storage_error("the ledger file", path, cause, None) from None

    # -- the audit log ------------------------------------------------------------------

    def sync_audit(self) -> None:
        """The audit lines recorded so far, on disk; ``StorageError`` if the disk refuses."""
        if self.audit is None:
            return
        try:
            self.audit.sync()
        except OSError as exc:
            raise storage_error("the audit log", self.audit.path, exc, None) from None
