"""What a reset link loses, the replay brings back: frames a slower neighbour still needs.

A connection reset kills what was written to its socket and not yet read at
the other end. Two ``LinkManager``s run over a scripted connection that holds
what is sent "in flight" until the test resets it (as the fault proxy does
with an RST), then over a fresh one. The soak's stalls came from this: a node
that finished its round pruned that round's frames at once, so the masked
input or reveal a slower neighbour was still waiting for died with the reset,
and that neighbour's secure round waited for its timeout and declared the
node dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from p2pfl.node.exchange import REPLAY_ROUNDS, replay_floor
from p2pfl.node.links import LinkManager, LinkState, backoff
from p2pfl.transport import Connection, TransportClosed

A, B = "a" * 26, "b" * 26
_RESET = object()


class Wire:
    """One connection's two ends; with ``hold``, sent frames wait in ``in_flight``."""

    def __init__(self, *, hold: bool) -> None:
        self.hold = hold
        self.in_flight: list[tuple[str, bytes]] = []
        self.queues: dict[str, asyncio.Queue[Any]] = {A: asyncio.Queue(), B: asyncio.Queue()}
        self.cut = False

    def end(self, me: str) -> End:
        return End(self, me, B if me == A else A)

    def reset(self) -> None:
        """An RST both ways: whatever is still in flight is lost."""
        self.cut = True
        self.in_flight.clear()
        for queue in self.queues.values():
            queue.put_nowait(_RESET)


class End(Connection):
    def __init__(self, wire: Wire, me: str, peer: str) -> None:
        self.wire, self.me, self.peer = wire, me, peer

    @property
    def peer_id(self) -> str:
        return self.peer

    @property
    def remote_address(self) -> str:
        return f"test://{self.peer}"

    @property
    def max_message_size(self) -> int:
        return 1 << 20

    async def send(self, message: bytes | bytearray | memoryview) -> None:
        if self.wire.cut:
            raise TransportClosed("reset")
        if self.wire.hold:
            self.wire.in_flight.append((self.peer, bytes(message)))
        else:
            self.wire.queues[self.peer].put_nowait(bytes(message))

    async def recv(self) -> bytes:
        item = await self.wire.queues[self.me].get()
        if item is _RESET:
            raise TransportClosed("connection reset by peer")
        return item  # type: ignore[no-any-return]

    async def close(self) -> None:
        if not self.wire.cut:
            self.wire.reset()

    async def wait_closed(self) -> None:
        return None


def manager(me: str, received: list[bytes]) -> LinkManager:
    return LinkManager(
        me,
        None,  # type: ignore[arg-type]  # the test serves connections itself: nothing dials
        on_frame=lambda peer, frame: received.append(bytes(frame)),
        on_up=lambda peer: [],
        on_down=lambda peer, reason: None,
        delays=backoff,
    )


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def up(links: LinkManager, peer: str) -> bool:
    link = links.links.get(peer)
    return link is not None and link.state is LinkState.UP


async def lost_then_replayed(floor: int) -> list[bytes]:
    """A sends a round-3 frame, it is in flight, A prunes at ``floor``, the link resets."""
    at_a: list[bytes] = []
    at_b: list[bytes] = []
    a, b = manager(A, at_a), manager(B, at_b)
    wire = Wire(hold=True)
    serving = [asyncio.create_task(m.serve(wire.end(me))) for m, me in ((a, A), (b, B))]
    await until(lambda: up(a, B) and up(b, A))
    a.send(B, b"masked input of round 3", round=3)
    await until(lambda: wire.in_flight != [])
    a.prune(B, floor)  # A finished round 3 before B read the frame
    wire.reset()
    await asyncio.gather(*serving)
    again = Wire(hold=False)
    serving = [asyncio.create_task(m.serve(again.end(me))) for m, me in ((a, A), (b, B))]
    try:
        async with asyncio.timeout(1.0):
            await until(lambda: b"masked input of round 3" in at_b)
    except TimeoutError:
        pass
    again.reset()
    await asyncio.gather(*serving)
    return at_b


def test_a_frame_lost_in_a_reset_after_our_round_ended_is_replayed_to_a_slower_peer() -> None:
    # B's ledger progress says it completed round 2; A just completed round 3.
    floor = replay_floor(peer_done=2, done=3)
    assert asyncio.run(asyncio.wait_for(lost_then_replayed(floor), 10)) == [
        b"masked input of round 3"
    ]


def test_pruning_past_the_round_loses_the_frame_for_good() -> None:
    """What the floor guards against: the old rule (our own next round) dropped it."""
    assert asyncio.run(asyncio.wait_for(lost_then_replayed(4), 10)) == []


@pytest.mark.parametrize(
    ("peer_done", "done", "floor"),
    [
        (2, 3, 2),  # the peer still in round 3 (and our round-3 frames one round ahead)
        (3, 3, 3),  # both past round 3: round 3's frames go, only not round 4's received early
        (5, 1, 1),  # the peer ahead: its sender side of our round 2 may still need ours
        (0, 10, 11 - REPLAY_ROUNDS),  # a peer that stays down: the last rounds only
    ],
)
def test_the_replay_floor_keeps_a_round_until_both_ends_are_past_it(
    peer_done: int, done: int, floor: int
) -> None:
    assert replay_floor(peer_done, done) == floor


def test_a_newer_round_makes_room_by_forgetting_the_oldest_frames() -> None:
    links = manager(A, [])
    links.replay_budget = 10
    links.send(B, b"1111", round=1)
    links.send(B, b"2222", round=2)
    links.send(B, b"3333", round=3)  # round 1 goes to make room
    assert links.links[B].retained == [(2, b"2222"), (3, b"3333")]
    links.send(B, b"33", round=3)  # fits
    links.send(B, b"3", round=3)  # round 2 goes
    assert links.links[B].retained == [(3, b"3333"), (3, b"33"), (3, b"3")]
    links.send(B, b"x" * 11, round=4)  # larger than the budget: never kept, nothing forgotten
    assert links.links[B].retained_bytes == 7
    links.send(B, b"4444", round=4)  # the oldest of round 3 goes, as much as needed
    assert links.links[B].retained == [(3, b"33"), (3, b"3"), (4, b"4444")]
    links.send(B, b"4444444", round=4)  # would not fit even without round 3: nothing goes
    assert links.links[B].retained == [(3, b"33"), (3, b"3"), (4, b"4444")]
