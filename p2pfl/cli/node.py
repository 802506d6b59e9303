"""``p2pfl node``: set up a node directory, run the daemon, ask a running daemon how it is.

p2pfl node init DIR [--tls]           key (0600), TLS pair, commented node.toml
p2pfl node run --config FILE          the daemon: logs, a line per round; SIGTERM stops it
               [--dashboard HOST:PORT]  ...and its live page (p2pfl.node.dashboard)
p2pfl node status --config FILE       round, neighbours and their state, last error
p2pfl node check-data --config FILE   the data entrypoint against the plan's data schema

``run`` refuses to start (exit 2) when the key file, passphrase file, TLS key
or data directory is open to group/others, or without TLS unless
``--insecure`` is given (``p2pfl.node.config.check_safe_settings``); then, having
written nothing, when another node holds the data directory, the ledger's plan
is invalid, ``--rounds`` is beyond the plan's, the listen address is not the
node's ledger record, the TLS pair does not match, or the data entrypoint fails
or its data do not fit the plan (``p2pfl.node.preflight``), or the port is taken.
``check-data`` loads the local data and prints the schema report, counts
only, without starting a node or sending anything: exit 0 when the data fit,
1 when they do not.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pfl.errors import ConfigError, KeyFileError

if TYPE_CHECKING:
    from p2pfl.spec import Plan

log = logging.getLogger("p2pfl.node")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("node", help="run a federation member (the daemon)")
    sub = parser.add_subparsers(dest="node_command", metavar="ACTION", required=True)

    init = sub.add_parser("init", help="make a node directory: key, config template, TLS pair")
    init.add_argument("directory", metavar="DIR", help="directory to create or fill")
    init.add_argument("--tls", action="store_true", help="also write a self-signed TLS pair")
    init.add_argument(
        "--host",
        action="append",
        metavar="H",
        help="host name or IP the TLS certificate names (repeatable; default localhost)",
    )
    init.add_argument("--listen", default=None, help="listen address for the config template")
    init.add_argument("--passphrase-file", metavar="F", help="seal the key with this passphrase")
    init.set_defaults(handler=_init)

    run = sub.add_parser("run", help="run the node daemon until its rounds are done")
    run.add_argument("--config", required=True, metavar="FILE", help="node config (TOML)")
    run.add_argument(
        "--insecure", action="store_true", help="allow plain ws:// links (unencrypted; logged)"
    )
    run.add_argument("--rounds", type=int, default=None, help="rounds to complete (default: plan)")
    run.add_argument(
        "--dashboard",
        metavar="HOST:PORT",
        default=None,
        help="serve a live page of the node there (a bare port: loopback; elsewhere a token)",
    )
    run.set_defaults(handler=_run)

    status = sub.add_parser("status", help="what a node is doing (read from its status file)")
    status.add_argument("--config", required=True, metavar="FILE", help="node config (TOML)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    check = sub.add_parser("check-data", help="check the local data against the plan's schema")
    check.add_argument("--config", required=True, metavar="FILE", help="node config (TOML)")
    check.add_argument(
        "--plan", metavar="PLAN.toml", help="a plan file (default: the plan in the node's ledger)"
    )
    check.add_argument("--json", action="store_true", help="machine-readable report")
    check.set_defaults(handler=_check_data)


def _init(args: argparse.Namespace) -> int:
    from p2pfl.identity import create_identity, read_passphrase_file, save_identity
    from p2pfl.node.config import template
    from p2pfl.transport.tls import DEFAULT_HOSTS, make_self_signed

    directory = Path(args.directory)
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)  # it holds the key, ledger, checkpoints
    config = directory / "node.toml"
    if config.exists():
        raise KeyFileError(f"{config}: a config is already there; it was not overwritten")
    passphrase = read_passphrase_file(args.passphrase_file) if args.passphrase_file else None
    identity = create_identity()
    save_identity(identity, directory / "node.key", passphrase)
    print(f"wrote {directory / 'node.key'} (mode 600); node id {identity.node_id}")
    if args.tls:
        files = make_self_signed(directory, args.host or DEFAULT_HOSTS)
        print(f"wrote {files.cert_file} and {files.key_file} (self-signed, mode 600)")
    listen = args.listen or ("wss://0.0.0.0:7443" if args.tls else "ws://127.0.0.1:7443")
    text = template(listen=listen, tls=args.tls)
    if passphrase is not None:
        where = Path(args.passphrase_file).resolve()
        text = text.replace('# passphrase_file = "pass"', f'passphrase_file = "{where}"')
    config.write_text(text)
    print(f"wrote {config}")
    print("next: send `p2pfl keys show --json " + str(directory / "node.key") + "` to a member,")
    print(
        f"      join with `p2pfl federation join --key {directory / 'node.key'} "
        f"--invitation FILE --out {directory / 'ledger'}`, approve the plan, then"
    )
    print(f"      p2pfl node run --config {config}")
    if os.name == "posix" and directory.stat().st_mode & 0o077:
        print(f"note: {directory} is open to group/others; `node run` refuses it until you")
        print(f"      run: chmod 700 {directory}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from p2pfl.node.config import check_safe_settings, load_config

    config = load_config(args.config)
    if args.insecure:
        config = config.replace(insecure=True)
    if args.dashboard is not None:
        config = _with_dashboard(config, args.dashboard)
    check_safe_settings(config, args.config)
    if config.limits.threads:
        import torch

        torch.set_num_threads(config.limits.threads)  # the daemon owns its process
    try:
        done = asyncio.run(_daemon(config, args.rounds))
    except asyncio.CancelledError:
        log.info("stopped; the next start resumes from the last completed round")
        return 0
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise ConfigError(_address_in_use(args.config, config.node.listen)) from None
    log.info("finished: %d rounds completed", done)
    return 0


def _with_dashboard(config: Any, listen: str) -> Any:
    """``--dashboard`` overrides the config's ``[dashboard] listen`` (checked: ``ConfigError``)."""
    from p2pfl.node.dashboard import DashboardSection

    old = config.dashboard
    return config.replace(
        dashboard=DashboardSection(listen=listen, interval=old.interval, token=old.token)
    )


def _address_in_use(config_file: str, listen: str) -> str:
    """The one line ``node run`` prints when its listen port is taken, with the fix."""
    from urllib.parse import urlsplit

    port = urlsplit(listen).port
    return (
        f"{config_file}: cannot listen on {listen}: port {port} is in use (another node or "
        f"program holds it; `ss -ltnp 'sport = :{port}'` shows which); stop it, or give this "
        "node another port in [node] listen and the same address in its ledger record"
    )


async def _daemon(config: Any, rounds: int | None) -> int:
    import asyncio

    from p2pfl.node.node import Node

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None

    def stop(name: str) -> None:
        log.info("%s received: stopping cleanly", name)
        main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig.name)
    async with Node(config, rounds=rounds) as node:  # ``rounds`` is checked before it binds
        log.info("node %s of federation %s", node.node_id, node.ledger.federation_id)
        return await node.run()


def _status(args: argparse.Namespace) -> int:
    from p2pfl.node.config import load_config
    from p2pfl.node.phases import ENDED
    from p2pfl.node.status import process_alive, read_status

    config = load_config(args.config)
    status = read_status(config.data_dir)
    status["running"] = process_alive(status.get("pid")) and str(status.get("phase")) not in ENDED
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print(_describe(status))
    return 0


# -- the description: any JSON object reads, missing or odd fields show as "?" ----------


def _text(value: object) -> str:
    return value if isinstance(value, str) and value else "?"


def _count(value: object) -> int | None:
    return value if type(value) is int else None


def _when(stamp: object) -> str:
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        return "?"
    try:
        clock = datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "?"
    return f"{clock} ({max(0.0, time.time() - stamp):.0f} s ago)"


def _of(done: object, rounds: object) -> str:
    """``2 of 3`` (as much of it as the file says)."""
    n, total = _count(done), _count(rounds)
    text = "?" if n is None else str(n)
    return f"{text} of {total}" if total else text


def _state(status: dict[str, Any]) -> str:
    phase = _text(status.get("phase"))
    if phase in ("training", "mixing"):
        phase = f"{phase} round {_of(status.get('round'), status.get('rounds'))}"
    if status.get("running") is not True:
        phase = f"not running (last phase: {phase})"
    done = _of(status.get("completed"), status.get("rounds"))
    pid = _count(status.get("pid")) or "?"
    return f"{phase}: {done} rounds completed, pid {pid}, updated {_when(status.get('updated'))}"


def _link(peer: str, link: object, running: bool) -> str:
    """One neighbour: its link's state and what belongs to it, and the last round mixed."""
    if not isinstance(link, dict):
        return f"  {peer}  ?"
    state, since = _text(link.get("state")), _when(link.get("since"))
    error = link.get("last_error") if isinstance(link.get("last_error"), str) else ""
    attempts = _count(link.get("attempts"))
    if not running:
        shown = "not connected (the node is not running)"
    elif state == "up":
        shown = f"up since {since}"
    elif state == "connecting":
        shown = f"connecting (attempt {attempts or '?'}) since {since}"
    elif state in ("refused", "down"):
        shown = f"{state} since {since}" + (f": {error}" if error else "")
    else:
        shown = state
    last = _count(link.get("last_round"))
    address = _text(link.get("address"))
    via = link.get("via")
    if isinstance(via, str) and via:
        address = f"{address} (relay {_text(via)})"
    return f"  {peer}  {shown}  {address}  last round mixed: {last if last is not None else '?'}"


def _describe(status: dict[str, Any]) -> str:
    """``node status`` for people: a best effort on any status file, never a traceback."""
    running = status.get("running") is True
    name = status.get("name") if isinstance(status.get("name"), str) else ""
    lines = [
        f"node        {_text(status.get('node_id'))}  {name}".rstrip(),
        f"federation  {_text(status.get('federation'))}",
        f"state       {_state(status)}",
    ]
    last = status.get("last_round")
    if isinstance(last, dict) and type(last.get("accuracy")) in (int, float):
        round_ = _count(last.get("round"))
        lines.append(
            f"accuracy    {last['accuracy']:.4f} (local test set, round "
            f"{round_ if round_ is not None else '?'})"
        )
    neighbours = status.get("neighbours")
    neighbours = neighbours if isinstance(neighbours, dict) else {}
    lines.append(f"neighbours  {len(neighbours)}")
    lines += [_link(str(peer), link, running) for peer, link in neighbours.items()]
    error = status.get("last_error")
    lines.append(f"last error  {error if isinstance(error, str) and error else '(none)'}")
    return "\n".join(lines)


def _check_data(args: argparse.Namespace) -> int:
    from p2pfl.node.config import load_config
    from p2pfl.node.data import load_local_data, schema_report

    config = load_config(args.config)
    plan = _plan_to_check(config.ledger_file, args.plan)
    if not config.data.entrypoint:
        raise ConfigError(f"{args.config}: [data] entrypoint is not set")
    data = load_local_data(
        config.data.entrypoint,
        config.data.args,
        config.data.kwargs,
        input_shape=plan.data.input_shape,
        num_classes=plan.data.num_classes,
    )
    if plan.data.schema is None:
        print("the plan has no [data.schema]: shapes and labels fit, nothing more to check")
        return 0
    report = schema_report(data, plan.data.schema)
    print(json.dumps(report.summary(), indent=2) if args.json else report.describe())
    return 0 if report.ok else 1


def _plan_to_check(ledger_file: Path, plan_file: str | None) -> Plan:
    """The plan of ``plan_file`` if given, else the one in the node's ledger."""
    from p2pfl.cli.federation import read_plan
    from p2pfl.ledger_file import load_ledger
    from p2pfl.spec import plan_from_table

    if plan_file:
        return plan_from_table(read_plan(plan_file), plan_file)
    return plan_from_table(load_ledger(ledger_file).plan())
