"""The ``p2pfl`` command.

Each command group lives in its own module with a ``register(subparsers)``
function; a group's heavy imports (torch, matplotlib) happen inside its
handlers, so ``p2pfl topology list`` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in _GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except (P2PFLError, TopologyError, ProtocolError) as exc:
        print(f"p2pfl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
