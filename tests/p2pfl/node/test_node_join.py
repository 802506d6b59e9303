"""A fifth site joins four daemons that train (``p2pfl.node.joining``).

Four sites of the UCI Heart Disease data (the patients shuffled among five, as in
``simulations/membership.toml``) train; once they are past round ``INVITE`` the
founder invites a fifth, which approves the plan and starts its daemon. The members
acknowledge its join, and from the boundary the fifth is a member of the new epoch:
it starts from the mean of its neighbours' models, checked against the digests they
record in the ledger, trains every round from there to the last, and its final model
is as good as theirs on the same test set.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from daemons import LIMITS, ROOT, audited, heart_plan, log_tail, start_logged, wait_for
from loopback import free_ports

from p2pfl.engines import prepare
from p2pfl.identity import create_identity, load_identity
from p2pfl.ledger_file import load_ledger, save_ledger, save_record
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation, site_files
from p2pfl.node.checkpoint import list_checkpoints, read_checkpoint
from p2pfl.scenario import load_scenario
from p2pfl.training import evaluate

pytestmark = pytest.mark.slow

SCENARIO = ROOT / "simulations" / "membership.toml"  # its data: heart, iid over five sites
ROUNDS = 1000  # the run goes on while the fifth daemon starts
INVITE = 20


def plan() -> dict[str, object]:
    return heart_plan(ROUNDS, round_timeout=10.0, lr=0.02)  # type: ignore[no-any-return]


def site(i: int, port: int) -> Site:
    return Site(
        f"s{i}",
        f"ws://127.0.0.1:{port}",
        "p2pfl.node.examples:scenario_node",
        kwargs={"scenario": str(SCENARIO), "index": i},
        limits=dict(LIMITS),
    )


def completed(s: SiteFiles) -> int:
    return max((e["round"] for e in audited(s, "round")), default=0)


def final_model(s: SiteFiles) -> torch.Tensor:
    (_, path), *_ = reversed(list_checkpoints(s.directory / "checkpoints"))
    ckpt = read_checkpoint(path)
    assert ckpt.round == ROUNDS
    return torch.from_numpy(ckpt.model)


def test_a_fifth_site_joins_four_that_train(tmp_path: Path) -> None:
    ports = free_ports(5)
    members = local_federation(tmp_path, [site(i, ports[i]) for i in range(4)], plan(), tls=False)
    founder = members[0]
    procs = [start_logged(s) for s in members]
    try:
        assert wait_for(lambda: completed(founder) >= INVITE, 180), log_tail(founder)
        # The founder invites the fifth (``federation invite``, posted to its running node);
        # the fifth approves the plan in the ledger it was invited into and starts.
        newcomer = create_identity()
        path = founder.directory / "ledger"
        ledger = load_ledger(path)
        founder_key = load_identity(founder.directory / "node.key").signing_key
        update = ledger.admit(
            founder_key,
            bytes(newcomer.verify_key),
            clock=ledger.next_clock(),
            address=f"ws://127.0.0.1:{ports[4]}",
            institution="s4",
        )
        assert save_record(ledger, path, update)
        plan_hash = ledger.plan_hash()
        assert plan_hash is not None
        ledger.approve(newcomer.signing_key, plan_hash, clock=ledger.next_clock())
        fifth = site_files(tmp_path, site(4, ports[4]), newcomer, ledger, tls=False)
        save_ledger(ledger, fifth.directory / "ledger")
        procs.append(start_logged(fifth))
        for proc, s in zip(procs, [*members, fifth], strict=True):
            assert proc.wait(timeout=600) == 0, log_tail(s)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)

    everyone = [*members, fifth]
    (joined,) = audited(fifth, "joining")
    start = joined["round"]
    assert INVITE < start < ROUNDS
    assert sorted(joined["roster"]) == sorted(s.node_id for s in members)
    # Every member switched to the same epoch at the same round, the fifth in it.
    expected = [(1, start, sorted(s.node_id for s in everyone))]
    for s in members:
        assert [(e["number"], e["start"], e["members"]) for e in audited(s, "epoch")] == expected
    (began,) = audited(fifth, "start-model")
    assert began["round"] >= start - 1 and len(began["peers"]) == 4
    rounds = [e["round"] for e in audited(fifth, "round")]
    assert rounds == list(range(began["round"] + 1, ROUNDS + 1))
    for s in members:
        assert completed(s) == ROUNDS
        assert fifth.node_id in audited(s, "round")[-1]["arrived"]  # it mixes with them
    # On the same test set the fifth's final model is within a point of the others'.
    setup = prepare(load_scenario(SCENARIO))
    data = setup.data
    params = torch.stack([final_model(s) for s in everyone])
    acc, _ = evaluate(setup.model, params, data.x_global_test, data.y_global_test)
    others = acc[:4].mean().item()
    assert abs(acc[4].item() - others) <= 0.01, acc
