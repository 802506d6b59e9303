"""Saving a ledger file over an old one: the old one is kept as ``.prev``, nothing else is left."""

from __future__ import annotations

import os
from pathlib import Path

import nacl.signing

from p2pfl.ledger_file import load_ledger, save_ledger
from protocols.ledger import Ledger


def founded() -> Ledger:
    return Ledger.found(nacl.signing.SigningKey(b"\1" * 32), name="f", nonce=b"n", client_id=1)


def test_a_save_after_one_killed_before_its_rename_leaves_no_staging_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger"
    save_ledger(founded(), path)
    before = path.read_bytes()
    # What a save killed in its write leaves: the file was linked as ``.prev`` already,
    # the new one never renamed over it; ``ledger`` and ``ledger.prev`` are one file.
    os.link(path, tmp_path / "ledger.prev")
    ledger = founded()
    save_ledger(ledger, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger", "ledger.prev"]
    assert (tmp_path / "ledger.prev").read_bytes() == before
    assert load_ledger(path).federation_id == ledger.federation_id
