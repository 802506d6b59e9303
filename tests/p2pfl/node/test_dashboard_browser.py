"""The dashboard in headless Chromium, next to a real three-hospital federation on loopback.

The browser is driven over the Chrome DevTools Protocol on a websocket (the
project's own ``websockets``: no driver to download). The page is opened once,
before training; the federation then runs two rounds, and two more, while the
test reads the page's DOM and compares it with the nodes' ledger and status:
members and approvals, the round advancing with no reload (a mark set in the
page's window survives), each round's accuracy equal to the sum of the masked
ledger records, the audit log verified. A screenshot goes to the test's tmp
directory, and to docs/dashboard.png with ``P2PFL_UPDATE_SCREENSHOT=1``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from loopback import loopback_federation
from websockets.asyncio.client import ClientConnection, connect

import p2pfl
from p2pfl.node.audit import verify
from p2pfl.node.config import load_config
from p2pfl.node.privacy import federation_sum
from p2pfl.privacy.metrics import summary

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT = 180
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="headless Chromium not found: apt-get install chromium chromium-driver",
    ),
]


class Page:
    """One tab, over a flat DevTools session of the browser's websocket."""

    def __init__(self, socket: ClientConnection, session: str, ids: itertools.count[int]) -> None:
        self.socket, self.session, self.ids = socket, session, ids

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await call(self.socket, self.ids, method, params, self.session)

    async def evaluate(self, expression: str) -> Any:
        reply = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise AssertionError(f"the page raised: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def screenshot(self) -> bytes:
        reply = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(reply["data"])


async def call(
    socket: ClientConnection,
    ids: itertools.count[int],
    method: str,
    params: dict[str, Any],
    session: str | None = None,
) -> dict[str, Any]:
    """One DevTools command; events that arrive before its reply are dropped."""
    ident = next(ids)
    message: dict[str, Any] = {"id": ident, "method": method, "params": params}
    if session is not None:
        message["sessionId"] = session
    await socket.send(json.dumps(message))
    async with asyncio.timeout(30):
        while True:
            reply = json.loads(await socket.recv())
            if reply.get("id") == ident:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return dict(reply["result"])


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Callable[[str], Any]]:
    """Headless Chromium with its DevTools on a port it picks; yields ``open(url) -> Page``."""
    assert CHROMIUM is not None
    profile.mkdir()
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",  # tests may run as root, where the sandbox refuses to start
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        async with asyncio.timeout(30):
            while len(lines := _lines(port_file)) < 2:
                await asyncio.sleep(0.05)
        endpoint = f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        async with connect(endpoint, max_size=None) as socket:
            ids = itertools.count(1)

            async def open_page(url: str) -> Page:
                target = await call(socket, ids, "Target.createTarget", {"url": "about:blank"})
                attached = await call(
                    socket,
                    ids,
                    "Target.attachToTarget",
                    {"targetId": target["targetId"], "flatten": True},
                )
                page = Page(socket, attached["sessionId"], ids)
                await page.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=1280,
                    height=1500,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                await page.call("Page.navigate", url=url)
                return page

            yield open_page
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


READ_PAGE = """!document.getElementById("connection") ? "{}" : JSON.stringify({
  mark: window.__mark ?? null,
  snapshots: Number(document.body.dataset.snapshots || 0),
  connection: document.getElementById("connection").dataset.state,
  phase: document.getElementById("phase").textContent,
  round: document.getElementById("round").dataset.round,
  completed: document.getElementById("completed").dataset.completed,
  members: [...document.querySelectorAll("#members tbody tr")].map((r) => ({
    node: r.dataset.node, approved: r.dataset.approved, revoked: r.dataset.revoked,
    progress: r.dataset.progress})),
  links: [...document.querySelectorAll("#links tbody tr")].map((r) => r.dataset.state),
  metrics: [...document.querySelectorAll("#metrics tbody tr")].map((r) => ({
    round: Number(r.dataset.round), accuracy: r.dataset.accuracy, loss: r.dataset.loss})),
  dots: document.querySelectorAll("#metrics-chart circle.acc").length,
  costs: document.querySelectorAll("#costs tbody tr").length,
  epsilon: document.getElementById("epsilon")?.dataset.spent ?? null,
  audit: document.getElementById("audit-state").textContent,
  audit_lines: document.getElementById("audit-state").dataset.lines,
  audit_rows: document.querySelectorAll("#audit tbody tr").length,
})"""


async def read(page: Page) -> dict[str, Any]:
    return dict(json.loads(await page.evaluate(READ_PAGE)))


async def until(page: Page, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """The page's state once ``check`` holds (the test reads the DOM; the page never polls)."""
    state: dict[str, Any] = {}
    try:
        async with asyncio.timeout(60):
            while not check(state := await read(page)):
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"the page never showed {what}; it shows {state}") from None
    return state


def test_the_page_shows_the_ledger_and_status_live_in_headless_chromium(tmp_path: Path) -> None:
    files = loopback_federation(tmp_path / "sites", rounds=4, dp=True)

    async def scenario() -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            peers = [
                await stack.enter_async_context(
                    p2pfl.Peer(
                        load_config(f.config),
                        insecure=True,
                        dashboard="127.0.0.1:0" if i == 0 else None,
                    )
                )
                for i, f in enumerate(files)
            ]
            node = peers[0].node
            url = peers[0].dashboard_url
            assert url is not None
            browser = await stack.enter_async_context(chromium(tmp_path / "profile"))
            page = await browser(url)
            await until(
                page, lambda s: s.get("snapshots", 0) > 0 and s["connection"] == "live", "live"
            )
            await page.evaluate("window.__mark = 'loaded once'")
            out: dict[str, Any] = {"before": await read(page)}

            await asyncio.gather(*(p.run(2) for p in peers))
            done = str(peers[0].status()["completed"])
            out["after_two"] = await until(page, lambda s: s["completed"] == done, f"round {done}")

            await asyncio.gather(*(p.run(4) for p in peers))
            roster = peers[0].status()["roster"]
            last = peers[0].status()["completed"]
            assert await node.wait_until(
                lambda: federation_sum(node.ledger.metrics(last), roster) is not None, 30
            )
            ledger = node.ledger
            audit = files[0].directory / "audit.jsonl"

            def settled(s: dict[str, Any]) -> bool:
                progress = ledger.progress()
                lines = audit.read_bytes().count(b"\n")
                return (
                    s["completed"] == str(last)
                    and len(s["metrics"]) == len(_summed(ledger, roster, last))
                    and {m["node"]: m["progress"] for m in s["members"]}
                    == {n: str(r) for n, r in progress.items()}
                    and s["audit"] == "verified"
                    and s["audit_lines"] == str(lines)  # the check covers the whole log
                )

            out["end"] = await until(page, settled, "the final state")
            out["summed"] = _summed(ledger, roster, last)
            out["members"] = sorted(ledger.members())
            out["approvers"] = ledger.approvers()
            out["status"] = peers[0].status()
            image = await page.screenshot()
        (tmp_path / "dashboard.png").write_bytes(image)
        if os.environ.get("P2PFL_UPDATE_SCREENSHOT") == "1":
            (ROOT / "docs" / "dashboard.png").write_bytes(image)
        out["image"] = image
        return out

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            return await scenario()

    out = asyncio.run(bounded())
    before, middle, end = out["before"], out["after_two"], out["end"]
    # Members and approvals as the ledger has them.
    assert sorted(m["node"] for m in end["members"]) == out["members"]
    assert all(m["approved"] == "true" and m["revoked"] == "false" for m in end["members"])
    assert set(out["members"]) == out["approvers"]
    # The round advanced on the page it was opened on: no reload (the mark stayed), many pushes.
    assert before["mark"] == middle["mark"] == end["mark"] == "loaded once"
    assert int(before["completed"]) < int(middle["completed"]) < int(end["completed"])
    assert before["snapshots"] < middle["snapshots"] < end["snapshots"]
    assert end["round"] == str(out["status"]["round"]) and end["phase"] == out["status"]["phase"]
    assert end["links"] == ["up", "up"]
    # Each round's accuracy and loss: exactly the sum of the masked ledger records.
    assert [m["round"] for m in end["metrics"]] == sorted(out["summed"])
    for row in end["metrics"]:
        accuracy, loss = out["summed"][row["round"]]
        assert float(row["accuracy"]) == accuracy and float(row["loss"]) == loss
    assert end["dots"] == len(end["metrics"]) and end["costs"] > 0
    assert end["epsilon"] is not None and float(end["epsilon"]) > 0
    assert end["audit"] == "verified" and verify(files[0].directory / "audit.jsonl").ok
    assert end["audit_rows"] > 0
    assert out["image"].startswith(b"\x89PNG") and (tmp_path / "dashboard.png").exists()


def _summed(ledger: Any, roster: list[str], last: int) -> dict[int, tuple[Any, Any]]:
    """(accuracy, loss) of every round up to ``last`` that the whole roster published."""
    out = {}
    for r in range(last + 1):
        total = federation_sum(ledger.metrics(r), roster)
        if total is not None:
            out[r] = summary(total)
    return out
