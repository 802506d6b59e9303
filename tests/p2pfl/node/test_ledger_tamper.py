"""A member's ledger update that deletes verified records: undone, and blamed on its link.

Four heart-disease sites over the in-memory transport (as in
``test_hostile_member``); mallory, a member running a real ``Node``, sends the
victim a Yjs update made on its own copy of the document that deletes every
member record and the plan. The victim puts them back, counts a ``ledger``
fault against mallory and audits it under mallory's id; the others receive the
victim's change and repair as one update and blame nobody.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pycrdt import Doc, Map
from test_hostile_member import faults_of, federation, started, until

from p2pfl.node.audit import read_entries
from p2pfl.node.channels import Channel, tag
from protocols.ledger_sync import Update


def deletion(state: bytes) -> bytes:
    """A Yjs update, made on a copy of ``state``, deleting every member record and the plan."""
    doc: Doc = Doc(client_id=4242)
    doc.apply_update(state)
    before = doc.get_state()
    for name in ("members", "plan"):
        entries = doc.get(name, type=Map)
        for key in list(entries.keys()):
            del entries[key]
    return bytes(doc.get_update(before))


def test_a_members_deletions_are_put_back_and_audited_under_its_id(tmp_path: Path) -> None:
    files = federation(tmp_path, {"peer_faults": 1000}, 5.0)
    mallory_id, victim_id = files[3].node_id, files[0].node_id

    async def scenario() -> tuple[list[dict[str, object]], list[dict[str, object]], bool]:
        async with started(files) as nodes:
            victim, mallory = nodes[0], nodes[3]
            await until(lambda: all(n.synced(mallory_id) for n in nodes[:3]))
            await until(lambda: mallory.synced(victim_id))
            members = {i: dict(n.ledger.members()) for i, n in enumerate(nodes[:3])}
            update = deletion(mallory.ledger.encode_state())
            mallory.links.send(victim_id, tag(Channel.LEDGER) + Update(update).encode())
            await until(lambda: faults_of(victim, mallory_id)["faults"] >= 1)
            await asyncio.sleep(0.5)  # what the victim floods on reaches the others
            kept = all(dict(n.ledger.members()) == members[i] for i, n in enumerate(nodes[:3]))
            kept = kept and all(n.ledger.plan() is not None for n in nodes[:3])
            others = [faults_of(n, victim_id) for n in nodes[1:3]]
            return [faults_of(victim, mallory_id)], others, kept

    victim_faults, others, kept = asyncio.run(scenario())
    assert kept  # every honest view and document still holds every member and the plan
    assert victim_faults[0]["faults"] >= 1 and "ledger" in victim_faults[0]["kinds"]
    assert all(f["faults"] == 0 for f in others)  # nobody blames the victim for its repair
    errors = [
        e
        for e in read_entries(files[0].directory / "audit.jsonl")
        if e["event"] == "peer-protocol-error" and e["kind"] == "ledger"
    ]
    assert errors and {e["peer"] for e in errors} == {mallory_id}
    assert "deleted verified record" in errors[0]["error"]
