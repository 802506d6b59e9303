"""The dashboard without a browser: its HTTP answers, its push channel, who it lets in.

The server runs on 127.0.0.1 with a port the system picks. Most tests feed it a
snapshot function of their own, so they check the server alone; the last ones
start real nodes (a three-hospital federation over loopback) and check what the
snapshot says against the ledger.
"""

from __future__ import annotations

import asyncio
import json
import re
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from loopback import SHARING, loopback_federation  # tests/p2pfl/node/loopback.py
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import p2pfl
from p2pfl.cli import build_parser
from p2pfl.cli.node import _with_dashboard
from p2pfl.errors import ConfigError
from p2pfl.identity import load_identity
from p2pfl.ledger_file import load_ledger
from p2pfl.node.audit import verify
from p2pfl.node.config import config_from_table, load_config
from p2pfl.node.dashboard import TOKEN_FILE, Dashboard, DashboardSection, split_listen
from p2pfl.node.privacy import federation_sum
from p2pfl.node.view import members
from p2pfl.privacy.metrics import summary

PAGE = files("p2pfl.node") / "dashboard_page"
TIMEOUT = 120


class Source:
    """A stand-in node: counts the snapshots asked of it; ``fail`` makes the next ones raise."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.changes = asyncio.Event()

    async def snapshot(self) -> dict[str, Any]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("the view broke")
        return {"n": self.calls}


@asynccontextmanager
async def served(tmp_path: Path, **section: Any) -> AsyncIterator[tuple[Dashboard, Source]]:
    source = Source()
    settings = {"listen": "127.0.0.1:0", "interval": 0.01, **section}
    dashboard = Dashboard(DashboardSection(**settings), source.snapshot, source.changes, tmp_path)
    await dashboard.open()
    task = asyncio.create_task(dashboard.publish())
    try:
        yield dashboard, source
    finally:
        task.cancel()
        await dashboard.close()


async def get(
    port: int, path: str, *, host: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 GET; the server answers and closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\n\r\n"
    writer.write(request.encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def receive(websocket: Any) -> dict[str, Any]:
    async with asyncio.timeout(10):
        return json.loads(await websocket.recv())


def test_the_page_and_its_assets_come_from_the_package_and_name_nothing_outside(
    tmp_path: Path,
) -> None:
    async def scenario() -> dict[str, tuple[int, dict[str, str], bytes]]:
        async with served(tmp_path) as (dashboard, _):
            paths = ("/", "/dashboard.js", "/dashboard.css", "/nope", "/../node.key")
            return {p: await get(dashboard.port, p) for p in paths}

    answers = asyncio.run(scenario())
    status, headers, page = answers["/"]
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"__QUERY__" not in page and b'src="dashboard.js"' in page
    assert "default-src 'none'" in headers["content-security-policy"]
    for path, name, kind in (
        ("/dashboard.js", "dashboard.js", "text/javascript"),
        ("/dashboard.css", "dashboard.css", "text/css"),
    ):
        status, headers, body = answers[path]
        assert status == 200 and headers["content-type"].startswith(kind)
        assert body == (PAGE / name).read_bytes()
    assert answers["/nope"][0] == 404 and answers["/../node.key"][0] == 404
    # Offline: no asset loads anything from elsewhere (the SVG namespace is a name, not a load).
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        text = (PAGE / name).read_text().replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), name


def test_the_push_channel_sends_a_snapshot_on_connecting_and_after_each_change(
    tmp_path: Path,
) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with served(tmp_path) as (dashboard, source):
            async with connect(f"ws://127.0.0.1:{dashboard.port}/events") as websocket:
                first = await receive(websocket)
                source.changes.set()  # what the node does when something shown changed
                second = await receive(websocket)
                source.changes.set()
                third = await receive(websocket)
            return [first, second, third]

    first, second, third = asyncio.run(scenario())
    assert first["n"] < second["n"] < third["n"]


def test_nothing_is_built_while_no_page_is_open(tmp_path: Path) -> None:
    async def scenario() -> int:
        async with served(tmp_path) as (_, source):
            for _ in range(5):
                source.changes.set()
                await asyncio.sleep(0.03)
            return source.calls

    assert asyncio.run(scenario()) == 0


def test_off_loopback_a_token_is_made_and_required(tmp_path: Path) -> None:
    for listen in ("0.0.0.0:8080", "192.0.2.7:8080", "[2001:db8::1]:8080", "example.org:8080"):
        assert Dashboard(
            DashboardSection(listen), Source().snapshot, asyncio.Event(), tmp_path
        ).token
    for listen in ("127.0.0.1:8080", "8080", "localhost:8080", "[::1]:8080", "127.0.0.2:1"):
        assert (
            Dashboard(DashboardSection(listen), Source().snapshot, asyncio.Event(), tmp_path).token
            is None
        )

    # The same checks, served on loopback with ``token = true`` (tests bind 127.0.0.1 only).
    async def scenario() -> dict[str, Any]:
        async with served(tmp_path, token=True) as (dashboard, _):
            token = dashboard.token
            assert token is not None
            port, out = dashboard.port, {"token": token, "url": dashboard.url}
            mode = stat.S_IMODE((tmp_path / TOKEN_FILE).stat().st_mode)
            out["file"] = ((tmp_path / TOKEN_FILE).read_text().strip(), mode)
            for name, query in (("none", ""), ("wrong", "?token=x"), ("right", f"?token={token}")):
                out[name] = [(await get(port, p + query))[0] for p in ("/", "/dashboard.js")]
                try:
                    async with connect(f"ws://127.0.0.1:{port}/events{query}") as websocket:
                        out[name].append((await receive(websocket))["n"] > 0)
                except InvalidStatus as exc:
                    out[name].append(exc.response.status_code)
            out["page"] = (await get(port, f"/?token={token}"))[2].decode()
        out["after"] = (tmp_path / TOKEN_FILE).exists()
        return out

    out = asyncio.run(scenario())
    token = out["token"]
    assert out["none"] == [401, 401, 401]
    assert out["wrong"] == [403, 403, 403]
    assert out["right"] == [200, 200, True]
    assert out["file"] == (token, 0o600) and out["url"].endswith(f"/?token={token}")
    assert f'src="dashboard.js?token={token}"' in out["page"]
    assert not out["after"]  # the token goes with the dashboard


def test_on_loopback_a_foreign_host_name_or_page_is_refused(tmp_path: Path) -> None:
    """A DNS name pointed at 127.0.0.1 (rebinding), or another site's page in the browser."""

    async def scenario() -> list[Any]:
        async with served(tmp_path) as (dashboard, _):
            port = dashboard.port
            answers: list[Any] = [
                (await get(port, "/", host=f"evil.example:{port}"))[0],
                (await get(port, "/", host=f"localhost:{port}"))[0],
            ]
            for origin in ("http://evil.example", f"http://127.0.0.1:{port}"):
                try:
                    async with connect(f"ws://127.0.0.1:{port}/events", origin=origin) as ws:  # type: ignore[arg-type]
                        answers.append((await receive(ws))["n"] > 0)
                except InvalidStatus as exc:
                    answers.append(exc.response.status_code)
            return answers

    assert asyncio.run(scenario()) == [403, 200, 403, True]


def test_a_failing_snapshot_or_browser_never_stops_the_dashboard(tmp_path: Path) -> None:
    async def scenario() -> list[Any]:
        async with served(tmp_path) as (dashboard, source):
            port = dashboard.port
            # A browser that goes away in the middle of everything.
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
            writer.transport.abort()
            source.fail = True
            async with connect(f"ws://127.0.0.1:{port}/events") as websocket:
                await asyncio.sleep(0.1)  # snapshots fail meanwhile: nothing is sent
                source.fail = False
                source.changes.set()
                got = await receive(websocket)
            return [got["n"] > 1, (await get(port, "/"))[0]]

    assert asyncio.run(scenario()) == [True, 200]


def test_the_dashboard_section_and_the_flag(tmp_path: Path) -> None:
    config = config_from_table(
        {"dashboard": {"listen": "127.0.0.1:8123", "interval": 1.0}}, tmp_path
    )
    assert config.dashboard == DashboardSection("127.0.0.1:8123", 1.0)
    assert config_from_table({}, tmp_path).dashboard.listen == ""  # off by default
    with pytest.raises(ConfigError, match="dashboard"):
        config_from_table({"dashboard": {"listen": "127.0.0.1"}}, tmp_path)
    with pytest.raises(ConfigError, match="dashboard"):
        config_from_table({"dashboard": {"colour": "red"}}, tmp_path)
    assert split_listen("9000") == ("127.0.0.1", 9000) and split_listen("[::1]:7") == ("::1", 7)
    args = build_parser().parse_args(["node", "run", "--config", "x", "--dashboard", "8080"])
    assert _with_dashboard(config, args.dashboard).dashboard == DashboardSection("8080", 1.0)


# -- real nodes ---------------------------------------------------------------------------


def test_a_node_serves_its_dashboard_only_when_asked_and_stops_it_with_itself(
    tmp_path: Path,
) -> None:
    files_ = loopback_federation(tmp_path, rounds=1)

    async def scenario() -> list[Any]:
        async with p2pfl.Peer(load_config(files_[0].config), insecure=True) as peer:
            assert peer.node.dashboard is None and peer.dashboard_url is None
        async with p2pfl.Peer(
            load_config(files_[0].config), insecure=True, dashboard="127.0.0.1:0"
        ) as peer:
            url = peer.dashboard_url
            assert url is not None
            port = int(url.rsplit(":", 1)[1].strip("/"))
            status = (await get(port, "/"))[0]
            async with connect(f"ws://127.0.0.1:{port}/events") as websocket:
                snapshot = await receive(websocket)
        with pytest.raises(OSError):
            await get(port, "/")
        return [status, snapshot]

    status, snapshot = asyncio.run(scenario())
    assert status == 200
    assert snapshot["node"]["node_id"] == files_[0].node_id
    assert snapshot["round"]["phase"] == "idle"
    assert {m["node_id"] for m in snapshot["members"]} == {f.node_id for f in files_}
    assert all(m["approved"] and not m["revoked"] for m in snapshot["members"])
    assert snapshot["audit"]["ok"] and snapshot["audit"]["tail"][0]["event"] == "start"


@pytest.mark.slow
def test_the_snapshot_shows_the_federations_sums_and_only_opted_in_sites(tmp_path: Path) -> None:
    rounds = 3
    files_ = loopback_federation(tmp_path, rounds=rounds, dp=True)

    async def scenario() -> tuple[dict[str, Any], Any, list[str]]:
        async def one(i: int) -> Any:
            dashboard = "127.0.0.1:0" if i == 0 else None
            async with p2pfl.Peer(
                load_config(files_[i].config), insecure=True, dashboard=dashboard
            ) as peer:
                await peer.run()
                if i != 0:
                    return None
                node = peer.node
                roster = peer.status()["roster"]
                last = peer.status()["completed"]  # round numbers as the status has them
                done = lambda: federation_sum(node.ledger.metrics(last), roster) is not None  # noqa: E731
                assert await node.wait_until(done, 30)
                url = peer.dashboard_url
                assert url is not None
                async with connect(url.replace("http", "ws", 1).rstrip("/") + "/events") as ws:
                    snapshot = await receive(ws)
                return snapshot, node.ledger, roster

        async with asyncio.timeout(TIMEOUT):
            results = await asyncio.gather(*(one(i) for i in range(len(files_))))
        return results[0]

    snapshot, ledger, roster = asyncio.run(scenario())
    summed = [
        r for r, records in ledger.metrics_by_round().items() if federation_sum(records, roster)
    ]
    assert len(summed) == rounds
    assert [m["round"] for m in snapshot["metrics"]] == sorted(summed)
    for row in snapshot["metrics"]:
        total = federation_sum(ledger.metrics(row["round"]), roster)
        assert total is not None
        assert (row["accuracy"], row["loss"]) == summary(total)
    sharing = next(f.node_id for f in files_ if f.name == SHARING.lower())
    assert {s["node"] for s in snapshot["shared"]} == {sharing}
    assert len(snapshot["costs"]) == rounds and all(c["bytes_sent"] > 0 for c in snapshot["costs"])
    assert all(
        c["total_j"] == pytest.approx(c["network_j"] + c["compute_j"]) for c in snapshot["costs"]
    )
    privacy = snapshot["privacy"]
    assert privacy["mechanism"] == "delta" and privacy["rounds_done"] == rounds
    assert 0 < privacy["epsilon_spent"] == pytest.approx(privacy["epsilon_run"])
    assert snapshot["audit"]["ok"] == verify(files_[0].directory / "audit.jsonl").ok is True
    assert {link["peer"] for link in snapshot["links"]} == {f.node_id for f in files_[1:]}


def test_members_show_approvals_revocations_and_progress_as_the_ledger_has_them(
    tmp_path: Path,
) -> None:
    files_ = loopback_federation(tmp_path, rounds=1)
    ledger = load_ledger(files_[0].directory / "ledger")
    founder = load_identity(files_[0].directory / "node.key")
    a, b, c = (f.node_id for f in files_)
    ledger.revoke(founder.signing_key, c, clock=ledger.next_clock(), reason="left")
    ledger.set_plan(founder.signing_key, {**ledger.plan(), "seed": 1}, clock=ledger.next_clock())
    ledger.approve(founder.signing_key, ledger.plan_hash(), clock=ledger.next_clock())
    ledger.report_progress(founder.signing_key, 0, clock=ledger.next_clock())
    shown = {m["node_id"]: m for m in members(ledger, {"node_id": b, "neighbours": {a: {}}})}
    assert set(shown) == {a, b, c}  # a revoked member stays on the page, marked
    assert [shown[n]["approved"] for n in (a, b, c)] == [True, False, False]
    assert [shown[n]["revoked"] for n in (a, b, c)] == [False, False, True]
    assert [shown[n]["progress"] for n in (a, b, c)] == [0, None, None]
    assert shown[b]["me"] and shown[a]["neighbour"] and not shown[c]["neighbour"]
