"""Sites that accept no inbound connection: a member fact, a config setting, the dialling rule.

An unreachable member's ledger record has no address; its config says
``[node] reachable = false`` (or leaves ``listen`` empty), so it starts no
listener and dials out. On an edge with exactly one reachable end the other
end dials, whatever the ids (``p2pfl.node.links.dials``).
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import tomli_w
from memory_federation import plan

import p2pfl
from p2pfl.errors import ConfigError
from p2pfl.identity import create_identity
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.config import check_safe_settings, config_from_table, load_config
from p2pfl.node.links import dials
from p2pfl.node.preflight import check_unreachable
from p2pfl.transport import Authenticator, MemoryNetwork, WsTransport
from protocols.ledger import Ledger

SITES = ("Cleveland", "Hungary", "Switzerland")


def sites(unreachable: set[str], *, limits: dict[str, Any] | None = None) -> list[Site]:
    return [
        Site(
            name.lower(),
            f"memory://{name.lower()}",
            "p2pfl.node.examples:heart_site",
            [name],
            limits=limits or {"status_interval": 0.2},
            reachable=name not in unreachable,
        )
        for name in SITES
    ]


# -- the member fact and the rule --------------------------------------------------------------


def test_a_member_recorded_without_an_address_is_unreachable() -> None:
    founder, other = nacl.signing.SigningKey(b"\1" * 32), nacl.signing.SigningKey(b"\2" * 32)
    ledger = Ledger.found(founder, name="f", nonce=b"n" * 16, address="wss://a:1")
    ledger.admit(founder, bytes(other.verify_key), clock=ledger.next_clock())
    reach = {m.address: m.reachable for m in ledger.members().values()}
    assert reach == {"wss://a:1": True, "": False}


@pytest.mark.parametrize(
    ("me", "peer", "me_reachable", "peer_reachable", "expected"),
    [
        ("a", "b", True, True, True),  # both reachable: the smaller id dials
        ("b", "a", True, True, False),
        ("a", "b", True, False, False),  # only the peer is unreachable: it dials us
        ("b", "a", True, False, False),
        ("a", "b", False, True, True),  # only we are unreachable: we dial, whatever the ids
        ("b", "a", False, True, True),
        ("a", "b", False, False, True),  # neither: both dial the relay
        ("b", "a", False, False, True),
    ],
)
def test_the_unreachable_end_dials_whatever_the_ids(
    me: str, peer: str, me_reachable: bool, peer_reachable: bool, expected: bool
) -> None:
    got = dials(me, peer, me_reachable=me_reachable, peer_reachable=peer_reachable)
    assert got is expected
    if me_reachable != peer_reachable:  # exactly one end dials
        back = dials(peer, me, me_reachable=peer_reachable, peer_reachable=me_reachable)
        assert back is not got


# -- the config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "listens"),
    [
        ({"listen": "wss://0.0.0.0:7443"}, True),
        ({"listen": "wss://0.0.0.0:7443", "reachable": False}, False),
        ({"listen": ""}, False),
    ],
)
def test_reachable_false_or_an_empty_listen_starts_no_listener(
    tmp_path: Path, node: dict[str, Any], listens: bool
) -> None:
    (tmp_path / "node.key").write_bytes(b"")
    (tmp_path / "node.key").chmod(0o600)
    tmp_path.chmod(0o700)
    config = config_from_table({"node": node}, tmp_path)
    assert config.listens is listens
    if listens:  # a listener serves wss: it needs a [tls] pair
        with pytest.raises(ConfigError, match=r"\[tls\] cert and key"):
            check_safe_settings(config)
    else:  # a node that only dials needs none
        check_safe_settings(config)


def test_reachable_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reachable"):
        config_from_table({"node": {"reachable": "no"}}, tmp_path)


def test_the_template_documents_reachable() -> None:
    from p2pfl.node.config import template

    text = template()
    assert "# reachable = false" in text
    table = tomllib.loads(text.replace("# reachable = false", "reachable = false"))
    assert table["node"]["reachable"] is False


def test_a_dial_only_websocket_transport_needs_no_tls_and_refuses_to_listen() -> None:
    auth = Authenticator(nacl.signing.SigningKey(b"\1" * 32), lambda _: None)
    with pytest.raises(ConfigError, match="insecure=True"):
        WsTransport(auth)

    async def main() -> None:
        async with WsTransport(auth, dial_only=True) as transport:

            async def handler(conn: Any) -> None:
                pass

            with pytest.raises(ConfigError, match="only dials"):
                await transport.listen("wss://127.0.0.1:0", handler)

    asyncio.run(main())


# -- the start ------------------------------------------------------------------------------


def test_an_unreachable_config_with_an_address_in_the_ledger_is_refused(tmp_path: Path) -> None:
    files = local_federation(tmp_path, sites(set()), plan(1), tls=False)
    table = tomllib.loads(files[1].config.read_text())
    table["node"]["reachable"] = False
    files[1].config.write_text(tomli_w.dumps(table))
    before = sorted(p.name for p in files[1].directory.iterdir())

    async def attempt() -> None:
        async with p2pfl.Peer(load_config(files[1].config), network=MemoryNetwork()):
            pass

    with pytest.raises(ConfigError, match="starts no listener") as info:
        asyncio.run(attempt())
    assert "'memory://hungary'" in str(info.value)
    assert sorted(p.name for p in files[1].directory.iterdir()) == before
    check_unreachable("")  # recorded without an address: nothing to refuse


def test_a_site_that_accepts_no_connection_dials_out_and_the_run_completes(
    tmp_path: Path,
) -> None:
    """Hungary, unreachable, has the largest id: it dials both its neighbours all the same."""
    ids = sorted((create_identity() for _ in SITES), key=lambda i: i.node_id)
    ids = [ids[0], ids[2], ids[1]]  # Cleveland < Switzerland < Hungary
    files = local_federation(tmp_path, sites({"Hungary"}), plan(2), tls=False, identities=ids)
    network = MemoryNetwork()
    seen: dict[str, dict[str, Any]] = {}

    async def one(site: SiteFiles) -> None:
        async with p2pfl.Peer(load_config(site.config), network=network) as peer:
            await peer.run()
            seen[site.name] = peer.node.status()

    async def every() -> None:
        async with asyncio.timeout(120):
            await asyncio.gather(*(one(site) for site in files))

    asyncio.run(every())
    assert all(status["completed"] == 2 for status in seen.values())
    assert seen["hungary"]["address"] == ""  # it never listened
    hungary = files[1].node_id
    ends = {
        (name, peer): link["dials"]
        for name, s in seen.items()
        for peer, link in s["neighbours"].items()
    }
    assert {peer for (name, peer) in ends if name == "hungary"} == {
        files[0].node_id,
        files[2].node_id,
    }
    assert all(ends[("hungary", peer)] for peer in (files[0].node_id, files[2].node_id))
    assert not ends[("cleveland", hungary)] and not ends[("switzerland", hungary)]
    audit = [
        json.loads(line) for line in (files[1].directory / "audit.jsonl").read_text().splitlines()
    ]
    start = next(e for e in audit if e["event"] == "start")
    assert start["listen"] == ""


def test_a_federation_with_no_reachable_site_says_why_its_links_have_no_relay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = local_federation(tmp_path, sites(set(SITES)), plan(1), tls=False)

    async def attempt() -> dict[str, Any]:
        async with p2pfl.Peer(load_config(files[0].config), network=MemoryNetwork()) as peer:
            peer.node.ledger_changed()  # a second look logs nothing more
            return peer.node.status()

    with caplog.at_level("WARNING", logger="p2pfl.node.node"):
        status = asyncio.run(attempt())
    assert "no reachable member exists" in status["relay_error"]
    assert status["relays"] == {} and status["neighbours"] == {}
    warned = [r for r in caplog.records if "no member relays the link" in r.getMessage()]
    assert len(warned) == 2  # once per neighbour
