"""``p2pfl.atomic``: a write killed halfway leaves the old file whole, and its leftover goes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from p2pfl.atomic import atomic_write_bytes, remove_partial

ROOT = Path(__file__).resolve().parents[2]

KILLED_HALFWAY = """
import os, signal, sys
from p2pfl.atomic import atomic_write_bytes
real = os.fdopen
class Half:
    def __init__(self, handle): self.handle = handle
    def __enter__(self): return self
    def __exit__(self, *exc): self.handle.close()
    def __getattr__(self, name): return getattr(self.handle, name)
    def write(self, data):
        self.handle.write(data[: len(data) // 2]); self.handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
os.fdopen = lambda fd, *a, **k: Half(real(fd, *a, **k))
atomic_write_bytes(sys.argv[1], b"new" * 1000)
"""


def test_a_write_killed_halfway_leaves_the_old_file_and_a_leftover_the_next_start_removes(
    tmp_path: Path,
) -> None:
    target = tmp_path / "ledger"
    atomic_write_bytes(target, b"old")
    (tmp_path / "notes.txt").write_text("not ours")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-c", KILLED_HALFWAY, str(target)]
    proc = subprocess.run(argv, check=False, env=env, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old"
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert len(left) == 1 and left[0].startswith(".ledger.")

    removed = remove_partial(tmp_path)
    assert [p.name for p in removed] == left
    assert sorted(os.listdir(tmp_path)) == ["ledger", "notes.txt"]
    assert remove_partial(tmp_path) == []
