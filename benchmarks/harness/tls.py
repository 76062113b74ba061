"""Throwaway certificates (``cryptography``): a certificate authority, server certificates for
loopback (the admission webhook over HTTPS, the fake Kubernetes API server of the tests) and
client certificates as Kubernetes reads them (CN the user, O the group).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateAuthority", "KeyPair", "TlsFiles", "make_tls"]

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA certificate (for the client), the server certificate and its key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path

    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)


class CertificateAuthority:
    """A new CA, valid 30 days, its certificate written to ``directory/ca.crt``."""

    def __init__(self, directory: Path, label: str = "test") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = _name(f"overhead-service {label} CA")
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / "ca.crt"
        self.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    def server(self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), stem: str = "tls") -> KeyPair:
        """A server certificate for ``hosts`` (IP addresses and DNS names): ``<stem>.crt/.key``."""
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._issue(stem, _name(hosts[0]), names, ExtendedKeyUsageOID.SERVER_AUTH)

    def client(self, user: str, group: str | None = None) -> KeyPair:
        """A client certificate for ``user`` (CN) in ``group`` (O): ``client-<user>.crt/.key``."""
        return self._issue(f"client-{user}", _name(user, group), [], ExtendedKeyUsageOID.CLIENT_AUTH)

    def _issue(
        self, stem: str, subject: x509.Name, names: list[x509.GeneralName], usage: x509.ObjectIdentifier
    ) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        pair = KeyPair(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")
        certificate = builder.sign(self._key, hashes.SHA256())
        pair.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        _write_key(key, pair.key)
        return pair


def make_tls(
    directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), label: str = "test"
) -> TlsFiles:
    """A new CA and a server certificate for ``hosts`` (IP addresses and DNS names) in ``directory``:
    ``ca.crt``, ``tls.crt`` and ``tls.key``, the names of a cert-manager Secret."""
    authority = CertificateAuthority(directory, label)
    server = authority.server(hosts)
    return TlsFiles(authority.cert, server.cert, server.key)
