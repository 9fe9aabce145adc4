"""Who may claim a name: the server's checks of a HELLO, off by default.

Three checks, each optional, composed by ``Authenticator``; every one configured
must pass:

* a JWT in HELLO's token field, verified with PyJWT (HS256 with a shared secret, or
  ES256 or RS256 with a public key): the signature, ``exp`` (with ``JWT_LEEWAY``),
  ``aud`` and ``iss`` when configured, and ``sub`` equal to the HELLO name;
* under mutual TLS, the client certificate's subject common name equal to the HELLO
  name, as Mosquitto's ``use_identity_as_username``, Kubernetes and Azure IoT Hub read
  a client certificate. The common name rather than a subjectAltName because a device
  certificate carries exactly one identity there, while SANs name hosts and may be
  many;
* an application hook ``authorize(hello, peer) -> bool`` for anything else.

``Authenticator.check`` returns None to admit the peer, or a ``Refusal`` (ERROR
UNAUTHORIZED with a one-line reason). The caller logs the refusal with the reason;
no reason ever contains the token, and ``Hello``'s repr leaves it out.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hbloop.core.logfields import token
from hbloop.core.wire import Code, Hello
from hbloop.net.tls import Certificate

# PyJWT and cryptography are imported where a key is loaded or a verifier made: they
# cost about 0.1 s of CPU to import, as much as the rest of an hbloop process's start,
# and most processes (clients, checkers, servers without --jwt-*) never use them. A
# server that verifies tokens pays at start-up, not at its first HELLO.
if TYPE_CHECKING:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

log = logging.getLogger("hbloop.auth")

# Clocks drift between NTP syncs, on small devices most of all. 30 s forgives that
# without keeping a stolen token alive noticeably longer (common libraries allow
# 60 s to 5 min; a token is checked only when a connection starts).
JWT_LEEWAY = 30.0

# RFC 7518, 3.2: an HS256 key must be at least as long as the hash output, 256 bits.
MIN_HS256_SECRET_BYTES = 32

# Claims every token must carry: without ``exp`` a leaked token would work forever,
# and ``sub`` is the name it vouches for.
REQUIRED_CLAIMS = ("exp", "sub")


@functools.cache
def _jwt_reasons() -> tuple[tuple[type[jwt.PyJWTError], str], ...]:
    """One-line reasons for PyJWT's errors, most specific first. They name the
    problem, never the token."""
    import jwt

    return (
        (jwt.ExpiredSignatureError, "token expired"),
        (jwt.ImmatureSignatureError, "token not valid yet"),
        (jwt.InvalidSignatureError, "token signature invalid"),
        (jwt.InvalidAlgorithmError, "token algorithm not accepted"),
        (jwt.InvalidAudienceError, "token audience not accepted"),
        (jwt.InvalidIssuerError, "token issuer not accepted"),
        (jwt.InvalidIssuedAtError, "token issued-at time invalid"),
        (jwt.DecodeError, "token is not a valid JWT"),
    )


class AuthConfigError(ValueError):
    """A key or secret that cannot be used; the message is one line."""


class AuthPeer(Protocol):
    """What the checks need to know of a connection; the server's Peer is one."""

    @property
    def address(self) -> tuple[str, int]: ...

    def peer_certificate(self) -> Certificate | None: ...


AuthorizeHook = Callable[[Hello, AuthPeer], bool]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A HELLO refused: the code and a one-line reason for ERROR and the log."""

    code: Code
    reason: str
    check: str  # which check refused: one of hbloop.net.counters.AUTH_CHECKS


@dataclass(frozen=True, slots=True)
class JwtKey:
    """What verifies a token's signature, and the one algorithm it goes with."""

    key: bytes | PublicKey = field(repr=False)  # an HS256 secret is a secret
    algorithm: str

    @classmethod
    def shared_secret(cls, secret: bytes) -> JwtKey:
        """HS256 with a shared secret of at least 32 bytes."""
        if len(secret) < MIN_HS256_SECRET_BYTES:
            raise AuthConfigError(
                f"an HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes "
                f"(RFC 7518), this one has {len(secret)}"
            )
        return cls(secret, "HS256")

    @classmethod
    def secret_file(cls, path: Path) -> JwtKey:
        """HS256 with the secret in a file (a command line would show it to ``ps``);
        one trailing newline is not part of it."""
        try:
            secret = path.read_bytes()
        except OSError as exc:
            raise AuthConfigError(f"cannot read JWT secret {path}: {exc.strerror}") from None
        return cls.shared_secret(secret.removesuffix(b"\n"))

    @classmethod
    def public_key_file(cls, path: Path) -> JwtKey:
        """ES256 or RS256, as the PEM public key is an EC P-256 or an RSA key."""
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            key = load_pem_public_key(path.read_bytes())
        except OSError as exc:
            raise AuthConfigError(f"cannot read JWT public key {path}: {exc.strerror}") from None
        except ValueError:
            raise AuthConfigError(f"{path} is not a PEM public key") from None
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            return cls(key, "ES256")
        if isinstance(key, rsa.RSAPublicKey):
            return cls(key, "RS256")
        raise AuthConfigError(f"{path}: JWT keys must be EC P-256 (ES256) or RSA (RS256)")


class JwtVerifier:
    """Verifies the JWT in a HELLO; ``verify(token, name)`` returns None or a reason.

    The algorithm is fixed by the key, never taken from the token's header, so a
    token cannot pick a weaker one (the JWT "alg" confusion attacks). ``audience``
    and ``issuer``, when set, must match the token's ``aud`` and ``iss``; a token
    that has an ``aud`` is refused by a verifier that expects none (PyJWT's rule).
    """

    def __init__(
        self,
        key: JwtKey,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = JWT_LEEWAY,
    ) -> None:
        self.key = key
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.reasons = _jwt_reasons()  # imports PyJWT now (see the imports)

    def verify(self, token: str, name: str) -> str | None:
        """None if ``token`` vouches for ``name`` now, else why not."""
        import jwt

        try:
            claims = jwt.decode(
                token,
                self.key.key,
                algorithms=[self.key.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.MissingRequiredClaimError as exc:
            return f"token has no '{exc.claim}' claim"
        except jwt.PyJWTError as exc:
            return next(
                (reason for kind, reason in self.reasons if isinstance(exc, kind)),
                "token rejected",
            )
        if claims["sub"] != name:
            return "token is for another name"
        return None


def certificate_name(certificate: Certificate | None) -> str | None:
    """The subject common name of a verified certificate, if it has exactly one."""
    if not certificate:
        return None
    names = [
        value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    return names[0] if len(names) == 1 else None


class Authenticator:
    """The server's checks at HELLO time; see the module's docstring.

    ``refused`` counts refusals by check ("token", "certificate", "hook"), for the
    metrics.
    """

    def __init__(
        self,
        *,
        jwt_verifier: JwtVerifier | None = None,
        certificate_names: bool = False,
        authorize: AuthorizeHook | None = None,
    ) -> None:
        if jwt_verifier is None and not certificate_names and authorize is None:
            raise AuthConfigError("an authenticator needs at least one check")
        self.jwt_verifier = jwt_verifier
        self.certificate_names = certificate_names
        self.authorize = authorize
        self.refused: Counter[str] = Counter()

    def check(self, hello: Hello, peer: AuthPeer) -> Refusal | None:
        """None to admit the peer, else the refusal to send and log."""
        refusal = self._first_failure(hello, peer)
        if refusal is not None:
            self.refused[refusal.check] += 1
        return refusal

    def _first_failure(self, hello: Hello, peer: AuthPeer) -> Refusal | None:
        if self.jwt_verifier is not None:
            if hello.token is None:
                return Refusal(Code.UNAUTHORIZED, "no token in HELLO", "token")
            reason = self.jwt_verifier.verify(hello.token, hello.name)
            if reason is not None:
                return Refusal(Code.UNAUTHORIZED, reason, "token")
        if self.certificate_names:
            certificate = peer.peer_certificate()
            if certificate is None:
                return Refusal(Code.UNAUTHORIZED, "no client certificate", "certificate")
            if certificate_name(certificate) != hello.name:
                return Refusal(
                    Code.UNAUTHORIZED, "client certificate is for another name", "certificate"
                )
        if self.authorize is not None:
            try:
                allowed = self.authorize(hello, peer)
            except Exception:
                log.exception("authorize hook raised; refusing %s", token(hello.name))
                return Refusal(Code.UNAUTHORIZED, "authorization failed", "hook")
            if not allowed:
                return Refusal(Code.UNAUTHORIZED, "not authorized", "hook")
        return None
