"""Zombies: peers that stop without saying so (protocol.md, section 9).

A frozen or silent peer is closed by the heartbeat timeout; a killed one is released
as soon as its kernel says so, by FIN or by RST, long before any timeout.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from hbloop.core.wire import Code, FrameType

from conftest import LoggedProcess, expect_last_word

INTERVAL = 0.5
TIMEOUT = 1.5
FAST_TIMERS = ("--interval", str(INTERVAL), "--timeout", str(TIMEOUT))

# The tests check that a zombie is closed, not how precisely (bench/ measures that):
# a shared 2-core machine may delay the server's wake-up by a second or more.
SLACK = 3.0

# For killed clients the timeout is long, so that a release can only come from the
# kernel's FIN or RST, never from the heartbeat timer.
LONG_TIMERS = ("--interval", "5", "--timeout", "15")
PROMPT_RELEASE = 3.0  # seconds; a fifth of the timeout

# A client that shakes hands, sends DATA and then never reads: the echo stays unread in
# its receive buffer (checked with MSG_PEEK), so that its kernel answers SIGKILL with RST.
UNREAD_DATA_CLIENT = """
import socket, sys, time
from hbloop.core.wire import encode_data, encode_hello, encode_welcome, Welcome
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sock.sendall(encode_hello("unread", 0) + encode_data(b"echo me"))
expected = len(encode_welcome(Welcome(1, 0, 1, 2))) + len(encode_data(b"echo me"))
deadline = time.monotonic() + 15
while len(sock.recv(expected, socket.MSG_PEEK)) < expected:  # polls: PEEK does not wait
    assert time.monotonic() < deadline, "no echo"
    time.sleep(0.01)
print("ready", flush=True)
sys.stdin.read()
"""


def test_sigstopped_client_is_closed_within_the_timeout(serve, spawn, good_peers) -> None:
    server = serve(*FAST_TIMERS)
    good = good_peers(server.address)
    zombie = spawn(
        "client",
        "--port",
        str(server.port),
        "-n",
        "frozen",
        "--interval",
        str(INTERVAL),
        "--backoff-base",
        "0.1",
    )
    server.wait_line(r"connect .* name=frozen ")
    zombie.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        match = server.wait_line(
            r"disconnect .* name=frozen .*reason=timeout TIMEOUT silent for ([\d.]+)s",
            timeout=TIMEOUT + SLACK,
        )
        elapsed = time.monotonic() - stopped_at
        assert float(match.group(1)) >= TIMEOUT
        assert elapsed <= TIMEOUT + SLACK
        good.assert_served(server)
    finally:
        zombie.signal(signal.SIGCONT)
    # Woken up, it learns it was dropped (CLOSE TIMEOUT) and comes back on its own.
    server.wait_line(r"connect .* name=frozen ", count=2)


def test_silent_peer_gets_close_timeout(serve, raw_peer, good_peers) -> None:
    server = serve(*FAST_TIMERS)
    good = good_peers(server.address)
    peer = raw_peer(server.address)
    assert peer.hello("mute", int(INTERVAL * 1000))[0] == FrameType.WELCOME
    fell_silent = time.monotonic()
    expect_last_word(peer, FrameType.CLOSE, Code.TIMEOUT)
    elapsed = time.monotonic() - fell_silent
    assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT + SLACK, elapsed
    server.wait_line(r"disconnect .* name=mute .*reason=timeout TIMEOUT")
    good.assert_served(server)


def test_sigkilled_client_is_released_on_fin(serve, spawn, good_peers) -> None:
    server = serve(*LONG_TIMERS)
    good = good_peers(server.address)
    victim = spawn("client", "--port", str(server.port), "-n", "killed-fin")
    # Killed with the WELCOME still unread, its kernel would answer with RST, not FIN
    # (on a busy machine, about one run in three): the client says when it has read it.
    victim.wait_line(r"connected to \S+ as killed-fin")
    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    server.wait_line(
        r"disconnect .* name=killed-fin .*reason=peer_closed EOF", timeout=PROMPT_RELEASE
    )
    assert time.monotonic() - killed_at <= PROMPT_RELEASE
    good.assert_served(server)


def test_sigkilled_client_with_unread_data_is_released_on_rst(serve, good_peers) -> None:
    server = serve(*LONG_TIMERS)
    good = good_peers(server.address)
    victim = LoggedProcess(
        [sys.executable, "-c", UNREAD_DATA_CLIENT, server.host, str(server.port)],
        stdin=subprocess.PIPE,  # blocks in read() until killed
    )
    try:
        victim.wait_line("ready", which="stdout")
        victim.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        server.wait_line(
            r"disconnect .* name=unread .*reason=peer_reset Connection reset by peer",
            timeout=PROMPT_RELEASE,
        )
        assert time.monotonic() - killed_at <= PROMPT_RELEASE
    finally:
        victim.stop()
    good.assert_served(server)
