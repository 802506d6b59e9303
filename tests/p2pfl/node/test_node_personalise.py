"""Daemons that fine-tune after the last round (``[personalise] method = "finetune"``).

Three hospitals in one process; each writes ``personalised.npy``, which must be
exactly what ``p2pfl.finetune`` makes of that node's last checkpoint on its own
data (the simulation's function, the node's index in the roster as its site).
"""

from __future__ import annotations

import numpy as np
import torch
from memory_federation import SITES, plan, run_peers

from p2pfl.finetune import finetune
from p2pfl.models import build_model
from p2pfl.node.bootstrap import Site, local_federation
from p2pfl.node.checkpoint import read_checkpoint
from p2pfl.node.examples import heart_site
from p2pfl.node.personal import PERSONALISED
from p2pfl.spec import plan_from_table
from p2pfl.training import schedule_from

ROUNDS = 2
FINETUNE = {"method": "finetune", "max_steps": 20, "eval_every": 2, "patience": 3}


def test_each_daemon_writes_the_model_the_simulation_would_fine_tune(tmp_path) -> None:
    table = {**plan(ROUNDS), "personalise": FINETUNE}
    sites = [
        Site(s.lower(), f"memory://{s.lower()}", "p2pfl.node.examples:heart_site", [s])
        for s in SITES
    ]
    files = local_federation(tmp_path, sites, table, tls=False)
    run = run_peers(files)
    assert any("personalised model written" in line for line in run.logs)
    spec = plan_from_table(table)
    roster = sorted(f.node_id for f in files)
    kept = []
    for site, f in zip(SITES, files, strict=True):
        written = np.load(f.directory / PERSONALISED)
        last = read_checkpoint(f.directory / "checkpoints" / f"round-{ROUNDS:06d}.ckpt").model
        data = heart_site(site)
        model = build_model("logreg", (37,), 2, seed=0)
        expected = finetune(
            model,
            torch.from_numpy(last).unsqueeze(0),
            data.x_train,
            data.y_train,
            schedule_from(spec.training),
            spec.personalise,
            seed=spec.seed,
            site=roster.index(f.node_id),
        )
        np.testing.assert_array_equal(written, expected.params[0].numpy())
        assert np.array_equal(written, last) == (expected.steps == 0)
        kept.append(expected.steps)
    assert any(kept), kept  # some site did fine-tune (not only kept the gossip model)
