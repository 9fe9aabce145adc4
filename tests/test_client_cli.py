"""``hbloop client`` under protocol.md section 5: final endings are one line and exit 1,
settings R4 and R5 refuse are one line and exit 2, --token-file is read at each connect,
and lines over the server's maximum are dropped here."""

from __future__ import annotations

import subprocess
import time

import jwt
import pytest

from pki import Pki

FAST_BACKOFF = ("--backoff-base", "0.05", "--backoff-max", "0.2")


@pytest.mark.parametrize(
    ("case", "cause"),
    [
        ("unknown-ca", "tls_error certificate verify failed: unknown CA"),
        ("client-certificate-required", "tls_error peer refused the handshake: certificate"),
        ("plain-port", "tls_error server answered in plain text, not TLS"),
    ],
)
def test_tls_refusals_end_the_client_with_one_line(
    serve, spawn, pki: Pki, case: str, cause: str
) -> None:
    server_tls = ("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key))
    if case == "unknown-ca":
        server, ca = serve(*server_tls), pki.rogue_ca
    elif case == "client-certificate-required":
        server, ca = serve(*server_tls, "--tls-client-ca", str(pki.ca)), pki.ca
    else:
        server, ca = serve(), pki.ca
    client = spawn("client", "--port", str(server.port), "--tls", "--ca", str(ca), *FAST_BACKOFF)
    assert client.wait() == 1
    [line] = client.lines()
    assert line.startswith(f"disconnected: {cause}"), line


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--interval", "0.05"), "interval 0.05s is below min_interval 0.1s"),
        (("--peer-max-payload", "100"), "--peer-max-payload"),
    ],
)
def test_settings_the_client_cannot_run_with_are_one_line(spawn, args, error: str) -> None:
    client = spawn("client", "--port", "9", *args)  # refused before connecting
    assert client.wait() == 2
    [line] = client.lines()
    assert line.startswith("hbloop: error: ") and error in line, line


def test_a_lower_floor_lets_a_low_interval_through(serve, spawn) -> None:
    server = serve("--min-interval", "0.05", "--interval", "0.05", "--timeout", "0.5")
    client = spawn("client", "--port", str(server.port), "--min-interval", "0.05")
    client.wait_line(r"connected to .* interval 0\.05s, timeout 0\.5s")


def test_a_line_over_the_servers_maximum_is_dropped_here(serve, spawn) -> None:
    server = serve("--max-frame", "1024")
    client = spawn(
        "client", "--port", str(server.port), "--peer-max-payload", "1024", stdin=subprocess.PIPE
    )
    client.wait_line("connected to")
    assert client.proc.stdin is not None
    client.proc.stdin.write("x" * 1025 + "\n" + "y" * 1024 + "\n")
    client.proc.stdin.flush()
    client.wait_line("^y+$", which="stdout")
    client.wait_line(
        "^line dropped: DATA of 1025 bytes is over the server's maximum payload of 1024 bytes$"
    )
    assert client.lines("stdout") == ["y" * 1024]
    assert not server.find("FRAME_TOO_LARGE")


def _token(secret: bytes, name: str) -> str:
    return jwt.encode({"sub": name, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")


def test_the_token_file_is_read_again_at_each_connect(serve, spawn, tmp_path) -> None:
    """The server restarts with a new JWT key and the device's token file has been
    rotated meanwhile: the client connects with the new token instead of stopping on
    UNAUTHORIZED."""
    secret_file, token_file = tmp_path / "jwt.secret", tmp_path / "token"
    secret_file.write_bytes(b"a" * 32)
    token_file.write_text(_token(b"a" * 32, "rotor") + "\n")
    server = serve("--jwt-secret-file", str(secret_file))
    client = spawn(
        "client",
        "--port",
        str(server.port),
        "-n",
        "rotor",
        "--token-file",
        str(token_file),
        *FAST_BACKOFF,
    )
    client.wait_line("connected to")
    assert server.terminate() == 0
    secret_file.write_bytes(b"b" * 32)
    token_file.write_text(_token(b"b" * 32, "rotor") + "\n")
    server = serve("--jwt-secret-file", str(secret_file), "--port", str(server.port))
    client.wait_line("connected to", count=2)
    server.wait_line(r"connect .* name=rotor")
    assert not client.find("UNAUTHORIZED")
