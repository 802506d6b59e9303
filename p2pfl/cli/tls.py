"""``p2pfl tls``: make a self-signed TLS certificate and key for trying wss links."""

from __future__ import annotations

import argparse

# What ``p2pfl.transport.tls.DEFAULT_HOSTS`` holds, written out so that ``--help`` does not
# import the transports (a test checks the two agree).
DEFAULT_HOSTS_HELP = "localhost 127.0.0.1 ::1"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("tls", help="TLS certificates for wss links")
    sub = parser.add_subparsers(dest="tls_command", metavar="ACTION", required=True)
    init = sub.add_parser(
        "init",
        help="write a self-signed certificate and its key (for trials; peers are "
        "authenticated by their ledger keys, not by the certificate)",
    )
    init.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    init.add_argument(
        "--host",
        action="append",
        metavar="H",
        help="a host name or IP address the certificate names (repeatable; default "
        + DEFAULT_HOSTS_HELP
        + ")",
    )
    init.set_defaults(handler=_init)


def _init(args: argparse.Namespace) -> int:
    from p2pfl.transport.tls import DEFAULT_HOSTS, certificate_fingerprint, make_self_signed

    files = make_self_signed(args.out, args.host or DEFAULT_HOSTS)
    print(f"wrote {files.cert_file}")
    print(f"wrote {files.key_file} (mode 600)")
    print(f"sha256 fingerprint: {certificate_fingerprint(files.cert_file)}")
    return 0
