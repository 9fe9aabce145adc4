"""The Node.js client (clients/js), written from protocol.md, against the Python side."""

from __future__ import annotations

import contextlib
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
from fakeserver import FakeServer, deaf, ping_flood, record_silently, say, welcome

from hbloop.core.protocol import parse_close
from hbloop.core.wire import Code, FrameType, Scheme, encode_data, encode_error

from conftest import HOSTILE_TEXT, HOSTILE_TEXT_SHOWN, ROOT, LoggedProcess, raw_unsafe, wait_for

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

JS = ROOT / "clients" / "js"

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
    rogue = node(
        str(JS / "cli.js"),
        *("--port", str(server.port), "--tls", "--ca", str(pki.rogue_ca)),
    )
    assert rogue.wait(NODE_TIMEOUT) == 1
    assert rogue.lines("stdout")[-1].startswith("close reason=tls_error code=- message=")
    server.wait_line(r"disconnect .* name=js-tls .*reason=peer_closed NORMAL")


def test_server_shutdown_reaches_the_client_as_going_away(serve, node) -> None:
    server = serve(*SERVER_ARGS)
    client = node(str(JS / "cli.js"), "--port", str(server.port), "--name", "js-away")
    client.wait_line(r"^welcome ", which="stdout")
    server.signal(signal.SIGTERM)
    assert client.wait(NODE_TIMEOUT) == 1
    assert client.lines("stdout")[-1] == "close reason=peer_closed code=GOING_AWAY"


def test_dead_server_is_detected(node) -> None:
    fake = FakeServer(welcome(Scheme.CLIENT, DEAD_INTERVAL_MS, DEAD_TIMEOUT_MS), record_silently)
    try:
        port = str(fake.address[1])
        client = node(str(JS / "cli.js"), "--port", port, "--name", "js-dead")
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
        client = node(str(JS / "cli.js"), "--port", str(fake.address[1]), "--name", "js-esc")
        assert client.wait(NODE_TIMEOUT) == 1
    finally:
        fake.close()
    assert client.lines("stdout")[1:] == [
        f"data {HOSTILE_TEXT_SHOWN}",
        f"close reason=peer_error code=MALFORMED message={HOSTILE_TEXT_SHOWN}",
    ]
    assert raw_unsafe(client.lines("stdout")) == []


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
        client = node(str(JS / "cli.js"), "--port", str(fake.address[1]), "--name", "js-flood")
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
