"""protocol.md section 5 (R1-R7) for both Python clients, ``hbloop.Client`` on an
EventLoop and ``hbloop.aio.Client`` on asyncio: one behavioural matrix, each test run
against each, so that the two cannot drift apart."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from fakeserver import AfterWelcome, fake_server, record_silently, say, welcome

from hbloop import aio
from hbloop.client import (
    Client,
    ClientBase,
    ClientConfigError,
    PayloadTooLarge,
    is_final,
    plaintext_token_allowed,
)
from hbloop.core.backoff import Backoff
from hbloop.core.protocol import LocalProtocolError
from hbloop.core.session import Disconnect, Reason
from hbloop.core.wire import Code, Scheme, Welcome, encode_close, encode_error
from hbloop.net.loop import EventLoop
from hbloop.net.tls import client_context

from conftest import WAIT_TIMEOUT, wait_for
from pki import Pki

KINDS = ("loop", "aio")

# A grant long enough that only the server's answer ends each connection.
LONG_GRANT = welcome(Scheme.CLIENT, 10_000, 30_000)
# A grant whose timeout passes quickly: a silent server lets the client give up after
# 200 ms, open for its whole timeout, so that the connection has proved itself (R2).
SHORT_GRANT = welcome(Scheme.CLIENT, 100, 200)


class Driven:
    """One Python client of ``kind``, on its own loop, driven step by step from the
    test; what it reported is kept in ``welcomes`` and ``disconnects``."""

    def __init__(self, kind: str, port: int, name: str, **options: Any) -> None:
        self.kind = kind
        self.welcomes: list[Welcome] = []
        self.disconnects: list[tuple[Disconnect, float | None]] = []
        common: dict[str, Any] = {
            "on_welcome": self.welcomes.append,
            "on_disconnect": lambda d, retry: self.disconnects.append((d, retry)),
            **options,
        }
        self.client: Client | aio.Client
        if kind == "loop":
            self.loop = EventLoop()
            self.client = Client("127.0.0.1", port, name, loop=self.loop, **common)
            self.client.start()
        else:
            self.runner = asyncio.Runner()
            self.client = aio.Client("127.0.0.1", port, name, **common)
            self.runner.run(self._start(self.client))

    @staticmethod
    async def _start(client: aio.Client) -> None:
        client.start()

    def run_until(self, condition: Callable[[], object], timeout: float = WAIT_TIMEOUT) -> None:
        if self.kind == "loop":
            assert self.loop.run_until(condition, timeout), "condition not met in time"
        else:
            self.runner.run(self._until(condition, timeout))

    @staticmethod
    async def _until(condition: Callable[[], object], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.005)

    def run_for(self, seconds: float) -> None:
        if self.kind == "loop":
            self.loop.run_until(lambda: False, seconds)
        else:
            self.runner.run(asyncio.sleep(seconds))

    def run_until_stopped(self) -> Disconnect:
        self.run_until(lambda: self.client.stopped is not None)
        assert self.client.stopped is not None
        return self.client.stopped

    def send(self, data: bytes) -> bool:
        client = self.client
        if isinstance(client, Client):
            return client.send(data)
        return bool(self.runner.run(client.send(data)))

    def close(self) -> None:
        client = self.client
        if isinstance(client, Client):
            client.close()
            self.loop.run_until(lambda: client.done, WAIT_TIMEOUT)
            self.loop.close()
        else:
            self.runner.run(client.close())
            self.runner.close()


@pytest.fixture
def drive() -> Iterator[Callable[..., Driven]]:
    """Factory: ``drive(kind, port, name, **options)``; each client closed after."""
    made: list[Driven] = []

    def make(kind: str, port: int, name: str, **options: Any) -> Driven:
        driven = Driven(kind, port, name, **options)
        made.append(driven)
        return driven

    yield make
    for driven in made:
        driven.close()


# --- R1, R2: back-off -----------------------------------------------------------------

# Draws at the top of each window, so that the delays show the window's size.
TOP = 0.999
# The windows without a reset: base, 2 x base, 4 x base, then the cap.
GROWING = [0.05, 0.1, 0.2, 0.4, 0.4]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("grant", "then", "reason", "windows"),
    [
        (LONG_GRANT, say(encode_error(Code.NAME_TAKEN)), Reason.PEER_ERROR, GROWING),
        (SHORT_GRANT, record_silently, Reason.TIMEOUT, [0.05] * len(GROWING)),
    ],
    ids=["refused-at-once", "lasted-a-timeout"],
)
def test_backoff_resets_only_after_a_connection_proved_itself(
    drive, kind: str, grant: Welcome, then: AfterWelcome, reason: Reason, windows: list[float]
) -> None:
    """R2: a WELCOME alone does not reset the back-off; a connection that stayed open
    for its granted timeout does."""
    with fake_server(grant, then) as (port, attempts):
        backoff = Backoff(0.05, 0.4, rng=lambda: TOP)
        client = drive(kind, int(port), f"r2-{kind}", backoff=backoff)
        client.run_until(lambda: len(client.disconnects) == len(windows))
        assert attempts.count == len(windows)
    assert [(d.reason, retry) for d, retry in client.disconnects] == [
        (reason, pytest.approx(TOP * window)) for window in windows
    ]


# A small back-off, to see many retries in a short window: each retry waits
# U[0, min(CAP, BASE x 2^n)], n counting the attempts since the last proven connection.
FAST_BASE = 0.05
FAST_CAP = 0.4
FAST_WINDOW = 3.0
# Retries whose window is still below the cap: 0.05, 0.1 and 0.2 s.
FAST_RAMP = math.ceil(math.log2(FAST_CAP / FAST_BASE))
# At the cap a retry waits CAP/2 on average; allow twice that rate (fewer than half
# the mean wait over 30 retries has a chance near 1e-6). Resetting at each WELCOME
# (the bug) makes about a hundred.
FAST_MAX_ATTEMPTS = 1 + FAST_RAMP + round(2 * FAST_WINDOW / (FAST_CAP / 2))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "answer",
    [encode_error(Code.NAME_TAKEN, "taken"), encode_close(Code.GOING_AWAY)],
    ids=["error-name-taken", "close-going-away"],
)
def test_refusals_after_welcome_are_retried_at_the_backoff_rate(
    drive, kind: str, answer: bytes
) -> None:
    with fake_server(LONG_GRANT, say(answer)) as (port, attempts):
        client = drive(kind, int(port), f"refused-{kind}", backoff=Backoff(FAST_BASE, FAST_CAP))
        client.run_for(FAST_WINDOW)
        count = attempts.count
    assert FAST_RAMP + 1 <= count <= FAST_MAX_ATTEMPTS, count
    assert client.client.stopped is None


# --- R3: retry after the server's hint -------------------------------------------------

# A draining server's RECONNECT_WINDOW, ms: far above the back-off's first window.
HINT_MS = 2000


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("answer", "window"),
    [
        (encode_close(Code.GOING_AWAY), HINT_MS / 1000),
        (encode_close(Code.NORMAL), 0.0),  # the hint is for GOING_AWAY alone
        (encode_error(Code.SERVER_FULL, "full"), 0.0),
    ],
    ids=["going-away", "normal", "server-full"],
)
def test_r7_going_away_waits_within_the_servers_reconnect_window(
    drive, kind: str, answer: bytes, window: float
) -> None:
    """R7: after CLOSE GOING_AWAY on a connection whose version 2 WELCOME carried a
    RECONNECT_WINDOW, the wait is the longer of the back-off's draw and a uniform draw
    within the window."""
    hinted = dataclasses.replace(LONG_GRANT, reconnect_window_ms=HINT_MS)
    with fake_server(hinted, say(answer)) as (port, _attempts):
        backoff = Backoff(0.05, 0.4, rng=lambda: TOP)
        client = drive(kind, int(port), f"hint-{kind}", backoff=backoff)
        client.run_until(lambda: len(client.disconnects) == 2)
    assert client.welcomes[0].reconnect_window_ms == HINT_MS
    first_windows = GROWING[:2]  # R1's first two windows, the base and twice it
    assert [retry for _, retry in client.disconnects] == [
        pytest.approx(TOP * max(ceiling, window)) for ceiling in first_windows
    ]


# --- R3: final endings -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("answer", "reason", "code"),
    [
        (encode_error(Code.BAD_NAME, "no"), Reason.PEER_ERROR, Code.BAD_NAME),
        (encode_error(Code.UNAUTHORIZED, "expired"), Reason.PEER_ERROR, Code.UNAUTHORIZED),
        (encode_error(Code.UNSUPPORTED_VERSION), Reason.PEER_ERROR, Code.UNSUPPORTED_VERSION),
        (encode_close(Code.TAKEN_OVER), Reason.PEER_CLOSED, Code.TAKEN_OVER),
    ],
    ids=["bad-name", "unauthorized", "unsupported-version", "taken-over"],
)
def test_final_endings_stop_at_once(
    drive, kind: str, answer: bytes, reason: Reason, code: Code
) -> None:
    with fake_server(LONG_GRANT, say(answer)) as (port, attempts):
        client = drive(kind, int(port), f"final-{kind}", backoff=Backoff(0.01, 0.01))
        stopped = client.run_until_stopped()
        # UNSUPPORTED_VERSION to a version 2 HELLO: one retry at once in version 1 (H10).
        assert attempts.count == (2 if code is Code.UNSUPPORTED_VERSION else 1)
    assert (stopped.reason, stopped.code) == (reason, code)
    assert client.client.final
    assert client.disconnects[-1] == (stopped, None)


def _tls_case(pki: Pki, case: str) -> tuple[list[str], dict[str, Any]]:
    """(the server's TLS options, the client's options) for a TLS refusal ``case``."""
    server_tls = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    if case == "unknown-ca":
        return server_tls, {"tls": client_context(pki.rogue_ca)}
    if case == "hostname-mismatch":
        return server_tls, {"tls": client_context(pki.ca), "server_hostname": "other.example"}
    if case == "client-certificate-required":
        return [*server_tls, "--tls-client-ca", str(pki.ca)], {"tls": client_context(pki.ca)}
    return [], {"tls": client_context(pki.ca)}  # plain-port


TLS_REFUSALS = {
    "unknown-ca": "certificate verify failed: unknown CA",
    "hostname-mismatch": "certificate verify failed: Hostname mismatch",
    "client-certificate-required": "peer refused the handshake: certificate required",
    "plain-port": "",
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(TLS_REFUSALS))
def test_tls_refusals_are_final(serve, drive, pki, kind: str, case: str) -> None:
    server_args, options = _tls_case(pki, case)
    server = serve(*server_args)
    client = drive(kind, server.port, f"tls-{kind}", backoff=Backoff(0.01, 0.01), **options)
    stopped = client.run_until_stopped()
    assert stopped.reason is Reason.TLS_ERROR, stopped
    assert TLS_REFUSALS[case] in stopped.detail
    assert client.client.final
    assert len(client.disconnects) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_hang_up_during_the_tls_handshake_is_retried(drive, pki, kind: str) -> None:
    """A server shedding TLS handshakes closes at accept: the network's failure, not
    a TLS check's (R3). The fake server hangs up on the ClientHello."""
    with fake_server(LONG_GRANT, record_silently) as (port, _):
        client = drive(
            kind,
            int(port),
            f"shed-{kind}",
            backoff=Backoff(0.01, 0.05),
            tls=client_context(pki.ca),
        )
        client.run_until(lambda: len(client.disconnects) >= 2)
    assert client.client.stopped is None
    assert all(retry is not None for _, retry in client.disconnects)
    assert all(d.reason is not Reason.TLS_ERROR for d, _ in client.disconnects)


def test_tls_errors_after_welcome_are_the_networks() -> None:
    """A TLS failure on a connection that had its WELCOME (a corrupted record) is
    retried: only a check before WELCOME is final."""
    ending = Disconnect(Reason.TLS_ERROR, detail="decryption failed or bad record mac")
    assert is_final(ending)
    assert not is_final(ending, opened=True)


# --- R4: no token in plain text to a remote host -----------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.5.6.7", True),
        ("::1", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("10.0.0.5", False),
        ("192.168.1.1", False),
        ("::ffff:10.0.0.1", False),
        ("2001:db8::1", False),
        ("localhost.example.com", False),
        ("example.com", False),
        ("127.1", False),  # not an address as written: a name, which may resolve anywhere
        ("", False),
    ],
)
def test_plaintext_tokens_go_to_loopback_only(host: str, allowed: bool) -> None:
    assert plaintext_token_allowed(host) is allowed


def test_a_token_for_a_remote_host_without_tls_is_refused_before_any_packet() -> None:
    """Judged in the constructor: nothing is connected, nothing resolved. (Clients are
    made and never started here: no packet goes to the remote addresses.)"""
    for make in (Client, aio.Client):
        for token in ("t0ken", lambda: "t0ken"):
            with pytest.raises(ClientConfigError, match="in plain text"):
                make("10.0.0.5", 7878, "remote", token=token)
        make("10.0.0.5", 7878, "remote", token="t0ken", allow_plaintext_token=True)
        make("10.0.0.5", 7878, "remote", token="t0ken", tls=client_context())
        make("10.0.0.5", 7878, "remote")  # no token: nothing to protect


# --- R5: a floor on the granted interval --------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_grant_below_the_floor_is_refused_and_retried(drive, kind: str) -> None:
    with fake_server(welcome(Scheme.CLIENT, 50, 150), record_silently) as (port, attempts):
        client = drive(kind, int(port), f"floor-{kind}", backoff=Backoff(0.01, 0.02))
        client.run_until(lambda: len(client.disconnects) >= 2)
        assert client.client.stopped is None
        assert client.welcomes == []
        ending, retry = client.disconnects[0]
        assert retry is not None
        assert (ending.reason, ending.code) == (Reason.PROTOCOL_ERROR, Code.MALFORMED)
        assert ending.detail == "granted interval 50 ms is below this client's floor of 100 ms"
        # A lower floor takes the same grant.
        lower = drive(kind, int(port), f"floor-{kind}-2", min_interval=0.05)
        lower.run_until(lambda: lower.welcomes)
        # The fake server counts a HELLO on its own thread, maybe after the client moved on.
        assert wait_for(lambda: attempts.count >= 3), attempts.count
    assert lower.welcomes[0].interval_ms == 50


def test_an_interval_below_the_floor_is_refused_before_connecting() -> None:
    for make in (Client, aio.Client):
        with pytest.raises(ClientConfigError, match=r"below min_interval 0\.1s"):
            make("127.0.0.1", 7878, "eager", interval=0.05)
        make("127.0.0.1", 7878, "eager", interval=0.05, min_interval=0.05)


# --- R6: DATA over the server's maximum ----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_data_over_the_servers_maximum_is_refused_locally(serve, drive, kind: str) -> None:
    server = serve("--max-frame", "1024")
    client = drive(kind, server.port, f"big-{kind}", peer_max_payload=1024)
    client.run_until(lambda: client.welcomes)
    with pytest.raises(PayloadTooLarge) as refused:
        client.send(b"x" * 1025)
    assert (refused.value.size, refused.value.limit) == (1025, 1024)
    assert str(refused.value) == (
        "DATA of 1025 bytes is over the server's maximum payload of 1024 bytes"
    )
    assert client.send(b"y" * 1024)  # the connection is not affected
    client.run_for(0.3)
    assert client.disconnects == []
    assert not server.find("FRAME_TOO_LARGE")


def test_peer_max_payload_has_a_floor() -> None:
    for make in (Client, aio.Client):
        with pytest.raises(ClientConfigError, match="peer_max_payload 1023"):
            make("127.0.0.1", 7878, "tiny", peer_max_payload=1023)


# --- tokens: providers, rotation ------------------------------------------------------------

SECRETS = (b"a" * 32, b"b" * 32)


def _token(secret: bytes, name: str) -> str:
    claims = {"sub": name, "exp": int(time.time()) + 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_token_provider_rotates_the_token_across_a_server_restart(
    serve, drive, pki, tmp_path, kind: str
) -> None:
    """The server restarts with a new JWT key; the old token would be UNAUTHORIZED
    (final). The provider, asked at each connect, hands out the new one: over TLS, on
    both clients (the aio one with an async provider)."""
    name = f"rotor-{kind}"
    secret_file = tmp_path / "jwt.secret"
    secret_file.write_bytes(SECRETS[0])
    tls = ("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key))
    server = serve(*tls, "--jwt-secret-file", str(secret_file), "--interval", "0.5")
    current = [_token(SECRETS[0], name)]
    asked: list[str] = []

    def provide() -> str:
        asked.append(current[0])
        return current[0]

    async def provide_async() -> str:
        return provide()

    client = drive(
        kind,
        server.port,
        name,
        tls=client_context(pki.ca),
        token=provide if kind == "loop" else provide_async,
        backoff=Backoff(0.05, 0.2),
    )
    client.run_until(lambda: client.welcomes)
    assert server.terminate() == 0
    secret_file.write_bytes(SECRETS[1])
    current[0] = _token(SECRETS[1], name)
    server = serve(*tls, "--jwt-secret-file", str(secret_file), "--port", str(server.port))
    client.run_until(lambda: len(client.welcomes) == 2)
    assert client.client.stopped is None
    assert asked[0] != asked[-1] == current[0]
    server.wait_line(f"connect .* name={name}")


# A6: a token this short-lived is renewed in band after 80 % of it, 4 s.
SHORT_TOKEN_LIFETIME = 5


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a6_a_token_provider_renews_the_token_in_band_before_exp(
    serve, drive, tmp_path, kind: str
) -> None:
    """A6: the provider hands out a fresh token while the connection is OPEN; the
    client offers it in AUTH before the first one's exp, the server accepts it (A3),
    and the connection outlives the first token (A5 would close it otherwise)."""
    name = f"renew-{kind}"
    secret_file = tmp_path / "jwt.secret"
    secret_file.write_bytes(SECRETS[0])
    server = serve("--jwt-secret-file", str(secret_file))
    first_exp = int(time.time()) + SHORT_TOKEN_LIFETIME
    tokens = [jwt.encode({"sub": name, "exp": first_exp}, SECRETS[0], algorithm="HS256")]

    async def provide_async() -> str:
        return tokens[-1]

    client = drive(
        kind, server.port, name, token=(lambda: tokens[-1]) if kind == "loop" else provide_async
    )
    client.run_until(lambda: client.welcomes)
    tokens.append(_token(SECRETS[0], name))
    client.run_until(lambda: client.client.current_token == tokens[-1])
    server.wait_line(f"reauth .* name={name}")
    client.run_until(lambda: time.time() > first_exp + 1, SHORT_TOKEN_LIFETIME + WAIT_TIMEOUT)
    assert len(client.welcomes) == 1 and client.disconnects == []
    assert not server.find("credentials expired")


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_token_provider_is_retried_with_backoff(
    drive, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("token service unreachable")
        return "t0ken"

    with (
        fake_server(LONG_GRANT, record_silently) as (port, _),
        caplog.at_level(logging.WARNING, "hbloop.client"),
    ):
        client = drive(kind, int(port), f"flaky-{kind}", token=flaky, backoff=Backoff(0.01))
        client.run_until(lambda: client.welcomes)
    ending, retry = client.disconnects[0]
    assert (ending.reason, ending.detail) == (Reason.REFUSED, "token: token service unreachable")
    assert retry is not None
    assert "token provider failed: token service unreachable" in caplog.text


def test_a_token_a_hello_cannot_carry_is_refused_at_once() -> None:
    for make in (Client, aio.Client):
        with pytest.raises(LocalProtocolError):
            make("127.0.0.1", 7878, "t", token="x" * 5000)


# --- parity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_trace_logs_every_frame(drive, serve, kind: str, caplog) -> None:
    server = serve()
    with caplog.at_level(logging.DEBUG, "hbloop.trace"):
        client = drive(kind, server.port, f"traced-{kind}", trace=True)
        client.run_until(lambda: client.welcomes)
    lines = [r.getMessage() for r in caplog.records if r.name == "hbloop.trace"]
    peer = f"127.0.0.1:{server.port}"
    assert re.fullmatch(rf"frame out {peer} HELLO len=\d+", lines[0]), lines
    assert re.fullmatch(rf"frame in {peer} WELCOME len=\d+", lines[1]), lines


def test_both_clients_take_the_same_options() -> None:
    """hbloop.aio.Client takes every option of hbloop.Client that is not about the
    EventLoop it runs on."""
    loop_only = {"loop", "on_message"}
    sync = set(inspect.signature(Client).parameters) - loop_only
    asynchronous = set(inspect.signature(aio.Client).parameters)
    assert sync == asynchronous
    assert set(inspect.signature(ClientBase).parameters) <= sync
