"""``p2pfl.Peer``: the node daemon embedded in a Python program.

    import asyncio, p2pfl

    async def main() -> None:
        async with p2pfl.Peer("node.toml") as peer:
            async def show() -> None:
                async for event in peer.events():      # ends with the run's Finished
                    print(event)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(show())
                await peer.run(rounds=20)
            model = peer.model()                       # a torch module with the result

    asyncio.run(main())

A ``Peer`` is exactly the daemon's node (``p2pfl.node.node.Node``): same
config file, same data directory (ledger, checkpoints, audit log, status),
same links, same protocol cores; ``p2pfl node run`` is a thin CLI around it.
Pass ``network=MemoryNetwork()`` and ``listen = "memory://NAME"`` to run a
whole federation inside one process, with no sockets. ``dashboard="127.0.0.1:8080"``
serves the node's live page (``p2pfl.node.dashboard``) while the peer runs, as
``[dashboard] listen`` in its config does; ``peer.dashboard_url`` says where.

Entering raises what ``p2pfl node run`` refuses with, before anything is
written (``p2pfl.node.preflight``): ``DataDirInUse`` (another node holds the
data directory), ``PlanError`` (the ledger's plan cannot run), ``ConfigError``
(the listen address is not the ledger record, the TLS pair does not match, the
data entrypoint cannot be imported) or ``DataError`` (the entrypoint fails or
its data do not fit the plan); all are in ``p2pfl.node.errors``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from typing import Any, Self

from torch import nn

from p2pfl.node.config import NodeConfig, check_safe_settings, load_config
from p2pfl.node.errors import NodeStopped
from p2pfl.node.events import Event
from p2pfl.node.node import Node
from p2pfl.node.numbering import FIRST
from p2pfl.transport import MemoryNetwork


class Peer:
    """One federation member in this process; ``async with`` starts and stops it."""

    def __init__(
        self,
        config: NodeConfig | str | os.PathLike[str],
        *,
        network: MemoryNetwork | None = None,
        passphrase: bytes | None = None,
        insecure: bool | None = None,
        dashboard: str | None = None,
    ) -> None:
        if not isinstance(config, NodeConfig):
            config = load_config(config)
        if insecure is not None:
            config = config.replace(insecure=insecure)
        if dashboard is not None:
            section = dataclasses.replace(config.dashboard, listen=dashboard)
            config = config.replace(dashboard=section)
        if network is None:  # over a real network, the same refusals as `p2pfl node run`
            check_safe_settings(config)
        self._node = Node(config, network=network, passphrase=passphrase)
        self._entered = False

    async def __aenter__(self) -> Self:
        await self._node.__aenter__()
        self._entered = True
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        await self._node.__aexit__(exc_type, exc, tb)

    @property
    def node(self) -> Node:
        return self._node

    @property
    def node_id(self) -> str:
        return self._node.node_id

    @property
    def address(self) -> str:
        """Where this peer listens (with the port the system chose, for port 0)."""
        return self._node.address

    @property
    def dashboard_url(self) -> str | None:
        """The live page's URL (with its token where one is required), when it is served."""
        dashboard = self._node.dashboard
        return None if dashboard is None else dashboard.url

    @property
    def round(self) -> int:
        """The round this peer is in, or will run next (rounds are numbered from 1)."""
        return self._node.rounds.round if self._entered else FIRST

    async def run(self, rounds: int | None = None) -> int:
        """Train until ``rounds`` rounds are completed in all (the plan's by default).

        ``PlanError`` before anything else when ``rounds`` is beyond the plan's.
        """
        if not self._entered:
            raise NodeStopped("use `async with Peer(config) as peer:` before run()")
        return await self._node.run(rounds)

    def events(self) -> AsyncIterator[Event]:
        """Events from now until the run finishes or the peer stops (``p2pfl.node.events``)."""
        return self._node.events()

    def model(self) -> nn.Module:
        """A copy of the model with this peer's current parameters."""
        return self._node.rounds.current_model()

    def status(self) -> dict[str, Any]:
        """What ``p2pfl node status --json`` shows for a daemon."""
        return self._node.status()
