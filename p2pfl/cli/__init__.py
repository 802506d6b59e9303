"""The ``p2pfl`` command.

Each command group lives in its own module with a ``register(subparsers)``
function; a group's imports beyond the standard library (torch, matplotlib,
scipy, the ledger and key libraries) happen inside its handlers, so
``p2pfl --help`` and ``p2pfl topology list`` start fast.

Exit status: 0 done, 2 bad input (one line on stderr saying what and the fix),
130 interrupted, 141 when the reader of standard output went away (``| head``):
the rest of the output is dropped quietly, with no traceback (a table printed by
rich meets the closed pipe in rich, which exits 1 as quietly).

The installed command (and ``python -m p2pfl``) is ``run``: ``main``, then an exit
that skips the interpreter's teardown once the exit handlers have run (``exit_now``).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from p2pfl import __version__
from p2pfl.cli import audit, export, federation, keys, node, simulate, tls
from p2pfl.cli import topology as topology_cli
from p2pfl.errors import P2PFLError
from protocols.errors import ProtocolError
from topology.errors import TopologyError

# Command groups, in the order ``p2pfl --help`` lists them.
_GROUPS = (simulate, topology_cli, keys, federation, tls, node, audit, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pfl",
        description="Peer-to-peer decentralized learning with no central server.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"p2pfl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in _GROUPS:
        group.register(sub)
    return parser


EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process killed by SIGPIPE


def run() -> NoReturn:
    """The ``p2pfl`` command: ``main`` on the process's arguments, then ``exit_now``."""
    exit_now(main())


def exit_now(status: int) -> NoReturn:
    """End the process with ``status`` once its exit handlers have run, skipping the teardown.

    The interpreter's teardown frees every module and object one by one, and torch's
    alone takes 0.4 s of an idle core (more than a second beside other daemons): a
    cost paid by every command that trained, for nothing. What an exit must still do
    is done here, in the interpreter's order: wait for the threads that are not
    daemons; run the ``atexit`` handlers (logging's flush and close among them;
    temporary directories' finalizers); flush standard output and error. Files and
    sockets are closed by the operating system; everything durable was fsynced where
    it was written (``p2pfl.atomic``). While such a thread runs, and under a profiler
    or a tracer (``python -m cProfile -m p2pfl`` writes its figures once the command
    has returned), the ordinary exit does it all instead.
    """
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        raise SystemExit(status)
    if sys.getprofile() is not None or sys.gettrace() is not None:
        raise SystemExit(status)  # a profiler or tracer writes its figures after its script
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        status = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return status
    except (P2PFLError, TopologyError, ProtocolError) as exc:
        print(f"p2pfl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE


def _drop_stdout() -> None:
    """Point standard output at the null device: what is still buffered goes nowhere.

    Without it the interpreter's final flush meets the closed pipe again and prints
    a traceback ("Exception ignored ... BrokenPipeError").
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
