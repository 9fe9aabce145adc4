"""Authentication at HELLO time: real JWTs from PyJWT, real certificates."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from hbloop.auth import (
    JWT_LEEWAY,
    AuthConfigError,
    Authenticator,
    AuthPeer,
    JwtKey,
    JwtVerifier,
    Refusal,
    certificate_name,
)
from hbloop.core.wire import Code, Hello
from hbloop.net.tls import Certificate, TlsLayer, client_context, server_context

from pki import Pki, handshake

SECRET = b"s" * 32
HOUR = 3600


@dataclass
class FakePeer:
    """The AuthPeer the checks see: an address and a verified certificate, or None."""

    certificate: Certificate | None = None
    address: tuple[str, int] = ("127.0.0.1", 40000)

    def peer_certificate(self) -> Certificate | None:
        return self.certificate


def claims(name: str = "alice", expires_in: float = HOUR, **extra: Any) -> dict[str, Any]:
    return {"sub": name, "exp": int(time.time() + expires_in), **extra}


def private_key(path: Path) -> Any:
    return load_pem_private_key(path.read_bytes(), password=None)


def es256_token(pki: Pki, **kwargs: Any) -> str:
    return jwt.encode(claims(**kwargs), private_key(pki.es256_private), algorithm="ES256")


def hs256_token(secret: bytes = SECRET, **kwargs: Any) -> str:
    return jwt.encode(claims(**kwargs), secret, algorithm="HS256")


@pytest.fixture
def es256(pki: Pki) -> JwtVerifier:
    return JwtVerifier(JwtKey.public_key_file(pki.es256_public))


def hello(token: str | None, name: str = "alice") -> Hello:
    return Hello(1, 0, name, token)


# --- JWTs ---------------------------------------------------------------------------


def test_valid_tokens_of_each_algorithm(pki: Pki, es256: JwtVerifier) -> None:
    assert es256.verify(es256_token(pki), "alice") is None
    assert JwtVerifier(JwtKey.shared_secret(SECRET)).verify(hs256_token(), "alice") is None
    rs256 = JwtVerifier(JwtKey.public_key_file(pki.rs256_public))
    assert rs256.key.algorithm == "RS256"
    token = jwt.encode(claims(), private_key(pki.rs256_private), algorithm="RS256")
    assert rs256.verify(token, "alice") is None


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"expires_in": -HOUR}, "token expired"),
        ({"expires_in": -(JWT_LEEWAY + 5)}, "token expired"),
        ({"expires_in": -(JWT_LEEWAY - 5)}, None),  # within the leeway
        ({"name": "bob"}, "token is for another name"),
        ({"nbf": int(time.time() + HOUR)}, "token not valid yet"),
    ],
    ids=["expired", "just-past-leeway", "within-leeway", "name-mismatch", "not-yet-valid"],
)
def test_claims_are_checked(
    pki: Pki, es256: JwtVerifier, kwargs: dict[str, Any], reason: str | None
) -> None:
    assert es256.verify(es256_token(pki, **kwargs), "alice") == reason


def test_a_wrong_signature_is_refused(pki: Pki, es256: JwtVerifier) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims(), stranger, algorithm="ES256")
    assert es256.verify(forged, "alice") == "token signature invalid"
    hs256 = JwtVerifier(JwtKey.shared_secret(SECRET))
    assert hs256.verify(hs256_token(b"t" * 32), "alice") == "token signature invalid"


def test_the_token_cannot_choose_the_algorithm(pki: Pki, es256: JwtVerifier) -> None:
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert es256.verify(unsigned, "alice") == "token algorithm not accepted"
    # The classic confusion: HMAC keyed with the server's public key.
    public_pem = (
        private_key(pki.es256_private)
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    assert es256.verify(_hmac_token(header, public_pem), "alice") == (
        "token algorithm not accepted"
    )


def _hmac_token(header: bytes, key: bytes) -> str:
    """A token signed with HMAC-SHA256 under ``key``, built by hand: PyJWT refuses to
    sign with a PEM key as an HMAC secret, as it should."""
    body = jwt.utils.base64url_encode(json.dumps(claims()).encode())
    signature = hmac.new(key, header + b"." + body, hashlib.sha256).digest()
    return b".".join([header, body, jwt.utils.base64url_encode(signature)]).decode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"sub": "alice"}, "token has no 'exp' claim"),
        ({"exp": int(time.time() + HOUR)}, "token has no 'sub' claim"),
    ],
)
def test_exp_and_sub_are_required(payload: dict[str, Any], reason: str) -> None:
    verifier = JwtVerifier(JwtKey.shared_secret(SECRET))
    assert verifier.verify(jwt.encode(payload, SECRET, algorithm="HS256"), "alice") == reason


def test_not_a_jwt(es256: JwtVerifier) -> None:
    assert es256.verify("not-a-jwt", "alice") == "token is not a valid JWT"
    assert es256.verify("a.b.c", "alice") == "token is not a valid JWT"


def test_audience_and_issuer(pki: Pki) -> None:
    key = JwtKey.public_key_file(pki.es256_public)
    verifier = JwtVerifier(key, audience="hbloop", issuer="https://idp.example")
    good = es256_token(pki, aud="hbloop", iss="https://idp.example")
    assert verifier.verify(good, "alice") is None
    assert verifier.verify(es256_token(pki, aud="other", iss="https://idp.example"), "alice") == (
        "token audience not accepted"
    )
    assert verifier.verify(es256_token(pki, aud="hbloop", iss="https://evil"), "alice") == (
        "token issuer not accepted"
    )
    assert verifier.verify(es256_token(pki, iss="https://idp.example"), "alice") == (
        "token has no 'aud' claim"
    )
    # A token meant for some audience is not accepted where none is expected.
    assert JwtVerifier(key).verify(good, "alice") == "token audience not accepted"


# --- keys ---------------------------------------------------------------------------


def test_secret_file_drops_one_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    verifier = JwtVerifier(JwtKey.secret_file(path))
    assert verifier.verify(hs256_token(), "alice") is None
    assert "s" * 32 not in repr(verifier.key)


def test_unusable_keys_are_one_line_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="at least 32 bytes"):
        JwtKey.shared_secret(b"short")
    with pytest.raises(AuthConfigError, match="cannot read JWT secret"):
        JwtKey.secret_file(tmp_path / "missing")
    with pytest.raises(AuthConfigError, match="is not a PEM public key"):
        JwtKey.public_key_file(pki.es256_private)
    p384 = tmp_path / "p384.pub"
    p384.write_bytes(
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(AuthConfigError, match="EC P-256"):
        JwtKey.public_key_file(p384)


# --- certificate names ---------------------------------------------------------------


def real_client_certificate(pki: Pki, cert: str) -> Certificate:
    """The certificate a server sees after a real mutual-TLS handshake."""
    issued = getattr(pki, cert)
    server = TlsLayer(server_context(pki.server.cert, pki.server.key, pki.ca), server_side=True)
    client = TlsLayer(
        client_context(pki.ca, issued.cert, issued.key),
        server_side=False,
        server_hostname="localhost",
    )
    handshake(server, client)
    certificate = server.peer_certificate()
    assert certificate is not None
    return certificate


def test_certificate_name_is_the_subject_common_name(pki: Pki) -> None:
    assert certificate_name(real_client_certificate(pki, "alice")) == "alice"
    assert certificate_name(None) is None
    assert certificate_name({"subject": ((("organizationName", "acme"),),)}) is None
    two = {"subject": ((("commonName", "alice"),), (("commonName", "bob"),))}
    assert certificate_name(two) is None  # ambiguous: refused rather than guessed


def test_mutual_tls_names(pki: Pki) -> None:
    auth = Authenticator(certificate_names=True)
    alice = FakePeer(real_client_certificate(pki, "alice"))
    assert auth.check(hello(None), alice) is None
    assert auth.check(hello(None, name="bob"), alice) == Refusal(
        Code.UNAUTHORIZED, "client certificate is for another name", "certificate"
    )
    assert auth.check(hello(None), FakePeer()) == Refusal(
        Code.UNAUTHORIZED, "no client certificate", "certificate"
    )
    assert auth.refused == {"certificate": 2}


# --- the authenticator -----------------------------------------------------------------


def test_a_missing_token_is_refused(es256: JwtVerifier) -> None:
    auth = Authenticator(jwt_verifier=es256)
    assert auth.check(hello(None), FakePeer()) == Refusal(
        Code.UNAUTHORIZED, "no token in HELLO", "token"
    )
    assert auth.refused == {"token": 1}


def test_every_configured_check_must_pass(pki: Pki, es256: JwtVerifier) -> None:
    seen: list[tuple[Hello, AuthPeer]] = []

    def only_from_loopback(hello: Hello, peer: AuthPeer) -> bool:
        seen.append((hello, peer))
        return peer.address[0] == "127.0.0.1"

    auth = Authenticator(jwt_verifier=es256, certificate_names=True, authorize=only_from_loopback)
    alice = FakePeer(real_client_certificate(pki, "alice"))
    good = hello(es256_token(pki))
    assert auth.check(good, alice) is None
    assert seen == [(good, alice)]
    # Checked in order, the first failure wins and the later checks do not run.
    expired = hello(es256_token(pki, expires_in=-HOUR))
    assert auth.check(expired, alice) == Refusal(Code.UNAUTHORIZED, "token expired", "token")
    assert auth.check(good, FakePeer()) == Refusal(
        Code.UNAUTHORIZED, "no client certificate", "certificate"
    )
    remote = FakePeer(alice.certificate, ("192.0.2.7", 5000))
    assert auth.check(good, remote) == Refusal(Code.UNAUTHORIZED, "not authorized", "hook")
    assert len(seen) == 2
    assert auth.refused == {"token": 1, "certificate": 1, "hook": 1}


def test_a_failing_hook_refuses_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken(hello: Hello, peer: AuthPeer) -> bool:
        raise KeyError("directory down")

    auth = Authenticator(authorize=broken)
    with caplog.at_level(logging.ERROR, logger="hbloop.auth"):
        refusal = auth.check(hello(None), FakePeer())
    assert refusal == Refusal(Code.UNAUTHORIZED, "authorization failed", "hook")
    assert "directory down" in caplog.text


def test_reasons_never_contain_the_token(pki: Pki, es256: JwtVerifier) -> None:
    auth = Authenticator(jwt_verifier=es256)
    for token in (
        es256_token(pki, expires_in=-HOUR),
        es256_token(pki, name="bob"),
        "garbage-token",
        jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"),
    ):
        refusal = auth.check(hello(token), FakePeer())
        assert refusal is not None
        assert token not in refusal.reason
        assert not any(part in refusal.reason for part in token.split(".") if len(part) > 8)


def test_an_authenticator_needs_a_check() -> None:
    with pytest.raises(AuthConfigError):
        Authenticator()
