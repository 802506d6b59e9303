"""A short ``simulations/bench/ledger_flood_bench.py``: one daemon floods another with
members' progress records over ws on loopback; the receiver, which holds its ledger
frames until its loop turns and handles them together, loses none, blames nobody, and
ends with the view the records make (the bench measures the rate)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from p2pfl.node.channels import Channel, tagged
from p2pfl.node.node import Node
from protocols.ledger import Ledger
from protocols.ledger_sync import Update

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from simulations.bench.ledger_flood_bench import (  # noqa: E402
    config,
    federation,
    progress_updates,
    synced,
)

MEMBERS, UPDATES = 60, 400


def test_a_flood_of_progress_records_is_applied_whole(tmp_path: Path) -> None:
    configs, ledger, keys = federation(tmp_path, MEMBERS, tls=False)
    updates = progress_updates(ledger, keys, UPDATES)
    expected = Ledger.from_updates(ledger.federation_id, [ledger.encode_state(), *updates])

    async def scenario() -> tuple[dict[str, int], int, int, dict[str, object]]:
        async with (
            Node(config(configs[0], False)) as receiver,
            Node(config(configs[1], False)) as sender,
        ):
            async with asyncio.timeout(60):
                await asyncio.gather(synced(receiver), synced(sender))
                base = receiver.sync.changes
                drains = receiver.replica.drains
                for update in updates:
                    frame = tagged(Channel.LEDGER, Update(update).encode())
                    sender.links.send(receiver.node_id, frame)
                while receiver.sync.changes < base + UPDATES:
                    await asyncio.sleep(0.01)
            return (
                receiver.ledger.progress(),
                receiver.sync.changes - base,
                receiver.replica.drains - drains,
                receiver.status()["peer_faults"],
            )

    progress, changes, drains, faults = asyncio.run(scenario())
    assert progress == expected.progress() and len(progress) == MEMBERS
    assert set(progress.values()) == {-(-UPDATES // MEMBERS), UPDATES // MEMBERS}
    assert changes == UPDATES and faults == {}
    assert drains <= UPDATES // 4  # frames that came together were handled together (2-3 here)
