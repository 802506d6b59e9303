"""``p2pfl keys``: create a node identity, show its public keys."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the key libraries load when a command uses a key, not for --help
    from p2pfl.identity import Identity

DEFAULT_KEY_FILE = "p2pfl-node.key"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("keys", help="create and inspect node identities")
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    init = sub.add_parser("init", help="create a new identity (Ed25519 + X25519) in a key file")
    init.add_argument(
        "--out", default=DEFAULT_KEY_FILE, help=f"key file to create (default {DEFAULT_KEY_FILE})"
    )
    add_passphrase_argument(init, "seal the key with the passphrase in this file")
    init.set_defaults(handler=_init)

    show = sub.add_parser("show", help="print a key file's node id and public keys")
    show.add_argument("file", help="key file")
    show.add_argument("--json", action="store_true", help="print node_id, verify_key, box_key")
    show.set_defaults(handler=_show)


def add_passphrase_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--passphrase-file", metavar="F", help=help_text)


def load_key_argument(args: argparse.Namespace) -> Identity:
    """The identity named by ``--key`` (and ``--passphrase-file``) of a command."""
    from p2pfl.identity import load_identity, read_passphrase_file

    passphrase = read_passphrase_file(args.passphrase_file) if args.passphrase_file else None
    return load_identity(args.key, passphrase)


def _init(args: argparse.Namespace) -> int:
    from p2pfl.identity import create_identity, read_passphrase_file, save_identity

    passphrase = read_passphrase_file(args.passphrase_file) if args.passphrase_file else None
    identity = create_identity()
    save_identity(identity, args.out, passphrase)
    sealed = "sealed with a passphrase" if passphrase else "not sealed"
    print(f"wrote {args.out} (mode 600, {sealed})")
    print(f"node id: {identity.node_id}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from p2pfl.identity import check_public_keys, read_key_document

    public = check_public_keys(read_key_document(args.file))
    if args.json:
        print(json.dumps(public, indent=2))
    else:
        print(f"node id:    {public['node_id']}")
        print(f"verify key: {public['verify_key']}")
        print(f"box key:    {public['box_key']}")
    return 0
