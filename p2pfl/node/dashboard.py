"""A live dashboard of one node: one page, and snapshots pushed to it over a WebSocket.

Off unless asked for: ``[dashboard] listen = "127.0.0.1:8080"`` in the node config,
``p2pfl node run --dashboard 127.0.0.1:8080`` or ``Peer(config, dashboard=...)``.
A bare port means loopback. The server runs in the node's own event loop
(``websockets``: plain GETs answered in its ``process_request`` hook):

- ``GET /``, ``/dashboard.js``, ``/dashboard.css``: the page, package data
  (``p2pfl/node/dashboard_page/``), nothing fetched from elsewhere;
- ``GET /events``: upgraded to a WebSocket on which the server sends one JSON
  snapshot (``p2pfl.node.view``) on connecting and another after each change
  of the node, at most every ``interval`` seconds; what a browser sends is
  ignored. Anything else is 404.

Who may look:

- bound to a loopback address, a request must name a loopback host (``Host``),
  so a web page whose DNS name was pointed at 127.0.0.1 gets 403;
- bound anywhere else (or with ``token = true``, for a machine shared with other
  users), a token is required: 32 random bytes made at each start,
  written to ``DATA_DIR/dashboard-token`` (mode 0600, removed at stop) and logged
  as the URL to open. Every request, the push channel's included, carries it as
  ``?token=``: 401 without it, 403 with another;
- the push channel refuses (403) an ``Origin`` other than its own host, so a page
  of another site open in the same browser cannot read it.

The dashboard stays out of the round path: it builds a snapshot only while a
page is connected, at most once per ``interval``, reading the files (audit log,
checkpoints) in a worker thread; each connection sends only the newest snapshot,
so a slow browser skips some instead of queueing them; at most ``MAX_CLIENTS``
connect at once. A failure of its own is logged, never raised into the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from p2pfl.atomic import atomic_write_bytes
from p2pfl.errors import ConfigError

log = logging.getLogger(__name__)

TOKEN_FILE = "dashboard-token"
MAX_CLIENTS = 16
MAX_INCOMING = 4096  # bytes: a page has nothing to say
HEARTBEAT = 5.0  # seconds: a snapshot at least this often while a page is open
EVENTS = "/events"
_PAGE = files("p2pfl.node") / "dashboard_page"
_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
_QUERY = "__QUERY__"  # where the page's asset links get the token
_SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
)

Snapshot = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class DashboardSection:
    """``[dashboard]``: where to serve the page (empty: no dashboard) and how often to push."""

    listen: str = ""  # "HOST:PORT" or "PORT" (loopback); off loopback a token is required
    interval: float = 0.5  # seconds: at most one snapshot per interval
    token: bool = False  # require the token on loopback too (other users on this machine)

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ConfigError("[dashboard] interval must be positive")
        if self.listen:
            split_listen(self.listen)


def split_listen(listen: str) -> tuple[str, int]:
    """``(host, port)`` of ``"HOST:PORT"``, ``"[V6]:PORT"`` or ``"PORT"`` (loopback)."""
    text = listen.strip()
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535 or "/" in host:
        raise ConfigError(
            f"[dashboard] listen = {listen!r}: expected HOST:PORT or PORT (127.0.0.1:8080)"
        )
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, treat it as reachable


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Dashboard:
    """The page and its push channel for one node (module docstring).

    ``snapshot`` builds what the page shows (``p2pfl.node.view.NodeView.snapshot``);
    ``changes`` is set by the node whenever something shown may have changed. Start
    with ``await open()``, run ``publish()`` in the node's task group, ``await close()``.
    """

    def __init__(
        self,
        section: DashboardSection,
        snapshot: Snapshot,
        changes: asyncio.Event,
        data_dir: Path,
    ) -> None:
        self.section = section
        self.host, self.port = split_listen(section.listen)
        wanted = section.token or not is_loopback(self.host)
        self.token = secrets.token_urlsafe(32) if wanted else None
        self._snapshot = snapshot
        self._changes = changes
        self._token_file = Path(data_dir) / TOKEN_FILE
        self._server: Server | None = None
        self._clients: set[ServerConnection] = set()
        self._version, self._text = 0, ""
        self._fresh = asyncio.Event()
        self._failures = 0
        self._assets: dict[str, tuple[bytes, str]] = {}

    @property
    def url(self) -> str:
        """The URL to open (with the token where one is required)."""
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        query = "" if self.token is None else f"?token={self.token}"
        return f"http://{_hostport(host, self.port)}/{query}"

    async def open(self) -> None:
        """Bind and serve; ``ConfigError`` when the address cannot be had."""
        query = "" if self.token is None else f"?token={self.token}"
        for path, (name, kind) in _ASSETS.items():
            body = (_PAGE / name).read_bytes().replace(_QUERY.encode(), query.encode())
            self._assets[path] = (body, kind)
        if self.token is not None:
            atomic_write_bytes(self._token_file, self.token.encode() + b"\n", mode=0o600)
        try:
            self._server = await serve(
                self._push,
                self.host,
                self.port,
                process_request=self._route,
                server_header=None,
                max_size=MAX_INCOMING,
                max_queue=4,
                compression=None,
                logger=logging.getLogger(f"{__name__}.http"),
            )
        except OSError as exc:
            self._remove_token()
            raise ConfigError(
                f"[dashboard] cannot listen on {self.section.listen}: {exc.strerror or exc}"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        if self.token is None:
            log.info("dashboard at %s", self.url)
        else:
            log.warning(
                "dashboard at %s (off loopback: the token is also in %s)",
                self.url,
                self._token_file,
            )

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._remove_token()

    def _remove_token(self) -> None:
        if self.token is not None:
            with contextlib.suppress(OSError):
                self._token_file.unlink()

    # -- HTTP -------------------------------------------------------------------------

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        """Every request: the checks of the module docstring, then an asset or the upgrade."""
        url = urlsplit(request.path)
        refusal = self._refusal(request, url.query)
        if refusal is not None:
            return _text(*refusal)
        if url.path == EVENTS:
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"http://{request.headers.get('Host', '')}":
                return _text(http.HTTPStatus.FORBIDDEN, "another site's page may not connect\n")
            if len(self._clients) >= MAX_CLIENTS:
                return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many dashboards open\n")
            return None  # the WebSocket handshake: ``_push``
        asset = self._assets.get(url.path)
        if asset is None:
            return _text(http.HTTPStatus.NOT_FOUND, "not found\n")
        return _response(http.HTTPStatus.OK, *asset)

    def _refusal(self, request: Request, query: str) -> tuple[http.HTTPStatus, str] | None:
        if self.token is None:
            host = request.headers.get("Host", "")
            names = {"localhost", "127.0.0.1", "[::1]", self.host, f"[{self.host}]"}
            if host not in {f"{name}:{self.port}" for name in names}:
                return http.HTTPStatus.FORBIDDEN, "this dashboard answers to its loopback name\n"
            return None
        given = parse_qs(query).get("token", [])
        if not given:
            return http.HTTPStatus.UNAUTHORIZED, "a token is required: open the URL in the log\n"
        if not hmac.compare_digest(given[0].encode(), self.token.encode()):
            return http.HTTPStatus.FORBIDDEN, "wrong token\n"
        return None

    # -- the push channel ---------------------------------------------------------------

    async def _push(self, connection: ServerConnection) -> None:
        """One page: the newest snapshot now and after every change, until it goes."""
        self._clients.add(connection)
        self._changes.set()  # a snapshot for the newcomer, built after it arrived
        sent = self._version
        closed = asyncio.ensure_future(connection.wait_closed())
        try:
            while not closed.done():
                if self._version > sent:
                    sent = self._version
                    await connection.send(self._text)
                    continue
                fresh = asyncio.ensure_future(self._fresh.wait())
                await asyncio.wait({fresh, closed}, return_when=asyncio.FIRST_COMPLETED)
                fresh.cancel()
        except ConnectionClosed:
            pass
        finally:
            closed.cancel()
            self._clients.discard(connection)

    async def publish(self) -> None:
        """Build and hand out a snapshot after each change, at most every ``interval``.

        While a page is open one is also built every ``HEARTBEAT`` seconds without a
        change (ages shown, the audit log's deferred check).
        """
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT if self._clients else None):
                    await self._changes.wait()
            self._changes.clear()
            if self._clients:
                await self._publish_once()
            await asyncio.sleep(self.section.interval)

    async def _publish_once(self) -> None:
        started = time.perf_counter()
        try:
            text = json.dumps(await self._snapshot(), allow_nan=False, default=str)
        except Exception as exc:  # the dashboard's failure must not become the node's
            self._failures += 1
            if self._failures == 1 or self._failures % 100 == 0:
                log.exception("dashboard snapshot failed (%d times): %s", self._failures, exc)
            return
        self._version += 1
        self._text = text
        fresh, self._fresh = self._fresh, asyncio.Event()
        fresh.set()
        log.debug(
            "dashboard snapshot %d in %.1f ms", self._version, 1e3 * (time.perf_counter() - started)
        )


def _response(status: http.HTTPStatus, body: bytes, kind: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", kind),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *_SECURITY_HEADERS,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _text(status: http.HTTPStatus, text: str) -> Response:
    return _response(status, text.encode(), "text/plain; charset=utf-8")
