"""`hbloop serve` with TLS and authentication, over real sockets with real certificates.

Real `hbloop serve`, `hbloop client` and `hbloop check` processes, certificates and
JWT keys from the `pki` fixture. Every failure case gets a clear error, and peers
heartbeating on the same server meanwhile are still answered after it.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from hbloop.auth import Authenticator, AuthPeer, certificate_name
from hbloop.cli.parser import parse
from hbloop.cli.security import server_security
from hbloop.cli.settings import ServeSettings
from hbloop.client import Client
from hbloop.core.policy import ServerPolicy
from hbloop.core.protocol import Frame, FrameDecoder, parse_error
from hbloop.core.session import Reason
from hbloop.core.wire import (
    DEFAULT_MAX_PAYLOAD,
    PING_FRAME,
    Code,
    FrameType,
    Hello,
    encode_data,
    encode_hello,
)
from hbloop.net.tls import TlsLayer, client_context, server_context

from conftest import (
    HBLOOP,
    ROOT,
    WAIT_TIMEOUT,
    GoodPeers,
    InProcessServer,
    RawPeer,
    ServerProcess,
    metrics_address,
    scrape,
    wait_for,
    wait_for_metrics,
)
from pki import Pki

HOUR = 3600

# The slow consumer: a small receive window, DATA the server echoes, and a bound on
# what it sends before the server must have cut it off at its --max-pending.
SLOW_CAP = 128 * 1024
HOG_RCVBUF = 4096
HOG_FRAME = encode_data(bytes(16 * 1024))
HOG_MAX_BYTES = 64 * 1024 * 1024

# More DATA frames than a peer may have acted on per loop iteration (256), small
# enough to travel in one TLS record (16 KiB).
BURST = 600

# One handshake a second, with a bucket of one: the second of two quick connects is
# refused, and a token is back within a second.
HANDSHAKE_RATE = "1"

# A TLS record: content type, version (2 bytes), length (2 bytes), then the body.
RECORD_HEADER = 5

_prefixes = itertools.count()


def token(pki: Pki, name: str, expires_in: float = HOUR) -> str:
    key: Any = load_pem_private_key(pki.es256_private.read_bytes(), password=None)
    return jwt.encode({"sub": name, "exp": int(time.time() + expires_in)}, key, algorithm="ES256")


def tampered(pki: Pki) -> str:
    """alice's token with the end of its signature replaced."""
    return token(pki, "alice")[:-4] + "AAAA"


def refusal(peer: RawPeer, hello: bytes) -> tuple[int, str]:
    """Send ``hello``: the server must answer ERROR and close. Its code and message."""
    peer.send(hello)
    frames = peer.recv_until_eof()
    assert [ftype for ftype, _ in frames] == [FrameType.ERROR], frames
    return parse_error(frames[0][1])


def tls_args(pki: Pki) -> list[str]:
    return ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]


@pytest.fixture(scope="module")
def tls(pki: Pki) -> ssl.SSLContext:
    return client_context(pki.ca)


@pytest.fixture(scope="module")
def jwt_server(pki: Pki) -> Iterator[ServerProcess]:
    server = ServerProcess(
        *tls_args(pki),
        "--jwt-public-key",
        str(pki.es256_public),
        "--max-pending",
        str(SLOW_CAP),
        "--metrics-port",
        "0",
    )
    yield server
    server.stop()


@pytest.fixture
def bystanders(
    pki: Pki,
    jwt_server: ServerProcess,
    tls: ssl.SSLContext,
    good_peers: Callable[..., GoodPeers],
) -> GoodPeers:
    """TLS peers with valid tokens, heartbeating on the JWT server throughout a test."""
    return good_peers(
        jwt_server.address,
        count=2,
        prefix=f"good{next(_prefixes)}",
        tls=tls,
        token=lambda name: token(pki, name),
    )


def metric(server: ServerProcess, name: str) -> float:
    return scrape(metrics_address(server)).get(name, 0.0)


# --- a valid session --------------------------------------------------------------------


def test_a_tls_client_with_a_token_heartbeats_and_is_echoed(
    pki: Pki,
    jwt_server: ServerProcess,
    bystanders: GoodPeers,
    spawn: Callable[..., Any],
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "alice.jwt"
    token_file.write_text(token(pki, "alice") + "\n")
    client = spawn(
        "client",
        "--port",
        str(jwt_server.port),
        "--name",
        "alice",
        "--interval",
        "0.2",
        "--tls",
        "--ca",
        str(pki.ca),
        "--token-file",
        str(token_file),
        stdin=subprocess.PIPE,
    )
    client.wait_line(r"connected to 127\.0\.0\.1:\d+ as alice: interval 0\.2s, timeout 0\.6s")
    client.proc.stdin.write("over tls\n")
    client.proc.stdin.flush()
    client.wait_line(r"^over tls$", which="stdout")
    # Past several of alice's timeouts: her PINGs keep her connected.
    bystanders.assert_served(jwt_server, rounds=3)
    client.proc.stdin.write("still here\n")
    client.proc.stdin.flush()
    client.wait_line(r"^still here$", which="stdout")
    jwt_server.wait_line(r"connect 127\.0\.0\.1:\d+ name=alice interval=0\.2s")
    assert not jwt_server.find(r"disconnect .* name=alice ")


def test_a_burst_of_frames_in_one_record_is_all_answered(
    pki: Pki, jwt_server: ServerProcess, tls: ssl.SSLContext, bystanders: GoodPeers
) -> None:
    with RawPeer(jwt_server.address, tls=tls) as peer:
        assert peer.hello("burst", 0, token(pki, "burst"))[0] == FrameType.WELCOME
        payloads = [b"%d" % i for i in range(BURST)]
        peer.send(b"".join(encode_data(p) for p in payloads))  # one record: one sendall
        assert [peer.recv() for _ in payloads] == [(FrameType.DATA, p) for p in payloads]
    bystanders.assert_served(jwt_server, rounds=1)


def _tls_handshake(sock: socket.socket, layer: TlsLayer) -> None:
    sock.sendall(layer.start())
    while not layer.handshake_done:
        layer.receive(sock.recv(65536))
        sock.sendall(layer.data_to_send())


def _records(data: bytes) -> list[bytes]:
    records = []
    while data:
        end = RECORD_HEADER + int.from_bytes(data[3:RECORD_HEADER], "big")
        records.append(data[:end])
        data = data[end:]
    return records


def test_close_notify_follows_the_last_frame_once(
    pki: Pki, jwt_server: ServerProcess, tls: ssl.SSLContext, bystanders: GoodPeers
) -> None:
    layer = TlsLayer(tls, server_side=False, server_hostname="127.0.0.1")
    with socket.create_connection(jwt_server.address, timeout=WAIT_TIMEOUT) as sock:
        _tls_handshake(sock, layer)
        # Four PINGs at once: three strikes (T8), so the server ends it with ERROR.
        sock.sendall(layer.send(encode_hello("notify", 0, token=token(pki, "notify"))))
        sock.sendall(layer.send(PING_FRAME * 4))
        ciphertext = b"".join(iter(lambda: sock.recv(65536), b""))  # up to the FIN
    outcomes = [(layer.receive(record), layer.peer_closed) for record in _records(ciphertext)]
    frames: list[Frame] = FrameDecoder(DEFAULT_MAX_PAYLOAD).feed(
        b"".join(plain for plain, _ in outcomes)
    )
    assert [ftype for ftype, _ in frames] == [
        FrameType.WELCOME,
        *[FrameType.PONG] * 3,
        FrameType.ERROR,
    ]
    assert parse_error(frames[-1][1])[0] == Code.TOO_MANY_PINGS
    # The last record, and only it, is close_notify; then the FIN.
    assert outcomes[-1] == (b"", True)
    assert [closed for _, closed in outcomes[:-1]] == [False] * (len(outcomes) - 1)
    bystanders.assert_served(jwt_server, rounds=1)


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda pki: token(pki, "alice", -HOUR), "token expired"),
        (tampered, "token signature invalid"),
        (lambda pki: token(pki, "bob"), "token is for another name"),
        (lambda pki: None, "no token in HELLO"),
    ],
    ids=["expired", "wrong-signature", "name-mismatch", "missing"],
)
def test_a_bad_token_is_refused_logged_and_counted(
    pki: Pki,
    jwt_server: ServerProcess,
    tls: ssl.SSLContext,
    bystanders: GoodPeers,
    make_token: Callable[[Pki], str | None],
    reason: str,
) -> None:
    counter = 'hbloop_auth_refused_total{check="token"}'
    before = metric(jwt_server, counter)
    line = rf"unauthorized 127\.0\.0\.1:(\d+) name=alice check=token reason={reason}$"
    seen = len(jwt_server.find(line))
    secret = make_token(pki)
    with RawPeer(jwt_server.address, tls=tls) as peer:
        assert refusal(peer, encode_hello("alice", 0, token=secret)) == (Code.UNAUTHORIZED, reason)
    port = jwt_server.wait_line(line, count=seen + 1).group(1)
    jwt_server.wait_line(rf"disconnect 127\.0\.0\.1:{port} .* reason=refused UNAUTHORIZED {reason}")
    if secret is not None:
        signature = secret.rsplit(".", 1)[1]
        assert not [line for line in jwt_server.lines() if signature in line]
    wait_for_metrics(metrics_address(jwt_server), {counter: before + 1})
    bystanders.assert_served(jwt_server, rounds=1)


def test_a_plain_client_on_a_tls_port_is_told_in_plain_text(
    jwt_server: ServerProcess, bystanders: GoodPeers
) -> None:
    counter = "hbloop_tls_handshakes_failed_total"
    before = metric(jwt_server, counter)
    with RawPeer(jwt_server.address) as peer:
        code, message = refusal(peer, encode_hello("plain", 0))
    assert code == Code.UNAUTHORIZED
    assert message == (
        "TLS required on this port (peer sent plain text, not TLS: an hbloop HELLO "
        "(is the client missing --tls?))"
    )
    jwt_server.wait_line(r"disconnect .* name=- .* reason=tls_error UNAUTHORIZED TLS required")
    wait_for_metrics(metrics_address(jwt_server), {counter: before + 1})
    bystanders.assert_served(jwt_server, rounds=1)


def test_a_slow_consumer_is_cut_off_by_its_ciphertext(
    pki: Pki, jwt_server: ServerProcess, tls: ssl.SSLContext, bystanders: GoodPeers
) -> None:
    with RawPeer(jwt_server.address, rcvbuf=HOG_RCVBUF, tls=tls) as hog:
        assert hog.hello("hog", 0, token(pki, "hog"))[0] == FrameType.WELCOME
        sent = 0
        with pytest.raises(OSError):  # reset, broken pipe or an SSL error: cut off
            while sent < HOG_MAX_BYTES:
                hog.send(HOG_FRAME)
                sent += len(HOG_FRAME)
    match = jwt_server.wait_line(r"disconnect .* name=hog .* reason=slow_consumer (\d+) bytes")
    # What was pending is ciphertext: at most a record's overhead over one frame past
    # the cap.
    assert SLOW_CAP < int(match.group(1)) <= SLOW_CAP + 2 * len(HOG_FRAME)
    bystanders.assert_served(jwt_server, rounds=1)


def test_a_tls_client_on_a_plain_port_is_told_so(
    serve: Callable[..., ServerProcess],
    good_peers: Callable[..., GoodPeers],
    spawn: Callable[..., Any],
    pki: Pki,
) -> None:
    server = serve()
    peers = good_peers(server.address)
    client = spawn(
        "client", "--port", str(server.port), "--tls", "--ca", str(pki.ca), "--no-reconnect"
    )
    assert client.wait() == 1
    assert client.lines()[-1].startswith(
        "disconnected: tls_error server answered in plain text, not TLS: ERROR RESERVED_BITS "
        "flags 0x01 must be zero; looks like TLS"
    )
    server.wait_line(r"reason=protocol_error RESERVED_BITS .* looks like TLS")
    peers.assert_served(server, rounds=1)


def test_client_certificates_name_their_holder(
    pki: Pki, serve: Callable[..., ServerProcess]
) -> None:
    server = serve(*tls_args(pki), "--tls-client-ca", str(pki.ca), "--auth-client-cert")

    def holder(issued: str | None) -> ssl.SSLContext:
        cert = getattr(pki, issued) if issued else None
        return client_context(pki.ca, cert and cert.cert, cert and cert.key)

    with RawPeer(server.address, tls=holder("alice")) as alice:
        assert alice.hello("alice")[0] == FrameType.WELCOME
        with RawPeer(server.address, tls=holder("bob")) as impostor:
            assert refusal(impostor, encode_hello("alice", 0)) == (
                Code.UNAUTHORIZED,
                "client certificate is for another name",
            )
        server.wait_line(r"unauthorized .* name=alice check=certificate")
        # Untrusted or missing certificates fail the TLS handshake itself. In TLS 1.3
        # the client finishes first and learns of it from the server's alert.
        for issued, told, logged in [
            ("rogue_alice", "unknown ca", "certificate verify failed: unknown CA"),
            (None, "certificate required", "peer did not return a certificate"),
        ]:
            with RawPeer(server.address, tls=holder(issued)) as rogue:
                rogue.send(encode_hello("alice", 0))
                with pytest.raises(ssl.SSLError, match=told):
                    rogue.recv()
            server.wait_line(rf"disconnect .* reason=tls_error {logged}$")
        alice.send(PING_FRAME)
        assert alice.recv()[0] == FrameType.PONG


def test_the_handshake_rate_limit_refuses_the_excess_and_recovers(
    pki: Pki,
    tls: ssl.SSLContext,
    serve: Callable[..., ServerProcess],
    good_peers: Callable[..., GoodPeers],
) -> None:
    server = serve(*tls_args(pki), "--tls-handshake-rate", HANDSHAKE_RATE, "--metrics-port", "0")
    peers = good_peers(server.address, count=1, tls=tls)  # takes the one token
    for _ in range(3):
        with pytest.raises(OSError):  # closed at accept: EOF or reset in the handshake
            RawPeer(server.address, tls=tls)
    wait_for_metrics(metrics_address(server), {"hbloop_tls_handshakes_refused_total": 3})

    def welcomed() -> bool:
        try:
            with RawPeer(server.address, tls=tls) as late:
                return late.hello("late")[0] == FrameType.WELCOME
        except OSError:
            return False

    assert wait_for(welcomed, step=0.2), "no handshake allowed again"
    # One line per interval, counting every refusal in it (the 3, and any retries).
    shed = r"over 1 TLS handshakes/s: shed (\d+) connections in 1s"
    assert wait_for(lambda: sum(int(m.group(1)) for m in server.find(shed)) >= 3)
    peers.assert_served(server, rounds=1)


def test_hbloop_check_over_tls_with_a_token(
    pki: Pki, jwt_server: ServerProcess, tmp_path: Path
) -> None:
    token_file = tmp_path / "check.jwt"
    token_file.write_text(token(pki, "hbloop-check"))

    def check(ca: Path) -> subprocess.CompletedProcess[str]:
        options = ["--tls", "--ca", str(ca), "--token-file", str(token_file), "--max-wait", "0.5"]
        return subprocess.run(
            [*HBLOOP, "check", f"127.0.0.1:{jwt_server.port}", *options],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    result = check(pki.ca)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The server conforms" in result.stdout
    assert " FAIL " not in result.stdout
    untrusted = check(pki.rogue_ca)
    assert untrusted.returncode == 2
    assert untrusted.stderr == (
        f"hbloop: error: TLS with 127.0.0.1:{jwt_server.port} failed: "
        "certificate verify failed: unknown CA\n"
    )


# --- the embedding API and the configuration -------------------------------------------------


def test_an_embedded_server_with_an_authorize_hook(
    pki: Pki, in_process_server: Callable[..., InProcessServer]
) -> None:
    def authorize(hello: Hello, peer: AuthPeer) -> bool:
        seen.append((hello.name, certificate_name(peer.peer_certificate())))
        return hello.name != "mallory"

    seen: list[tuple[str, str | None]] = []
    instance = in_process_server(
        ServerPolicy(),
        tls_context=server_context(pki.server.cert, pki.server.key, pki.ca),
        authenticator=Authenticator(authorize=authorize),
    )

    def connect(name: str) -> Client:
        return instance.client(name, tls=client_context(pki.ca, pki.alice.cert, pki.alice.key))

    alice, mallory = connect("alice"), connect("mallory")
    instance.run_until(lambda: alice.welcome is not None and mallory.stopped is not None)
    assert sorted(seen) == [("alice", "alice"), ("mallory", "alice")]
    assert mallory.stopped is not None and mallory.stopped.reason is Reason.PEER_ERROR
    assert (mallory.stopped.code, mallory.stopped.detail) == (Code.UNAUTHORIZED, "not authorized")
    [peer] = instance.server.peers
    assert certificate_name(peer.peer_certificate()) == "alice"
    assert instance.server.stats.auth_refused == {"hook": 1}


def test_tls_and_jwt_options_from_a_config_file(pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "hbloop.toml"
    config.write_text(
        f'tls-cert = "{pki.server.cert}"\n'
        f'tls-key = "{pki.server.key}"\n'
        f'tls-client-ca = "{pki.ca}"\n'
        "auth-client-cert = true\n"
        f'jwt-public-key = "{pki.rs256_public}"\n'
        'jwt-audience = "fleet"\n'
        "tls-handshake-rate = 200\n"
    )
    settings = parse(["serve", "--config", str(config)])
    assert isinstance(settings, ServeSettings)
    context, authenticator = server_security(settings)
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    assert authenticator is not None and authenticator.certificate_names
    assert authenticator.jwt_verifier is not None
    assert authenticator.jwt_verifier.key.algorithm == "RS256"
    assert authenticator.jwt_verifier.audience == "fleet"
    assert settings.tls_handshake_rate == 200


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["serve", "--tls-cert", "server.crt"], "--tls-cert and --tls-key go together"),
        (["serve", "--auth-client-cert"], "--auth-client-cert needs --tls-client-ca"),
        (["serve", "--jwt-audience", "fleet"], "--jwt-audience and --jwt-issuer need"),
        (["serve", "--jwt-secret-file", "missing.secret"], "cannot read JWT secret"),
        (["client", "--ca", "ca.crt"], "--ca, --cert and --key need --tls"),
        (["check", "127.0.0.1:1", "--tls", "--cert", "a.crt"], "--cert and --key go together"),
    ],
    ids=["cert-alone", "names-without-ca", "audience-without-key", "no-secret", "ca", "cert"],
)
def test_inconsistent_tls_options_are_one_line_usage_errors(
    args: list[str], error: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [*HBLOOP, *args], cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_TIMEOUT
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"hbloop: error: {error}")
    assert len(result.stderr.splitlines()) == 1
