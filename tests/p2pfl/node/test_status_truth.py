"""The status a node writes is true: live link states, and a last word when the run ends.

A link's state comes from its connection (``p2pfl.node.links``): ``down`` with
the error that took it down, ``connecting`` with the attempt's number,
``refused`` with the handshake's reason, ``up``; an error is shown only with
the state it explains. A dial loop is driven here through a scripted
transport (no sockets, no sleeps). After a run, the status file says
"finished" with the rounds completed, every link is down, and each neighbour
carries the last round mixed with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from memory_federation import ROUNDS, Run

from p2pfl.node.links import LinkManager, LinkState
from p2pfl.node.status import read_status
from p2pfl.transport import AuthenticationFailed, TransportClosed


class Line:
    """A connection that stays open until ``close``, then reads as closed by the peer."""

    peer_id = "b"

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def send(self, message: bytes | bytearray) -> None:
        pass

    async def recv(self) -> bytes:
        await self.closed.wait()
        raise TransportClosed("the peer went away")

    async def close(self) -> None:
        self.closed.set()


class Script:
    """A transport whose ``connect`` calls do, in turn, what ``outcomes`` says."""

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.manager: LinkManager | None = None
        self.during: list[dict[str, Any]] = []  # the link as each attempt saw it
        self.hanging = asyncio.Event()

    async def connect(self, address: str, expected_peer: str | None = None) -> Line:
        assert self.manager is not None
        self.during.append(self.manager.links["b"].snapshot())
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome == "hang":
            self.hanging.set()
            await asyncio.Event().wait()
        return outcome  # type: ignore[no-any-return]


@dataclass
class Dialled:
    """A manager dialling ``b`` through a ``Script``, and its link as seen meanwhile."""

    manager: LinkManager
    transport: Script
    between: list[dict[str, Any]] = field(default_factory=list)  # after each attempt
    up: list[dict[str, Any]] = field(default_factory=list)  # as each connection came up


def scripted(outcomes: list[Any]) -> Dialled:
    transport = Script(outcomes)
    lines = [o for o in outcomes if isinstance(o, Line)]

    def delays() -> Iterator[float]:
        while True:
            seen.between.append(manager.links["b"].snapshot())
            yield 0.0

    def on_up(peer: str) -> list[bytes]:
        seen.up.append(manager.links[peer].snapshot())
        lines.pop(0).closed.set()  # the link ends as soon as it is up
        return []

    manager = LinkManager(
        "a",
        transport,  # type: ignore[arg-type]
        on_frame=lambda peer, data: None,
        on_up=on_up,
        on_down=lambda peer, reason: None,
        delays=delays,
        stranger_delays=delays,  # a `not-member` refusal waits on its own backoff
    )
    seen = Dialled(manager, transport)
    transport.manager = manager
    manager.add_neighbour("b", "memory://b")
    return seen


def test_each_link_state_comes_from_the_connection_with_its_own_error() -> None:
    refusal = AuthenticationFailed("b", "not-member", "no member has this key", by_peer=True)
    outcomes: list[Any] = [OSError("cannot connect"), OSError("cannot connect"), refusal]
    outcomes += [Line(), "hang"]
    seen = scripted(outcomes)

    async def drive() -> None:
        task = asyncio.create_task(seen.manager.dial_loop("b"))
        await asyncio.wait_for(seen.transport.hanging.wait(), 10)
        task.cancel()

    asyncio.run(drive())
    failed, again, refused, closed = seen.between
    assert (failed["state"], failed["last_error"], failed["attempts"]) == (
        "down",
        "cannot connect",
        1,
    )
    assert again["state"] == "down" and again["attempts"] == 2
    assert again["since"] == failed["since"]  # down all along: since when it has been trying
    assert refused["state"] == "refused" and refused["attempts"] == 3
    assert (
        "not-member" in refused["last_error"] and "no member has this key" in refused["last_error"]
    )
    (up,) = seen.up
    assert up["state"] == "up" and up["last_error"] == "" and up["attempts"] == 0
    assert closed["state"] == "down" and closed["last_error"] == "the peer went away"
    assert closed["since"] >= up["since"] > failed["since"]
    dialling = [(s["state"], s["attempts"]) for s in seen.transport.during]
    assert dialling == [("connecting", n) for n in (1, 2, 3, 4)] + [("connecting", 1)]
    assert all(s["last_error"] == "" for s in seen.transport.during)

    seen.manager.shut("the node stopped")
    (link,) = seen.manager.snapshot().values()
    assert link["state"] == "down" and link["last_error"] == "the node stopped"


def test_a_refusal_does_not_take_down_an_open_link() -> None:
    manager = scripted([Line()]).manager
    link = manager.links["b"]
    manager.refused("b", "bad-signature: someone else claimed b")
    assert link.snapshot()["state"] == "refused"
    link.session = object()  # type: ignore[assignment]  # a live connection
    link.set_state(LinkState.UP)
    manager.refused("b", "bad-signature: someone else claimed b")
    assert link.snapshot()["state"] == "up" and link.snapshot()["last_error"] == ""


def test_a_finished_node_says_so_and_lists_no_link_up(finished_run: Run) -> None:
    ids = {site.node_id for site in finished_run.files}
    for site in finished_run.files:
        status = read_status(site.directory)
        assert status["phase"] == "finished" and status["completed"] == ROUNDS
        neighbours = status["neighbours"]
        assert set(neighbours) == ids - {site.node_id}
        for link in neighbours.values():
            assert link["state"] == "down" and link["last_error"], link
            assert link["last_round"] == ROUNDS  # their frames were mixed in every round
