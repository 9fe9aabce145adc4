"""In-band re-authentication and credential expiry (protocol.md A1-A6) through real
`hbloop serve` and `hbloop client` processes on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from hbloop.core.wire import (
    PING_FRAME,
    VERSION_2,
    Code,
    FrameType,
    encode_auth,
    encode_close,
    encode_hello,
)

from conftest import WAIT_TIMEOUT, RawPeer, expect_last_word, wait_for

SECRET = b"s" * 32
FAST_BACKOFF = ("--backoff-base", "0.05", "--backoff-max", "0.2")

# A short-lived token: long enough for a busy machine to connect well within it (the
# client renews at 80 % of it, A6), short enough to keep the tests quick.
SHORT_LIFETIME = 6.0
# How far past an expiry a test waits before judging that nothing happened at it.
PAST_EXPIRY = 1.5


def make_token(name: str, lifetime: float, secret: bytes = SECRET) -> tuple[str, float]:
    exp = time.time() + lifetime
    return jwt.encode({"sub": name, "exp": round(exp)}, secret, algorithm="HS256"), round(exp)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwt.secret"
    path.write_bytes(SECRET)
    return path


def open_v2(address: tuple[str, int], name: str, token: str) -> RawPeer:
    peer = RawPeer(address)
    peer.send(encode_hello(name, 0, VERSION_2, token=token))
    ftype, _ = peer.recv()
    assert ftype == FrameType.WELCOME
    return peer


@pytest.mark.slow
def test_a_token_rotated_under_a_live_session_is_offered_in_band(
    serve, spawn, secret_file: Path, tmp_path: Path
) -> None:
    """A6 and A2: the device's token file is refreshed before exp; the client offers
    it in AUTH, the server logs the re-auth and the session outlives the first token.
    Then the server restarts and the client reconnects with the file's token."""
    token_file = tmp_path / "token"
    server = serve("--jwt-secret-file", str(secret_file))
    # Minted once the server is up, so that its start-up does not eat the lifetime.
    first, first_exp = make_token("rotor", SHORT_LIFETIME)
    token_file.write_text(first + "\n")
    client = spawn(
        "client", "--port", str(server.port), "-n", "rotor", "--token-file", str(token_file),
        *FAST_BACKOFF,
    )  # fmt: skip
    client.wait_line("connected to")
    token_file.write_text(make_token("rotor", 3600)[0] + "\n")
    server.wait_line(r"reauth 127\.0\.0\.1:\d+ name=rotor", timeout=SHORT_LIFETIME + WAIT_TIMEOUT)
    assert wait_for(lambda: time.time() > first_exp + PAST_EXPIRY, SHORT_LIFETIME + PAST_EXPIRY)
    assert not server.find("credentials expired|disconnect")
    assert len(server.find(r"connect 127\.0\.0\.1:\d+ name=rotor")) == 1

    assert server.terminate() == 0
    token_file.write_text(make_token("rotor", 3600)[0] + "\n")
    server = serve("--jwt-secret-file", str(secret_file), "--port", str(server.port))
    server.wait_line(r"connect 127\.0\.0\.1:\d+ name=rotor")
    assert not client.find("UNAUTHORIZED")


@pytest.mark.parametrize("policy", ["close", "ignore"])
def test_expiry_closes_with_credentials_expired_only_under_close(
    serve, secret_file: Path, policy: str
) -> None:
    """A5: with --auth-expiry close the session ends with CLOSE CREDENTIALS_EXPIRED when
    its token's exp passes; with ignore it carries on."""
    server = serve("--jwt-secret-file", str(secret_file), "--auth-expiry", policy)
    token, exp = make_token("fading", 2.0)
    with open_v2(server.address, "fading", token) as peer:
        if policy == "close":
            expect_last_word(peer, FrameType.CLOSE, Code.CREDENTIALS_EXPIRED)
            server.wait_line(r"credentials expired 127\.0\.0\.1:\d+ name=fading")
            return
        assert wait_for(lambda: time.time() > exp + PAST_EXPIRY, 2.0 + PAST_EXPIRY + 1)
        peer.send(PING_FRAME)
        assert peer.recv()[0] == FrameType.PONG
    assert not server.find("credentials expired")


def test_a_fresh_token_moves_the_expiry(serve, secret_file: Path) -> None:
    """A3 and A5: an accepted AUTH is answered with an empty AUTH, and the session then
    lives past the first token's exp."""
    server = serve("--jwt-secret-file", str(secret_file))
    token, exp = make_token("mover", 2.0)
    with open_v2(server.address, "mover", token) as peer:
        peer.send(encode_auth(make_token("mover", 3600)[0]))
        assert peer.recv() == (FrameType.AUTH, b"")
        assert wait_for(lambda: time.time() > exp + PAST_EXPIRY, 2.0 + PAST_EXPIRY + 1)
        peer.send(PING_FRAME)
        assert peer.recv()[0] == FrameType.PONG
    server.wait_line(r"reauth 127\.0\.0\.1:\d+ name=mover")


@pytest.mark.parametrize(
    ("subject", "secret"), [("someone-else", SECRET), ("holder", b"x" * 32)], ids=["name", "key"]
)
def test_a_bad_fresh_token_is_unauthorized(
    serve, secret_file: Path, subject: str, secret: bytes
) -> None:
    """A2: the fresh token is judged as HELLO's: for the session's name, by the same
    key; a refusal is ERROR UNAUTHORIZED and the end of the connection."""
    server = serve("--jwt-secret-file", str(secret_file))
    with open_v2(server.address, "holder", make_token("holder", 3600)[0]) as peer:
        peer.send(encode_auth(make_token(subject, 3600, secret)[0]))
        expect_last_word(peer, FrameType.ERROR, Code.UNAUTHORIZED)
    server.wait_line(r"unauthorized 127\.0\.0\.1:\d+ name=holder check=token")


def test_auth_on_a_version_1_connection_is_an_unknown_type(serve, secret_file: Path) -> None:
    """A1: a version 1 peer cannot know AUTH; the server answers as to any unknown type."""
    server = serve("--jwt-secret-file", str(secret_file))
    with RawPeer(server.address) as peer:
        assert peer.hello("old", token=make_token("old", 3600)[0])[0] == FrameType.WELCOME
        peer.send(encode_auth(make_token("old", 3600)[0]))
        expect_last_word(peer, FrameType.ERROR, Code.UNKNOWN_TYPE)


def test_auth_on_a_server_without_checks_is_answered(serve) -> None:
    """A4: a server that checks no credentials answers AUTH without judging it."""
    server = serve()
    with open_v2(server.address, "free", "opaque-key") as peer:
        peer.send(encode_auth("another-opaque-key"))
        assert peer.recv() == (FrameType.AUTH, b"")


def test_an_auth_followed_by_close_in_one_read_ends_quietly(serve, secret_file: Path) -> None:
    """A2 and C2: the peer's CLOSE behind its AUTH ends the session before the token is
    judged; the server carries on."""
    server = serve("--jwt-secret-file", str(secret_file))
    with open_v2(server.address, "leaver", make_token("leaver", 3600)[0]) as peer:
        peer.send(encode_auth(make_token("leaver", 3600, b"x" * 32)[0]) + encode_close(Code.NORMAL))
        assert peer.recv_until_eof() == []
    server.wait_line(r"disconnect 127\.0\.0\.1:\d+ name=leaver .*reason=peer_closed NORMAL")
    with open_v2(server.address, "after", make_token("after", 3600)[0]):
        pass  # still serving
    assert not server.find("Traceback|unauthorized")
