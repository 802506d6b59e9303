"""``p2pfl node status``: what it says of each link, of a node that is gone, of any file.

The description (``p2pfl.cli.node._describe``) shows each link's state with what
belongs to it, says "not running" for a node whose process is gone without
claiming a link is up, and reads any status file: one that is not JSON, not
an object, or has fields of the wrong type or none gives a one-line error or
a best-effort description, never a traceback (a hypothesis test mutates a
real status file).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from p2pfl.cli import main

NOW = time.time()
LINK = {
    "state": "up",
    "address": "ws://127.0.0.1:7443",
    "dials": True,
    "since": NOW - 30,
    "last_error": "",
    "attempts": 0,
    "connects": 1,
    "unsent_frames": 0,
    "sent_bytes": 1000,
    "received_bytes": 1000,
    "retained_frames": 1,
    "retained_bytes": 100,
    "last_round": 2,
}
STATUS: dict[str, Any] = {
    "node_id": "me",
    "name": "cleveland",
    "federation": "fed",
    "pid": os.getpid(),
    "address": "ws://127.0.0.1:7444",
    "phase": "mixing",
    "started": NOW - 60,
    "updated": NOW,
    "last_error": "",
    "peak_rss_bytes": 1 << 20,
    "round": 3,
    "completed": 2,
    "rounds": 5,
    "resumed_from": None,
    "secure": False,
    "roster": ["a", "b", "me"],
    "plan_hash": "00" * 32,
    "last_round": {"kind": "round-completed", "round": 2, "accuracy": 0.75, "loss": 0.5},
    "neighbours": {"a": LINK, "b": LINK},
}


def node_dir(root: Path) -> Path:
    config = root / "node.toml"
    config.write_text('[node]\nkey = "node.key"\n')
    return config


def status_of(config: Path, content: bytes, *extra: str) -> tuple[int, str, str]:
    (config.parent / "status.json").write_bytes(content)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["node", "status", "--config", str(config), *extra])
    return code, out.getvalue(), err.getvalue()


def with_links(**links: dict[str, Any]) -> bytes:
    status = copy.deepcopy(STATUS)
    status["neighbours"] = {peer: {**LINK, **link} for peer, link in links.items()}
    return json.dumps(status).encode()


def test_each_link_shows_its_own_state_and_nothing_stale(tmp_path: Path) -> None:
    content = with_links(
        a={"last_error": "cannot connect"},  # a stale error beside an open link
        b={"state": "connecting", "attempts": 4, "last_round": 1},
        c={"state": "refused", "last_error": "handshake with c: refused (not-member): stranger"},
        d={"state": "down", "last_error": "connection reset", "last_round": 0},
    )
    code, out, _ = status_of(node_dir(tmp_path), content)
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "up since" in lines["a"] and "cannot connect" not in out
    assert "last round mixed: 2" in lines["a"]
    assert "connecting (attempt 4) since" in lines["b"] and "last round mixed: 1" in lines["b"]
    assert "refused since" in lines["c"] and "(not-member): stranger" in lines["c"]
    assert "down since" in lines["d"] and lines["d"].split("since", 1)[1].count("connection reset")
    assert "mixing round 3 of 5: 2 of 5 rounds completed" in out


def test_a_relayed_link_names_its_relay(tmp_path: Path) -> None:
    content = with_links(a={"via": "relay-r"}, b={"via": ""})
    code, out, _ = status_of(node_dir(tmp_path), content)
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert code == 0
    assert "ws://127.0.0.1:7443 (relay relay-r)" in lines["a"] and "relay" not in lines["b"]


def test_a_node_whose_process_is_gone_is_not_running_and_has_no_link_up(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    status = json.loads(with_links(a={}, b={}))
    status["pid"] = gone.pid  # a daemon killed while its links were up
    code, out, _ = status_of(node_dir(tmp_path), json.dumps(status).encode())
    assert code == 0
    assert "not running (last phase: mixing round 3 of 5): 2 of 5 rounds completed" in out
    links = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(links) == 2 and not any(re.search(r"\bup\b", line) for line in links)
    assert all("not connected (the node is not running)" in line for line in links)
    code, out, _ = status_of(node_dir(tmp_path), json.dumps(status).encode(), "--json")
    assert code == 0 and json.loads(out)["running"] is False


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


@st.composite
def mutated_status(draw: st.DrawFn) -> bytes:
    """A real status file with fields removed, replaced by any JSON value, or added."""
    status: Any = copy.deepcopy(STATUS)
    for _ in range(draw(st.integers(1, 8))):
        where = draw(st.sampled_from(["top", "link", "last_round"]))
        target: Any = status
        if where == "link" and isinstance(status.get("neighbours"), dict) and status["neighbours"]:
            target = status["neighbours"][draw(st.sampled_from(sorted(status["neighbours"])))]
        elif where == "last_round":
            target = status.get("last_round")
        if not isinstance(target, dict):
            continue
        keys = st.text(max_size=6)  # a new key, or one there (none once all were removed)
        key = draw(st.sampled_from(sorted(target)) | keys if target else keys)
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(json_values)
    return json.dumps(status).encode()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return node_dir(tmp_path_factory.mktemp("status"))


@settings(max_examples=200, deadline=None)
@example(content=b"")  # empty, not UTF-8, not JSON, JSON but no object
@example(content=b"\xff\xfe")
@example(content=b"{")
@example(content=b"[1, 2]")
@example(content=b"null")
@example(content=json.dumps({"completed": "3", "neighbours": [], "last_round": 1}).encode())
@given(
    content=mutated_status()
    | json_values.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=40)
)
def test_any_status_file_is_described_or_refused_in_one_line(config: Path, content: bytes) -> None:
    for extra in ((), ("--json",)):
        code, out, err = status_of(config, content, *extra)
        assert code in (0, 2)
        if code == 2:
            assert out == "" and err.startswith("p2pfl: error: ") and err.count("\n") == 1, err
        else:
            assert out and "Traceback" not in err
