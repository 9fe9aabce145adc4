"""The Node.js client (clients/js), written from protocol.md, against the Python side."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import jwt
import psutil
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from fakeserver import (
    AfterWelcome,
    FakeServer,
    deaf,
    fake_server,
    ping_flood,
    record_silently,
    say,
    welcome,
)

from hbloop.core.protocol import parse_close
from hbloop.core.wire import (
    Code,
    FrameType,
    Scheme,
    Welcome,
    encode_close,
    encode_data,
    encode_error,
)

from conftest import (
    HOSTILE_TEXT,
    HOSTILE_TEXT_SHOWN,
    ROOT,
    WAIT_TIMEOUT,
    LoggedProcess,
    raw_unsafe,
    wait_for,
)

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

JS = ROOT / "clients" / "js"
CLI = str(JS / "cli.js")

# PING with a payload: a protocol violation by the server (F3).
MALFORMED_PING = b"\x00\x00\x00\x01\x03\x00\x00"

# The server grants 0.5 s / 1.5 s; the client stays for more than a timeout, so it is
# only still there if its heartbeats work.
SERVER_ARGS = ("--interval", "0.5", "--timeout", "1.5")
STAY_SECONDS = "2.5"
MIN_HEARTBEATS = 2

# The dead server's grant: the client must give up 0.6 s after the server goes silent.
DEAD_INTERVAL_MS = 200
DEAD_TIMEOUT_MS = 600

NODE_TIMEOUT = 60.0


@pytest.fixture
def node() -> Iterator[Callable[..., LoggedProcess]]:
    started: list[LoggedProcess] = []

    def start(*args: str) -> LoggedProcess:
        assert NODE is not None
        process = LoggedProcess([NODE, *args])
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def test_node_decoder_passes_every_vector() -> None:
    assert NODE is not None
    result = subprocess.run(
        [NODE, str(JS / "test_vectors.js")], capture_output=True, text=True, timeout=NODE_TIMEOUT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("vectors passed, 0 failed")


@pytest.mark.parametrize(
    ("scheme", "pinger", "ponger"),
    [("client", "sent PING", "got PONG"), ("server", "got PING", "sent PONG")],
)
def test_session_with_hbloop_serve(serve, node, scheme: str, pinger: str, ponger: str) -> None:
    server = serve(*SERVER_ARGS, "--scheme", scheme)
    name = f"js-{scheme}"
    client = node(
        str(JS / "cli.js"),
        *("--port", str(server.port), "--name", name, "--interval", "0.5"),
        *("--send", "hello", "--send", "wörld", "--duration", STAY_SECONDS),
    )
    assert client.wait(NODE_TIMEOUT) == 0, client.lines("stdout") + client.lines("stderr")
    out = client.lines("stdout")
    assert out[0] == f"welcome scheme={scheme} interval_ms=500 timeout_ms=1500"
    assert out[1:3] == ["data hello", "data wörld"]  # echoed by the server
    assert out.count(pinger) >= MIN_HEARTBEATS
    assert out.count(ponger) >= MIN_HEARTBEATS
    assert out[-1] == "close reason=closed_locally code=NORMAL"
    server.wait_line(rf"connect \S+ name={name} interval=0.5s timeout=1.5s")
    server.wait_line(rf"disconnect \S+ name={name} .*reason=peer_closed NORMAL")


def test_session_over_tls_with_a_token(serve, node, pki, tmp_path) -> None:
    server = serve(
        *SERVER_ARGS,
        *("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)),
        *("--jwt-public-key", str(pki.es256_public)),
    )
    key = load_pem_private_key(pki.es256_private.read_bytes(), password=None)
    token_file = tmp_path / "js.jwt"
    claims = {"sub": "js-tls", "exp": int(time.time()) + 3600}
    token_file.write_text(jwt.encode(claims, key, algorithm="ES256") + "\n")
    client = node(
        str(JS / "cli.js"),
        *("--port", str(server.port), "--name", "js-tls", "--interval", "0.5"),
        *("--tls", "--ca", str(pki.ca), "--token-file", str(token_file)),
        *("--send", "sealed", "--duration", STAY_SECONDS),
    )
    assert client.wait(NODE_TIMEOUT) == 0, client.lines("stdout") + client.lines("stderr")
    out = client.lines("stdout")
    assert out[:2] == ["welcome scheme=client interval_ms=500 timeout_ms=1500", "data sealed"]
    assert out.count("got PONG") >= MIN_HEARTBEATS
    assert out[-1] == "close reason=closed_locally code=NORMAL"
    # A server certificate from a CA it does not trust: the TLS handshake fails.
    # It is final (R3): no retry, exit code 1 and one line naming the cause.
    rogue = node(
        str(JS / "cli.js"),
        *("--port", str(server.port), "--tls", "--ca", str(pki.rogue_ca)),
    )
    assert rogue.wait(NODE_TIMEOUT) == 1
    out = rogue.lines("stdout")
    assert len(out) == 1
    assert out[0].startswith("close reason=tls_error code=- message=")
    [error] = rogue.lines("stderr")
    assert error.startswith("hbloop-js: error: stopped: reason=tls_error code=- message=")
    assert error.endswith("a final ending, no retry can fix it (protocol.md R3)")
    server.wait_line(r"disconnect .* name=js-tls .*reason=peer_closed NORMAL")


# A6: a token this short-lived is renewed after 80 % of it; the test then waits past it.
SHORT_TOKEN_LIFETIME = 6


def test_a_refreshed_token_file_is_offered_in_band_before_exp(serve, node, tmp_path) -> None:
    """A6: the Node client re-reads --token-file before the token's exp and offers the
    fresh token in AUTH; the server accepts it and the connection outlives the first."""
    secret_file, token_file = tmp_path / "jwt.secret", tmp_path / "js.jwt"
    secret_file.write_bytes(b"j" * 32)
    first_exp = int(time.time()) + SHORT_TOKEN_LIFETIME
    token_file.write_text(jwt.encode({"sub": "js-renew", "exp": first_exp}, b"j" * 32) + "\n")
    server = serve(*SERVER_ARGS, "--jwt-secret-file", str(secret_file))
    client = node(
        str(JS / "cli.js"),
        *("--port", str(server.port), "--name", "js-renew", "--token-file", str(token_file)),
    )
    client.wait_line(r"^welcome ", which="stdout")
    fresh = {"sub": "js-renew", "exp": int(time.time()) + 3600}
    token_file.write_text(jwt.encode(fresh, b"j" * 32) + "\n")
    client.wait_line(
        r"^reauthenticated$", which="stdout", timeout=SHORT_TOKEN_LIFETIME + WAIT_TIMEOUT
    )
    server.wait_line(r"reauth \S+ name=js-renew")
    assert wait_for(lambda: time.time() > first_exp + 1, SHORT_TOKEN_LIFETIME + 2)
    assert not client.find(r"^close ", which="stdout")
    client.signal(signal.SIGTERM)
    assert client.wait(NODE_TIMEOUT) == 0
    assert not server.find("credentials expired")


def test_a_server_restart_is_a_going_away_and_a_reconnect(serve, node) -> None:
    server = serve(*SERVER_ARGS)
    client = node(
        str(JS / "cli.js"),
        *("--port", str(server.port), "--name", "js-away", "--backoff-base", "0.2"),
    )
    client.wait_line(r"^welcome ", which="stdout")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    client.wait_line(r"^close reason=peer_closed code=GOING_AWAY$", which="stdout")
    client.wait_line(r"^retry in_ms=\d+$", which="stdout")
    serve(*SERVER_ARGS, "--port", str(server.port))
    client.wait_line(r"^welcome ", which="stdout", count=2)
    client.signal(signal.SIGTERM)
    assert client.wait(NODE_TIMEOUT) == 0
    assert client.lines("stdout")[-1] == "close reason=closed_locally code=NORMAL"
    assert client.lines("stderr") == []


def test_no_reconnect_exits_at_the_first_ending(serve, node) -> None:
    server = serve(*SERVER_ARGS)
    client = node(str(JS / "cli.js"), "--port", str(server.port), "--no-reconnect")
    client.wait_line(r"^welcome ", which="stdout")
    server.signal(signal.SIGTERM)
    assert client.wait(NODE_TIMEOUT) == 1
    assert client.lines("stdout")[-1] == "close reason=peer_closed code=GOING_AWAY"
    assert client.lines("stderr") == [
        "hbloop-js: error: stopped: reason=peer_closed code=GOING_AWAY: --no-reconnect"
    ]


def test_dead_server_is_detected(node) -> None:
    fake = FakeServer(welcome(Scheme.CLIENT, DEAD_INTERVAL_MS, DEAD_TIMEOUT_MS), record_silently)
    try:
        port = str(fake.address[1])
        client = node(str(JS / "cli.js"), "--port", port, "--name", "js-dead", "--no-reconnect")
        assert client.wait(NODE_TIMEOUT) == 1
        last = client.lines("stdout")[-1]
        assert last.startswith("close reason=timeout code=TIMEOUT message=server silent for ")
        silent_ms = int(last.rsplit(" ", 2)[-2])
        assert DEAD_TIMEOUT_MS <= silent_ms < DEAD_TIMEOUT_MS + 1000
        # It kept pinging while it waited, and told the server why it left.
        assert wait_for(lambda: any(t == FrameType.CLOSE for t, _ in fake.frames()))
        frames = fake.frames()
        assert (FrameType.PING, b"") in frames
        assert frames[-1][0] == FrameType.CLOSE
        assert parse_close(frames[-1][1]) == Code.TIMEOUT
    finally:
        fake.close()


def test_server_text_is_printed_escaped(node) -> None:
    fake = FakeServer(
        welcome(Scheme.CLIENT, 10_000, 30_000),
        say(encode_data(HOSTILE_TEXT.encode()), encode_error(Code.MALFORMED, HOSTILE_TEXT)),
    )
    try:
        client = node(
            str(JS / "cli.js"), "--port", str(fake.address[1]), "--name", "js-esc", "--no-reconnect"
        )
        assert client.wait(NODE_TIMEOUT) == 1
    finally:
        fake.close()
    assert client.lines("stdout")[1:] == [
        f"data {HOSTILE_TEXT_SHOWN}",
        f"close reason=peer_error code=MALFORMED message={HOSTILE_TEXT_SHOWN}",
    ]
    assert raw_unsafe(client.lines("stdout")) == []


def test_frames_before_a_violation_are_acted_on(node) -> None:
    """Section 9: DATA and a bad header in one read: the DATA is delivered, then ERROR."""
    fake = FakeServer(
        welcome(Scheme.CLIENT, LONG_INTERVAL_MS, LONG_TIMEOUT_MS),
        say(encode_data(b"before") + MALFORMED_PING),
    )
    try:
        client = node(CLI, "--port", str(fake.address[1]), "--no-reconnect")
        assert client.wait(NODE_TIMEOUT) == 1
        assert wait_for(lambda: any(t == FrameType.ERROR for t, _ in fake.frames()))
    finally:
        fake.close()
    assert client.lines("stdout")[1:] == [
        "data before",
        "close reason=protocol_error code=MALFORMED message=MALFORMED: PING must have an "
        "empty payload",
    ]


# Under a hostile server the node process must stay under this resident size (before
# backpressure and strikes, a PING flood grew it past 1.4 GB).
MAX_NODE_RSS = 200 * 1024 * 1024
# The grant the hostile servers below give: long, so that only their hostility, not a
# timeout, can end the connection within the test.
LONG_INTERVAL_MS = 10_000
LONG_TIMEOUT_MS = 30_000


def _peak_rss_until_exit(client: LoggedProcess) -> int:
    """The node process's largest resident size, sampled until it exits (or passes
    MAX_NODE_RSS: no need to let it grow further)."""
    process = psutil.Process(client.proc.pid)
    peak = 0

    def done() -> bool:
        nonlocal peak
        with contextlib.suppress(psutil.Error):
            peak = max(peak, process.memory_info().rss)
        return client.proc.poll() is not None or peak > MAX_NODE_RSS

    wait_for(done, NODE_TIMEOUT, step=0.05)
    return peak


def test_a_ping_flood_ends_with_too_many_pings_in_bounded_memory(node) -> None:
    fake = FakeServer(
        welcome(Scheme.SERVER, LONG_INTERVAL_MS, LONG_TIMEOUT_MS), ping_flood(read=False)
    )
    try:
        client = node(
            str(JS / "cli.js"),
            *("--port", str(fake.address[1]), "--name", "js-flood", "--no-reconnect"),
        )
        peak = _peak_rss_until_exit(client)
    finally:
        fake.close()
    assert peak < MAX_NODE_RSS, f"node grew to {peak >> 20} MB"
    assert client.wait(NODE_TIMEOUT) == 1
    out = client.lines("stdout")
    assert out[-1].startswith("close reason=protocol_error code=TOO_MANY_PINGS message=")
    assert out[-1].endswith("3 PINGs closer than half the interval")
    # The first PING, then one for each strike but the last (T8), as hbloop serve does.
    assert out.count("sent PONG") == 3


# Writes DATA to a server that never reads: 64 MB if nothing stops it.
WRITER = """
const { Client } = require(process.argv[1]);
const client = new Client({ port: Number(process.argv[2]), name: 'js-writer' });
client.on('welcome', () => {
  const chunk = Buffer.alloc(65536);
  for (let i = 0; i < 1024 && client.send(chunk); i += 1);
});
client.on('close', ({ reason, message }) => console.log(`close reason=${reason} ${message}`));
client.connect();
"""


def test_output_a_server_does_not_read_is_bounded(node) -> None:
    fake = FakeServer(welcome(Scheme.CLIENT, LONG_INTERVAL_MS, LONG_TIMEOUT_MS), deaf)
    try:
        client = node("-e", WRITER, str(JS / "hbloop.js"), str(fake.address[1]))
        peak = _peak_rss_until_exit(client)
    finally:
        fake.close()
    assert peak < MAX_NODE_RSS, f"node grew to {peak >> 20} MB"
    assert client.wait(NODE_TIMEOUT) == 0
    assert re.fullmatch(r"close reason=slow_consumer \d+ bytes unsent", client.lines("stdout")[-1])


# --- reconnecting: protocol.md section 5 ----------------------------------------------


# A grant long enough that only the server's answer ends each connection.
LONG_GRANT = welcome(Scheme.CLIENT, LONG_INTERVAL_MS, LONG_TIMEOUT_MS)

# A small back-off, to see many retries in a short window: each retry waits
# U[0, min(CAP, BASE x 2^n)], n counting the attempts since the last proven connection.
FAST_BASE = 0.05
FAST_CAP = 0.4
FAST_WINDOW = 4.0  # seconds the client runs (--duration)
# Retries whose window is still below the cap: 0.05, 0.1 and 0.2 s.
FAST_RAMP = math.ceil(math.log2(FAST_CAP / FAST_BASE))
# At the cap, a retry waits CAP/2 on average; allow twice that rate. Fewer than half the
# mean wait per retry over 40 retries (a sum under half its mean) has a chance near
# 1e-8. Resetting the back-off at each WELCOME (the bug) makes 100 to 160 attempts.
FAST_MAX_ATTEMPTS = 1 + FAST_RAMP + round(2 * FAST_WINDOW / (FAST_CAP / 2))
# At least the ramp and one retry at the cap: each of those waits under CAP.
FAST_MIN_ATTEMPTS = 2 + FAST_RAMP
FAST_BACKOFF = ("--backoff-base", str(FAST_BASE), "--backoff-max", str(FAST_CAP))


@pytest.mark.parametrize(
    ("answer", "ending"),
    [
        (encode_error(Code.NAME_TAKEN, "taken"), "reason=peer_error code=NAME_TAKEN"),
        (encode_close(Code.GOING_AWAY), "reason=peer_closed code=GOING_AWAY"),
        (MALFORMED_PING, "reason=protocol_error code=MALFORMED"),
    ],
    ids=["error-name-taken", "close-going-away", "malformed-frame"],
)
def test_refusals_after_welcome_are_retried_at_the_backoff_rate(
    node, answer: bytes, ending: str
) -> None:
    """R2: a server that welcomes and refuses at once cannot reset the back-off."""
    with fake_server(LONG_GRANT, say(answer)) as (port, attempts):
        client = node(
            CLI,
            "--port",
            port,
            "--name",
            "js-refused",
            *FAST_BACKOFF,
            "--duration",
            str(FAST_WINDOW),
        )
        assert client.wait(NODE_TIMEOUT) == 0, client.lines("stderr")
        count = attempts.count
    assert FAST_MIN_ATTEMPTS <= count <= FAST_MAX_ATTEMPTS, count
    out = client.lines("stdout")
    ended = [line for line in out if re.fullmatch(rf"close {ending}( message=.*)?", line)]
    # Every connection but the last, which --duration may have closed before the answer.
    assert len(ended) in (count, count - 1)
    assert len([line for line in out if re.fullmatch(r"retry in_ms=\d+", line)]) == len(ended)
    assert re.fullmatch(r"close reason=closed_locally code=(-|NORMAL)", out[-1])


# Answers the test_backoff_resets_only_after_a_connection_proved_itself script gives.
BACKOFF_SCRIPT = """
const { Backoff, ReconnectingClient } = require(process.argv[1]);
const [port, endings] = [Number(process.argv[2]), Number(process.argv[3])];
// Draws at the top of each window: the delays show the window's size.
const backoff = new Backoff({ base: 0.05, cap: 0.4, random: () => 0.999 });
const client = new ReconnectingClient({ port, name: 'js-r2', backoff });
let seen = 0;
client.on('close', ({ reason, retryInMs }) => {
  console.log(`${reason} ${retryInMs}`);
  seen += 1;
  if (seen === endings) client.close();
});
client.connect();
"""
# The windows in ms, without a reset: base, 2 x base, 4 x base, then the cap.
GROWING = [50, 100, 200, 400, 400]
# A grant the silent server gives: the client gives up after 200 ms, having been open
# for its whole timeout, so each connection has proved itself and the back-off resets.
SHORT_GRANT = welcome(Scheme.CLIENT, 100, 200)


# A draining server's RECONNECT_WINDOW, ms: far above the back-off's first windows.
HINT_MS = 2000


@pytest.mark.parametrize(
    ("answer", "ending", "delays"),
    [
        # R3: the longer of the back-off's draw (at the top: 50, 100 ms) and the window's.
        (encode_close(Code.GOING_AWAY), "peer_closed", [round(0.999 * HINT_MS)] * 2),
        (encode_close(Code.NORMAL), "peer_closed", GROWING[:2]),  # no hint for NORMAL
    ],
    ids=["going-away", "normal"],
)
def test_r7_going_away_waits_within_the_servers_reconnect_window(
    node, answer: bytes, ending: str, delays: list[int]
) -> None:
    hinted = dataclasses.replace(LONG_GRANT, reconnect_window_ms=HINT_MS)
    with fake_server(hinted, say(answer)) as (port, _attempts):
        client = node("-e", BACKOFF_SCRIPT, str(JS / "hbloop.js"), port, str(len(delays)))
        assert client.wait(NODE_TIMEOUT) == 0, client.lines("stderr")
    out = client.lines("stdout")
    assert out == [*(f"{ending} {ms}" for ms in delays), "closed_locally null"]


@pytest.mark.parametrize(
    ("grant", "then", "ending", "delays"),
    [
        (LONG_GRANT, say(encode_error(Code.NAME_TAKEN)), "peer_error", GROWING),
        (SHORT_GRANT, record_silently, "timeout", [50] * len(GROWING)),
    ],
    ids=["refused-at-once", "lasted-a-timeout"],
)
def test_backoff_resets_only_after_a_connection_proved_itself(
    node, grant: Welcome, then: AfterWelcome, ending: str, delays: list[int]
) -> None:
    with fake_server(grant, then) as (port, attempts):
        client = node("-e", BACKOFF_SCRIPT, str(JS / "hbloop.js"), port, str(len(delays)))
        assert client.wait(NODE_TIMEOUT) == 0, client.lines("stderr")
        assert attempts.count == len(delays)
    out = client.lines("stdout")
    assert out == [*(f"{ending} {ms}" for ms in delays), "closed_locally null"]


@pytest.mark.parametrize(
    ("answer", "ending"),
    [
        (encode_error(Code.BAD_NAME, "no"), "reason=peer_error code=BAD_NAME message=no"),
        (
            encode_error(Code.UNAUTHORIZED, "token expired"),
            "reason=peer_error code=UNAUTHORIZED message=token expired",
        ),
        (encode_error(Code.UNSUPPORTED_VERSION), "reason=peer_error code=UNSUPPORTED_VERSION"),
        (encode_close(Code.TAKEN_OVER), "reason=peer_closed code=TAKEN_OVER"),
    ],
    ids=["bad-name", "unauthorized", "unsupported-version", "taken-over"],
)
def test_final_endings_stop_at_once_with_one_line(node, answer: bytes, ending: str) -> None:
    """R3: no retry, whatever the back-off; exit code 1 and the cause on stderr. An
    UNSUPPORTED_VERSION first gets H10's one fall-back from version 2 to version 1."""
    fallback = "UNSUPPORTED_VERSION" in ending
    with fake_server(LONG_GRANT, say(answer)) as (port, attempts):
        client = node(CLI, "--port", port, *("--backoff-base", "0.01", "--backoff-max", "0.01"))
        assert client.wait(NODE_TIMEOUT) == 1
        assert attempts.count == (2 if fallback else 1)
    retried = [f"close {ending}", "retry in_ms=0", client.lines("stdout")[0]] if fallback else []
    assert client.lines("stdout")[1:] == [*retried, f"close {ending}"]
    assert client.lines("stderr") == [
        f"hbloop-js: error: stopped: {ending}: a final ending, no retry can fix it (protocol.md R3)"
    ]


@pytest.mark.parametrize(
    ("mutual", "cause"),
    [
        (True, "tlsv13 alert certificate required (ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED)"),
        (False, "wrong version number (ERR_SSL_WRONG_VERSION_NUMBER)"),
    ],
    ids=["client-certificate-required", "plain-port"],
)
def test_tls_refusals_are_final(serve, node, pki, mutual: bool, cause: str) -> None:
    """R3: a server that wants a client certificate, whose verdict comes after the
    client's side of the TLS 1.3 handshake; a server that does not speak TLS."""
    tls = ("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key))
    server = serve(*tls, "--tls-client-ca", str(pki.ca)) if mutual else serve()
    client = node(CLI, "--port", str(server.port), "--tls", "--ca", str(pki.ca), *FAST_BACKOFF)
    assert client.wait(NODE_TIMEOUT) == 1
    ending = f"reason=tls_error code=- message={cause}"
    assert client.lines("stdout") == [f"close {ending}"]
    assert client.lines("stderr") == [
        f"hbloop-js: error: stopped: {ending}: a final ending, no retry can fix it (protocol.md R3)"
    ]


def test_a_reset_during_the_tls_handshake_is_retried(node, pki) -> None:
    """A server shedding TLS handshakes closes at accept: that is the network's failure,
    not a TLS check's (R3). The fake server hangs up on the ClientHello."""
    with fake_server(LONG_GRANT, record_silently) as (port, _):
        client = node(
            CLI, "--port", port, "--tls", "--ca", str(pki.ca), *FAST_BACKOFF, "--duration", "2"
        )
        assert client.wait(NODE_TIMEOUT) == 0, client.lines("stderr")
    out = client.lines("stdout")
    assert len([line for line in out if line.startswith("retry in_ms=")]) >= 2
    assert not [line for line in out if "tls_error" in line]


def test_a_grant_below_the_floor_is_refused(node) -> None:
    """R5: ERROR MALFORMED naming both intervals, retried with back-off."""
    with fake_server(welcome(Scheme.CLIENT, 50, 150), record_silently) as (port, _):
        refused = node(CLI, "--port", port, "--no-reconnect")
        assert refused.wait(NODE_TIMEOUT) == 1
        message = "MALFORMED: granted interval 50 ms is below this client's floor of 100 ms"
        assert refused.lines("stdout") == [
            f"close reason=protocol_error code=MALFORMED message={message}"
        ]
        # A lower floor takes the same grant.
        accepted = node(CLI, "--port", port, "--min-interval", "0.05", "--duration", "0.5")
        assert accepted.wait(NODE_TIMEOUT) == 0
        assert accepted.lines("stdout")[0] == "welcome scheme=client interval_ms=50 timeout_ms=150"


# Sends DATA one byte over, then exactly at, the server's maximum.
BIG_DATA_SCRIPT = """
const { PayloadTooLargeError, ReconnectingClient } = require(process.argv[1]);
const port = Number(process.argv[2]);
const client = new ReconnectingClient({ port, name: 'js-big', peerMaxPayload: 1024 });
client.on('welcome', () => {
  try {
    client.send(Buffer.alloc(1025, 'x'));
  } catch (err) {
    console.log(`${err instanceof PayloadTooLargeError} ${err.size} ${err.limit} ${err.message}`);
  }
  console.log(`sent ${client.send(Buffer.alloc(1024, 'y'))}`);
  client.close();
});
client.connect();
"""


def test_data_over_the_servers_maximum_is_refused_locally(node) -> None:
    """R6: an exception naming both sizes; nothing sent, the connection unaffected."""
    fake = FakeServer(LONG_GRANT, record_silently)
    try:
        client = node("-e", BIG_DATA_SCRIPT, str(JS / "hbloop.js"), str(fake.address[1]))
        assert client.wait(NODE_TIMEOUT) == 0, client.lines("stderr")
        assert wait_for(lambda: any(t == FrameType.CLOSE for t, _ in fake.frames()))
    finally:
        fake.close()
    assert client.lines("stdout") == [
        "true 1025 1024 DATA of 1025 bytes exceeds the server's maximum payload of 1024 bytes",
        "sent true",
    ]
    assert fake.frames() == [(FrameType.DATA, b"y" * 1024), (FrameType.CLOSE, b"\x00\x00")]


# --- settings, help, exit codes --------------------------------------------------------

# Loaded before the client in the tests below: any socket connect ends the process with
# NETWORK_USED, so not a packet leaves, whatever the client decides.
NO_NETWORK = """
const net = require('node:net');
net.Socket.prototype.connect = function connect() {
  console.error('network used');
  process.exit(99);
};
"""
NETWORK_USED = 99


# Stands for the path of a file holding a valid token, in the arguments below.
TOKEN_FILE = "TOKEN_FILE"


@pytest.fixture
def offline_node(node, tmp_path) -> Callable[..., LoggedProcess]:
    """``node``, with every socket connect turned into exit code NETWORK_USED, and
    TOKEN_FILE in its arguments replaced by a token file."""
    preload = tmp_path / "no_network.js"
    preload.write_text(NO_NETWORK)
    token_file = tmp_path / "token"
    token_file.write_text("not-a-secret\n")
    return lambda *args: node(
        "--require", str(preload), *(str(token_file) if a == TOKEN_FILE else a for a in args)
    )


# Hosts a token may reach in plain text (R4): loopback, judged from the text alone.
LOOPBACK_HOSTS = [
    "127.0.0.1",
    "127.0.0.53",
    "127.255.255.255",
    "::1",
    "0:0:0:0:0:0:0:1",
    "::ffff:127.0.0.1",
    "localhost",
    "LocalHost",
    "localhost.",
]
OTHER_HOSTS = [
    "10.0.0.1",
    "192.168.1.1",
    "128.0.0.1",
    "126.255.255.255",
    "0.0.0.0",
    "::",
    "::2",
    "::ffff:10.0.0.1",
    "fe80::1",
    "[::1]",
    "127.1",
    "example.com",
    "localhost.example.com",
    "127.0.0.1.nip.io",
    "",
]
DECIDE_SCRIPT = """
const { plaintextTokenAllowed } = require(process.argv[1]);
const hosts = JSON.parse(process.argv[2]);
console.log(JSON.stringify(Object.fromEntries(hosts.map((h) => [h, plaintextTokenAllowed(h)]))));
"""


def test_plaintext_tokens_go_to_loopback_only(offline_node) -> None:
    hosts = LOOPBACK_HOSTS + OTHER_HOSTS
    decide = offline_node("-e", DECIDE_SCRIPT, str(JS / "hbloop.js"), json.dumps(hosts))
    assert decide.wait(NODE_TIMEOUT) == 0, decide.lines("stderr")
    decided = json.loads(decide.lines("stdout")[0])
    assert decided == {host: host in LOOPBACK_HOSTS for host in hosts}


# A documentation address (RFC 5737): never reached, the connect is stopped anyway.
FAR_HOST = "192.0.2.1"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--port", "0"), "--port must be 1-65535 (see --help)"),
        (("--name", "x"), "--port is required (see --help)"),
        (("--port", "1", "--bogus"), "Unknown option '--bogus' (see --help)"),
        (
            ("--port", "1", "--backoff-base", "2", "--backoff-max", "1"),
            "--backoff-max must be a number >= --backoff-base (2) (see --help)",
        ),
        (
            ("--port", "1", "--interval", "0.05"),
            "interval 0.05s is below minInterval 0.1s: its own grant would be refused",
        ),
        (
            ("--port", "1", "--send", "x" * 65537),
            "DATA of 65537 bytes exceeds the server's maximum payload of 65536 bytes",
        ),
        (
            ("--port", "1", "--tls", "--ca", "/nonexistent/ca.crt"),
            "cannot read --ca /nonexistent/ca.crt: ENOENT (see --help)",
        ),
        (
            ("--port", "1", "--tls", "--ca", "README.md"),
            "TLS settings: the CA is not a certificate: error:0480006C:PEM routines::no start line",
        ),
        (
            ("--host", FAR_HOST, "--port", "1", "--token-file", TOKEN_FILE),
            f"refusing to send the token in plain text to {FAR_HOST}: anyone on the path could "
            "read it and connect as this client; use TLS, or allow it (allowPlaintextToken, "
            "--allow-plaintext-token) on a network you trust",
        ),
    ],
    ids=["port", "no-port", "unknown", "backoff", "floor", "send", "no-ca", "bad-ca", "plaintext"],
)
def test_bad_settings_are_one_line_and_exit_code_2(offline_node, args, error: str) -> None:
    client = offline_node(CLI, *args)
    assert client.wait(NODE_TIMEOUT) == 2
    assert client.lines("stderr") == [f"hbloop-js: error: {error}"]
    assert client.lines("stdout") == []


def test_allow_plaintext_token_lets_the_token_go(offline_node) -> None:
    client = offline_node(
        CLI,
        *("--host", FAR_HOST, "--port", "1", "--token-file", TOKEN_FILE),
        "--allow-plaintext-token",
    )
    assert client.wait(NODE_TIMEOUT) == NETWORK_USED
    assert client.lines("stderr") == ["network used"]


def test_help_prints_usage_and_exits_0(offline_node) -> None:
    client = offline_node(CLI, "--help")
    assert client.wait(NODE_TIMEOUT) == 0
    out = client.lines("stdout")
    assert out[0] == "usage: hbloop-js --port PORT [options]"
    for flag in ("--no-reconnect", "--backoff-base", "--min-interval", "--allow-plaintext-token"):
        assert any(line.lstrip().startswith(flag) for line in out), flag


# --- the package --------------------------------------------------------------------

NPM = shutil.which("npm")
PACKAGE_TIMEOUT = 300.0  # npm ci may download typescript and @types/node


def npm(*args: str) -> subprocess.CompletedProcess[str]:
    assert NPM is not None, "npm comes with node"
    return subprocess.run(
        [NPM, *args], cwd=JS, capture_output=True, text=True, timeout=PACKAGE_TIMEOUT
    )


def test_the_package_ships_the_client_and_nothing_else() -> None:
    result = npm("pack", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    [packed] = json.loads(result.stdout)
    shipped = {entry["path"] for entry in packed["files"]}
    assert shipped == {"package.json", "README.md", "LICENSE", "hbloop.js", "hbloop.d.ts", "cli.js"}
    package = json.loads((JS / "package.json").read_text())
    assert package["license"] == "MIT"
    assert package["engines"] == {"node": ">=20"}
    assert package["bin"] == {"hbloop-js": "cli.js"}
    assert (package["main"], package["types"]) == ("hbloop.js", "hbloop.d.ts")
    assert "dependencies" not in package
    assert (JS / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()


# What hbloop.d.ts declares as a value (not a type): the module's exports.
DECLARED_VALUE = re.compile(r"^export declare (?:const|function|class) (\w+)", re.MULTILINE)


@pytest.mark.slow
def test_the_type_declarations_match_the_module_and_check() -> None:
    assert NODE is not None
    exported = subprocess.run(
        [NODE, "-p", "Object.keys(require('./hbloop.js')).join(' ')"],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        check=True,
    ).stdout.split()
    declared = DECLARED_VALUE.findall((JS / "hbloop.d.ts").read_text())
    assert sorted(declared) == sorted(exported)
    # typescript and @types/node, pinned by package-lock.json, from the npm registry.
    if not (JS / "node_modules" / ".bin" / "tsc").exists():
        installed = npm("ci", "--no-audit", "--no-fund")
        assert installed.returncode == 0, installed.stderr
    checked = subprocess.run(
        [str(JS / "node_modules" / ".bin" / "tsc"), "--noEmit", "-p", str(JS)],
        capture_output=True,
        text=True,
        timeout=PACKAGE_TIMEOUT,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
