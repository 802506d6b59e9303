"""TLS for wss links: a self-signed certificate for trials, and the SSL contexts.

Who a peer is does not come from its certificate. Peers are authenticated by
the Ed25519 challenge-response of ``p2pfl.transport.handshake``, run inside
TLS and bound to the TLS session by its ``tls-unique`` channel binding (the
TLS Finished message, which differs between any two TLS sessions). That is
why a client accepts any certificate by default, self-signed ones included:

- a man in the middle who terminates TLS towards each side holds two TLS
  sessions with two different bindings; the signatures each side makes cover
  its own binding, so neither side's proof verifies at the other end and the
  link is refused before a single application byte moves;
- the alternatives, a certificate authority or pinned certificate
  fingerprints, would need a second key distribution next to the ledger's,
  which already carries every member's Ed25519 key.

TLS then gives confidentiality and integrity, the handshake gives identity.
An institution that wants its own PKI on top passes ``cafile`` to
``client_context``: the peer's chain and host name are then checked too.
Only TLS 1.3 is offered: it has no renegotiation and no triple-handshake
weakness, so its Finished message is a sound channel binding.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import NameOID

from p2pfl.atomic import atomic_write_bytes
from p2pfl.errors import ConfigError, KeyFileError

CERT_NAME = "tls-cert.pem"
KEY_NAME = "tls-key.pem"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_DAYS = 365


@dataclass(frozen=True)
class TlsFiles:
    """A certificate (PEM, may hold a chain) and its private key (PEM).

    ``cafile``, when given, makes clients verify the peer's chain and host name
    against it, on top of the Ed25519 handshake (see the module docstring).
    """

    cert_file: Path
    key_file: Path
    cafile: Path | None = None


def make_self_signed(
    out_dir: str | os.PathLike[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    days: int = DEFAULT_DAYS,
    now: datetime.datetime | None = None,
) -> TlsFiles:
    """Write a fresh ECDSA P-256 key and a self-signed certificate for ``hosts`` into ``out_dir``.

    The key file is mode 0600; both files are written atomically and an existing
    file is never overwritten (``KeyFileError``). ``hosts`` become the
    certificate's subject alternative names (IP literals as IP addresses).
    """
    if not hosts:
        raise ConfigError("a TLS certificate needs at least one host name or address")
    if days < 1:
        raise ConfigError(f"a TLS certificate must be valid for at least one day, not {days}")
    directory = Path(out_dir)
    files = TlsFiles(directory / CERT_NAME, directory / KEY_NAME)
    for path in (files.cert_file, files.key_file):
        if path.exists():
            raise KeyFileError(f"{path}: a file is already there; it was not overwritten")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(key, list(hosts), days, now or datetime.datetime.now(datetime.UTC))
    directory.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        atomic_write_bytes(files.key_file, key_pem, mode=0o600, overwrite=False)
        atomic_write_bytes(
            files.cert_file, cert.public_bytes(serialization.Encoding.PEM), overwrite=False
        )
    except FileExistsError as exc:
        raise KeyFileError(f"{exc}: a file is already there; it was not overwritten") from None
    return files


def _certificate(
    key: ec.EllipticCurvePrivateKey, hosts: list[str], days: int, now: datetime.datetime
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def certificate_fingerprint(cert_file: str | os.PathLike[str]) -> str:
    """SHA-256 of a PEM certificate's DER form, as hex (what ``p2pfl tls init`` prints)."""
    try:
        cert = x509.load_pem_x509_certificate(_read(Path(cert_file)))
    except ValueError as exc:
        raise ConfigError(f"{cert_file} is not a PEM certificate: {exc}") from None
    return cert.fingerprint(hashes.SHA256()).hex()


def check_tls_pair(files: TlsFiles, now: datetime.datetime | None = None) -> None:
    """Refuse (``ConfigError``, one line with the fix) a pair a node could not serve with.

    The certificate must be readable PEM and valid at ``now`` (default: the clock's
    time), the key readable, unencrypted PEM, and the certificate's key: a mismatched
    pair otherwise shows only when a neighbour's TLS handshake fails.
    """
    remake = "make a new pair with `p2pfl tls init --out DIR` and name it in [tls]"
    try:
        cert = x509.load_pem_x509_certificate(_read(files.cert_file))
    except ValueError:
        raise ConfigError(
            f"{files.cert_file}: not a PEM certificate ([tls] cert); {remake}"
        ) from None
    try:
        key = serialization.load_pem_private_key(_read(files.key_file), password=None)
    except TypeError:
        raise ConfigError(
            f"{files.key_file}: the TLS key is encrypted; a node reads it unencrypted "
            f"(mode 0600): {remake}"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{files.key_file}: not a PEM private key ([tls] key); {remake}"
        ) from None
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise ConfigError(
            f"[tls] key {files.key_file} is not the key of certificate {files.cert_file} "
            f"(files of two different pairs?): name the matching pair in [tls], or {remake}"
        )
    now = now or datetime.datetime.now(datetime.UTC)
    if now < cert.not_valid_before_utc:
        raise ConfigError(
            f"{files.cert_file}: the TLS certificate is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is this clock right?); {remake}"
        )
    if now >= cert.not_valid_after_utc:
        raise ConfigError(
            f"{files.cert_file}: the TLS certificate expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; {remake}"
        )


def _public_der(key: CertificatePublicKeyTypes | PublicKeyTypes) -> bytes:
    """A public key's SubjectPublicKeyInfo (DER): equal bytes, equal keys, whatever the type."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A TLS 1.3 server context presenting ``files``' certificate; clients show none."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"TLS file not found: {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"cannot load TLS certificate {files.cert_file} with key {files.key_file}: {exc}"
        ) from None
    return context


def client_context(files: TlsFiles | None = None) -> ssl.SSLContext:
    """A TLS 1.3 client context.

    Without ``files.cafile`` it accepts any server certificate: the peer is
    authenticated by the Ed25519 handshake bound to this TLS session (module
    docstring). With ``cafile`` it verifies the chain and the host name.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if files is None or files.cafile is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        context.load_verify_locations(cafile=files.cafile)
    except FileNotFoundError:
        raise ConfigError(f"TLS CA file not found: {files.cafile}") from None
    except ssl.SSLError as exc:
        raise ConfigError(f"cannot load TLS CA file {files.cafile}: {exc}") from None
    return context


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
