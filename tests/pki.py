"""Real certificates and keys, made at test time with ``cryptography``, and a pump
that runs a TLS handshake between two ``TlsLayer``s in memory.

One call writes a small public-key infrastructure into a directory: a CA, an ECDSA
server certificate for localhost and 127.0.0.1, client certificates named by their
subject common name, the same from a CA nobody trusts, an expired server
certificate, and key pairs for signing JWTs. ECDSA P-256 throughout (RSA only for
the RS256 key), as generating it takes microseconds where RSA takes tens of ms.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hbloop.net.tls import TlsLayer

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# Long enough that no test run outlives a certificate, short enough to look real.
VALIDITY = datetime.timedelta(days=30)

# RSA keys below 2048 bits are refused by OpenSSL's default security level.
RSA_BITS = 2048

# Handshake flights go back and forth at most this many times (TLS 1.2 with client
# certificates needs two round trips); more means the pump is stuck.
MAX_FLIGHTS = 6


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # trusted by servers (client certificates) and clients (server certificate)
    rogue_ca: Path  # a CA that issued nothing the servers use
    server: Issued  # ECDSA, for localhost and 127.0.0.1
    expired_server: Issued  # the same, but expired yesterday
    alice: Issued  # client certificate, CN=alice
    bob: Issued  # client certificate, CN=bob
    rogue_alice: Issued  # CN=alice, issued by a CA that nobody trusts
    es256_private: Path  # JWT signing keys and their public halves
    es256_public: Path
    rs256_private: Path
    rs256_public: Path


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: PrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_public(path: Path, key: PrivateKey) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class _Authority:
    """A self-signed CA that issues leaf certificates."""

    def __init__(self, common_name: str) -> None:
        self.key = _ec_key()
        now = datetime.datetime.now(datetime.UTC)
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(
        self,
        directory: Path,
        stem: str,
        common_name: str,
        *,
        server: bool,
        expired: bool = False,
    ) -> Issued:
        key = _ec_key()
        now = datetime.datetime.now(datetime.UTC)
        # Backdated by an hour so that a clock a little behind still accepts it.
        end = now - datetime.timedelta(days=1) if expired else now + VALIDITY
        start = end - VALIDITY - datetime.timedelta(hours=1)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = directory / f"{stem}.crt"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return Issued(cert_path, _write_key(directory / f"{stem}.key", key))


def make_pki(directory: Path) -> Pki:
    ca = _Authority("hbloop test CA")
    rogue = _Authority("rogue CA")
    es256 = _ec_key()
    rs256 = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return Pki(
        ca=ca.write(directory / "ca.crt"),
        rogue_ca=rogue.write(directory / "rogue-ca.crt"),
        server=ca.issue(directory, "server", "localhost", server=True),
        expired_server=ca.issue(directory, "expired", "localhost", server=True, expired=True),
        alice=ca.issue(directory, "alice", "alice", server=False),
        bob=ca.issue(directory, "bob", "bob", server=False),
        rogue_alice=rogue.issue(directory, "rogue-alice", "alice", server=False),
        es256_private=_write_key(directory / "es256.key", es256),
        es256_public=_write_public(directory / "es256.pub", es256),
        rs256_private=_write_key(directory / "rs256.key", rs256),
        rs256_public=_write_public(directory / "rs256.pub", rs256),
    )


def handshake(server: TlsLayer, client: TlsLayer) -> None:
    """Pump handshake flights between the two layers until both are done; a failure
    on either side raises its TlsError."""
    to_server = client.start()
    for _ in range(MAX_FLIGHTS):
        assert server.receive(to_server) == b""
        to_client = server.data_to_send()
        assert client.receive(to_client) == b""
        to_server = client.data_to_send()
        if server.handshake_done and client.handshake_done and not to_server:
            return
    raise AssertionError("the handshake did not finish")
