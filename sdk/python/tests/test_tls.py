"""TLS to a real node's client port: verified by default, wrong names and unknown CAs
refused, client certificates when the node asks for them. The certificates are made here
(``cryptography``, a test-only dependency; the SDK itself uses the standard ``ssl``)."""

import datetime
import ipaddress
import os
import tempfile
from typing import Iterator, Optional, Tuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cluster import Cluster
from sessync import Client, ConnectionLost, SessyncError, tls_context


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Ca:
    def __init__(self, cn: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def leaf(self, cn: str) -> Tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return (
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )


class Files:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sessync-py-tls-")

    def write(self, name: str, body: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(body)
        return path


@pytest.fixture(scope="module")
def pki() -> Iterator[Tuple[Files, Ca, str, str, str]]:
    files = Files()
    ca = Ca("python test CA")
    ca_file = files.write("ca.crt", ca.cert.public_bytes(serialization.Encoding.PEM))
    cert, key = ca.leaf("node")
    yield files, ca, ca_file, files.write("node.crt", cert), files.write("node.key", key)


def _node(cert: str, key: str, client_ca: Optional[str] = None) -> Cluster:
    args = ["--client-tls-cert", cert, "--client-tls-key", key]
    if client_ca:
        args += ["--client-tls-ca", client_ca]
    return Cluster(1, args)


def test_client_over_tls_is_verified(pki: Tuple[Files, Ca, str, str, str]) -> None:
    _, _, ca_file, cert, key = pki
    node = _node(cert, key)
    try:
        addr = node.clients[0]
        for name in (None, "localhost"):
            c = Client(addr, tls=tls_context(ca_file), server_hostname=name)
            s = c.create({"user": b"alice", "blob": os.urandom(300_000)})
            got = c.get(s.token)
            assert got.attributes["user"] == b"alice" and len(got.attributes["blob"]) == 300_000
            with c.pipeline() as p:
                replies = [p.get(s.token) for _ in range(200)]
            assert all(r.result().version == 1 for r in replies)
            c.close()
        with pytest.raises(ConnectionLost, match="certificate"):
            Client(addr, tls=tls_context(ca_file), server_hostname="wrong.example").ping()
        other = Files()
        other_ca = other.write("ca.crt", Ca("other").cert.public_bytes(serialization.Encoding.PEM))
        with pytest.raises(ConnectionLost, match="certificate"):
            Client(addr, tls=tls_context(other_ca)).ping()
        # Plain text to a TLS port gets nothing it can read.
        with pytest.raises(SessyncError):
            Client(addr, timeout=2).ping()
    finally:
        node.stop()


def test_client_certificates(pki: Tuple[Files, Ca, str, str, str]) -> None:
    files, ca, ca_file, cert, key = pki
    node = _node(cert, key, client_ca=ca_file)
    try:
        addr = node.clients[0]
        with pytest.raises(SessyncError):
            Client(addr, timeout=2, tls=tls_context(ca_file)).ping()
        app_cert, app_key = ca.leaf("app")
        ctx = tls_context(ca_file, files.write("app.crt", app_cert), files.write("app.key", app_key))
        c = Client(addr, tls=ctx)
        c.ping()
        c.close()
    finally:
        node.stop()
