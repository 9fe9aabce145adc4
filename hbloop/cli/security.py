"""The TLS contexts, authenticator and HELLO token that settings name: files read at
start (and at a SIGHUP reload), each failure a one-line UsageError."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from hbloop.auth import AuthConfigError, Authenticator, JwtKey, JwtVerifier
from hbloop.cli.errors import UsageError
from hbloop.cli.settings import ClientTlsSettings, ServeSettings
from hbloop.net.tls import TlsConfigError, client_context, server_context

# Where `hbloop client` and `hbloop check` find a HELLO token when no --token-file is
# given: a command line would show it to everyone running `ps`.
TOKEN_ENV = "HBLOOP_TOKEN"


def server_security(
    settings: ServeSettings,
) -> tuple[ssl.SSLContext | None, Authenticator | None]:
    """``hbloop serve``'s TLS context and authenticator, or None for each that is off."""
    try:
        context = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            context = server_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        verifier = None
        if settings.jwt_file is not None:
            key = (
                JwtKey.secret_file(settings.jwt_file)
                if settings.jwt_secret_file is not None
                else JwtKey.public_key_file(settings.jwt_file)
            )
            verifier = JwtVerifier(key, audience=settings.jwt_audience, issuer=settings.jwt_issuer)
    except (TlsConfigError, AuthConfigError) as exc:
        raise UsageError(str(exc)) from None
    if verifier is None and not settings.auth_client_cert:
        return context, None
    return context, Authenticator(
        jwt_verifier=verifier, certificate_names=settings.auth_client_cert
    )


def client_security(settings: ClientTlsSettings) -> tuple[ssl.SSLContext | None, str | None]:
    """``hbloop client``'s and ``check``'s TLS context (None without --tls) and HELLO
    token (from --token-file or $HBLOOP_TOKEN)."""
    context = None
    if settings.tls:
        try:
            context = client_context(settings.ca, settings.cert, settings.key)
        except TlsConfigError as exc:
            raise UsageError(str(exc)) from None
    if settings.token_file is None:
        return context, os.environ.get(TOKEN_ENV) or None
    return context, read_token_file(settings.token_file)


def read_token_file(path: Path) -> str:
    """The token in ``path``; UsageError (one line) if it cannot be read."""
    try:
        # One trailing newline, as an editor or `echo` leaves it, is not part of it.
        return path.read_text().removesuffix("\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise UsageError(f"cannot read token file {path}: {reason}") from None
