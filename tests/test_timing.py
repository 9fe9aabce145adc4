"""Timing rules of the endpoints, exactly and without sleeping: an ``hbloop.Server`` (or
``Client``) in this process on a ``MockClock``, the other end a raw socket on loopback.
What that end does at a given time is a timer on the loop; the clock jumps from
deadline to deadline, so the default 30 s timeout takes a fraction of a second to
test."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest
from fakeserver import welcome, welcome_answering
from test_embedding import readme_example

from hbloop import (
    Client,
    Code,
    Disconnect,
    EventLoop,
    FrameType,
    Peer,
    Reason,
    Scheme,
    ServerPolicy,
)
from hbloop.core.policy import LINGER_SECONDS
from hbloop.core.protocol import FrameDecoder
from hbloop.core.wire import DEFAULT_MAX_PAYLOAD, PING_FRAME, encode_hello
from hbloop.net.clock import MockClock

from conftest import (
    MOCK_AUTOJUMP,
    WAIT_TIMEOUT,
    InProcessServer,
    RawPeer,
    expect_last_word,
    frame_code,
)

README_MARKER = "<!-- tests/test_timing.py runs this example -->"

# Every test runs on the defaults operators run on: a 10 s interval, a 30 s timeout,
# a 10 s handshake deadline, 3 PING strikes.
POLICY = ServerPolicy()
# The longest any test here waits, in clock seconds.
PATIENCE = 600.0


class Timed:
    """An in-process server on a mock clock that notes when its peers connect and
    disconnect, on its clock."""

    def __init__(
        self, make: Callable[..., InProcessServer], raw: Callable[[tuple[str, int]], RawPeer]
    ) -> None:
        self.raw = raw
        self.connects: list[float] = []
        self.disconnects: list[tuple[float, Disconnect]] = []
        self.clock = MockClock(autojump_threshold=MOCK_AUTOJUMP)
        self.server = make(
            POLICY,
            self.clock,
            on_connect=lambda peer: self.connects.append(self.loop.now),
            on_disconnect=self._disconnected,
        )
        self.loop = self.server.loop

    def _disconnected(self, peer: Peer, disconnect: Disconnect) -> None:
        self.disconnects.append((self.loop.now, disconnect))

    def connect(self, name: str) -> tuple[RawPeer, float]:
        """A raw peer through its handshake; the clock time it was admitted."""
        peer = self.raw(self.server.address)
        peer.send(encode_hello(name, 0))
        self.server.run_until(lambda: self.connects, PATIENCE)
        assert peer.recv()[0] == FrameType.WELCOME
        return peer, self.connects[-1]

    def at(self, when: float, peer: RawPeer, frame: bytes) -> None:
        """``peer`` sends ``frame`` at clock time ``when``."""
        self.loop.call_at(when, peer.send, frame)


@pytest.fixture
def timed(
    in_process_server: Callable[..., InProcessServer],
    raw_peer: Callable[[tuple[str, int]], RawPeer],
) -> Timed:
    return Timed(in_process_server, raw_peer)


def test_a_silent_peer_is_closed_exactly_a_timeout_after_its_last_frame(timed: Timed) -> None:
    peer, opened = timed.connect("quiet")
    # One PING just before the deadline postpones it by a whole timeout; the peer's
    # timer finds out when it fires (lazy re-arming) and the peer is then silent.
    last = opened + POLICY.timeout - 0.25
    timed.at(last, peer, PING_FRAME)
    timed.server.run_until(lambda: timed.disconnects, PATIENCE)
    closed, disconnect = timed.disconnects[0]
    assert (disconnect.reason, disconnect.code) == (Reason.TIMEOUT, Code.TIMEOUT)
    assert closed == last + POLICY.timeout
    assert [f for f, _ in expect_last_word(peer, FrameType.CLOSE, Code.TIMEOUT, before=1)] == [
        FrameType.PONG
    ]


def test_a_socket_that_never_says_hello_is_closed_at_the_handshake_deadline(
    timed: Timed,
) -> None:
    server = timed.server.server
    peer = timed.raw(timed.server.address)
    peer.send(encode_hello("slow", 0)[:3])  # a HELLO begun, never finished
    timed.server.run_until(lambda: server.stats.accepted == 1, PATIENCE)
    accepted = timed.loop.now
    timed.server.run_until(lambda: readable(peer.sock), PATIENCE)
    assert timed.loop.now == accepted + POLICY.handshake_timeout
    expect_last_word(peer, FrameType.CLOSE, Code.HANDSHAKE_TIMEOUT)
    assert not timed.connects and not timed.disconnects  # it never connected


def test_pings_half_an_interval_apart_are_on_time(timed: Timed) -> None:
    peer, opened = timed.connect("steady")
    floor = POLICY.interval / 2  # T8: PINGs sooner than this after the last are strikes
    pings = 2 * POLICY.ping_strikes
    for k in range(1, pings + 1):
        timed.at(opened + k * floor, peer, PING_FRAME)
    assert not timed.loop.run_until(lambda: timed.disconnects, (pings + 1) * floor)
    assert [peer.recv()[0] for _ in range(pings)] == [FrameType.PONG] * pings
    assert not readable(peer.sock)  # and nothing else


def test_pings_in_a_row_sooner_than_half_an_interval_are_refused(timed: Timed) -> None:
    peer, opened = timed.connect("eager")
    # The first PING is on time; each of the next is a second after the previous one.
    for k in range(1, POLICY.ping_strikes + 2):
        timed.at(opened + k, peer, PING_FRAME)
    timed.server.run_until(lambda: timed.disconnects, PATIENCE)
    closed, disconnect = timed.disconnects[0]
    assert closed == opened + POLICY.ping_strikes + 1  # at the last strike
    assert (disconnect.reason, disconnect.code) == (Reason.PROTOCOL_ERROR, Code.TOO_MANY_PINGS)
    answers = expect_last_word(peer, FrameType.ERROR, Code.TOO_MANY_PINGS, POLICY.ping_strikes)
    assert [f for f, _ in answers] == [FrameType.PONG] * POLICY.ping_strikes


def test_a_closing_client_waits_its_linger_for_the_servers_eof_then_lets_go() -> None:
    """C1: after its CLOSE the client half-closes and waits for the server's EOF, at most
    the linger; a server that never closes its end is let go of exactly then."""
    loop = EventLoop(clock=MockClock(autojump_threshold=MOCK_AUTOJUMP))
    listener = socket.create_server(("127.0.0.1", 0))
    client = Client(*listener.getsockname(), "leaving", loop=loop, reconnect=False)
    try:
        client.start()
        server_end, _ = listener.accept()  # the kernel completed the connect already
        with server_end:
            assert loop.run_until(lambda: readable(server_end), PATIENCE)  # the HELLO
            decoder = FrameDecoder(DEFAULT_MAX_PAYLOAD)
            ((ftype, hello),) = decoder.feed(server_end.recv(4096))
            assert ftype == FrameType.HELLO
            server_end.sendall(welcome_answering(hello, welcome(Scheme.CLIENT, 10_000, 30_000)))
            assert loop.run_until(lambda: client.welcome, PATIENCE)
            closed_at = loop.now
            client.close()
            assert loop.run_until(lambda: client.done, PATIENCE)
            assert loop.now == closed_at + LINGER_SECONDS
            frames = decoder.feed(server_end.recv(4096))
            assert [(t, frame_code((t, p))) for t, p in frames] == [(FrameType.CLOSE, Code.NORMAL)]
            assert server_end.recv(4096) == b""  # and its FIN
    finally:
        listener.close()
        loop.close()


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def test_the_readme_example_closes_a_silent_peer_at_30_s() -> None:
    code = readme_example(README_MARKER)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT_TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[(30.0, 'timeout TIMEOUT silent for 30.000s')]\n"
