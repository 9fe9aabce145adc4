"""Trustworthy liveness: a live peer is never closed because of someone else's flood,
nor because the server itself was late (protocol.md T6, T9 and section 9)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import psutil
import pytest
from fakeserver import FakeServer, record_silently, welcome

from bench import flood
from hbloop.client import Client
from hbloop.core.wire import (
    MAX_HELLO_PAYLOAD,
    Code,
    FrameType,
    Scheme,
    Welcome,
    encode_data,
    encode_hello,
)
from hbloop.net.loop import EventLoop

from conftest import HBLOOP, WAIT_TIMEOUT, RawPeer, expect_last_word, wait_for

# The strict end of common practice (6-9 s) scaled down: a server that stalls for
# half a second with peers on a 0.6 s timeout drops them unless it is fair.
STRICT = ("--interval", "0.2", "--timeout", "0.6", "--min-interval", "0.1")
STRICT_INTERVAL_MS = 200

# Forty flooding connections in one process, as in the report that found the problem.
FLOODERS = 40
FLOOD_SECONDS = 4.0


@pytest.mark.parametrize(
    ("kind", "rate"),
    [("pong", None), ("data", None), ("pong", "0")],
    ids=["pongs", "empty-data", "pongs-unthrottled"],
)
def test_flooders_cannot_get_bystanders_dropped(serve, good_peers, kind, rate):
    """40 connections streaming unsolicited PONGs (or empty DATA, echoed) once dropped
    20 bystanders on a 0.6 s timeout 200 times. The per-iteration budget alone protects
    them (rate 0: no throttling); the default rate also bounds the flooders' cost."""
    args = [*STRICT] if rate is None else [*STRICT, "--max-peer-rate", rate]
    server = serve(*args)
    bystanders = good_peers(server.address, count=20, interval_ms=STRICT_INTERVAL_MS)
    flooder = flood.start(server.address, FLOODERS, kind, FLOOD_SECONDS)
    assert flood.frames_sent(flooder, FLOOD_SECONDS + WAIT_TIMEOUT) > 0
    bystanders.assert_served(server)
    assert not server.find(r"reason=timeout"), "a live peer was closed as silent"


def test_a_throttled_peer_is_slowed_by_not_reading_not_dropped(serve, raw_peer):
    """T9: DATA past --max-peer-rate is not refused; the server stops reading until the
    window is over, so the sender's frames take at least that long to be echoed."""
    rate, sent = 200, 600
    server = serve("--interval", "5", "--timeout", "15", "--max-peer-rate", str(rate))
    peer = raw_peer(server.address)
    assert peer.hello("chatty", 5000)[0] == FrameType.WELCOME
    start = time.monotonic()
    peer.send(encode_data(b"x") * sent)
    echoed = 0
    while echoed < sent:
        ftype, payload = peer.recv()
        assert (ftype, payload) == (FrameType.DATA, b"x")
        echoed += 1
    elapsed = time.monotonic() - start
    # 600 frames at 200 a second: the budget's overshoot aside, two windows at least.
    assert elapsed >= 1.5, f"{sent} frames echoed in {elapsed:.2f}s: not throttled"
    assert not server.find(r"disconnect .* name=chatty"), "throttling must not end it"


def test_a_server_stopped_past_the_timeout_closes_no_live_peer(serve, good_peers):
    """SIGSTOP the server for twice the timeout while its peers keep heartbeating, then
    SIGCONT: their PINGs wait in the sockets, and the server reads them before judging
    anyone (T6). It used to wake up, find every deadline past, and close them all."""
    # A timeout of four intervals, so that a busy machine starving this test's own
    # heartbeat thread for a moment is not mistaken for the server's fault.
    server = serve("--interval", "0.5", "--timeout", "2")
    steady = good_peers(server.address, count=5, prefix="steady", interval_ms=500)
    assert wait_for(lambda: min(steady.pong_counts()) >= 2)
    server.signal(signal.SIGSTOP)
    time.sleep(4.0)  # the stall under test: twice the timeout
    server.signal(signal.SIGCONT)
    # Every peer is answered again after the stall, and none was closed.
    steady.assert_served(server, rounds=1)


def test_a_socket_before_hello_cannot_make_the_server_buffer_a_frame(serve):
    """Before HELLO the server's limit is the largest HELLO (F2): a header announcing
    more is refused from its 6 bytes. It used to buffer up to --max-frame (64 KiB) for
    each such socket, outside --max-connections."""
    server = serve("--interval", "5", "--timeout", "15", "--handshake-timeout", "10")
    process = psutil.Process(server.proc.pid)
    rss_before = process.memory_info().rss
    partial = encode_data(bytes(60_000))[:50_000]  # most of a 60 kB frame, never finished
    assert len(partial) > MAX_HELLO_PAYLOAD
    peers = []
    try:
        for _ in range(300):
            peer = RawPeer(server.address)
            peer.send(partial)
            peers.append(peer)
        for peer in peers:
            expect_last_word(peer, FrameType.ERROR, Code.FRAME_TOO_LARGE)
        grown = (process.memory_info().rss - rss_before) / 2**20
        assert grown < 5, f"300 sockets before HELLO grew the server by {grown:.1f} MiB"
    finally:
        for peer in peers:
            peer.close()


def test_handshakes_past_the_cap_are_refused_at_once(serve, raw_peer):
    server = serve("--interval", "5", "--timeout", "15", "--max-handshakes", "3")
    waiting = [raw_peer(server.address) for _ in range(3)]
    for peer in waiting:
        peer.send(b"\x00")  # connected, never finishing HELLO
    late = raw_peer(server.address)  # accepted after them: the kernel queues in order
    expect_last_word(late, FrameType.ERROR, Code.SERVER_FULL)
    # One finishing its handshake makes room for the next.
    waiting[0].send(encode_hello("now-then", 0)[1:])
    assert waiting[0].recv()[0] == FrameType.WELCOME
    again = raw_peer(server.address)
    assert again.hello("next", 0)[0] == FrameType.WELCOME


def test_the_client_survives_a_grant_past_epolls_range():
    """A server granting an interval of 2^31 ms or more used to kill the Python client
    with OverflowError (the poll's timeout was never capped)."""
    # Server scheme: the client's only deadline is the timeout, 2^32 - 2 ms away.
    fake = FakeServer(welcome(Scheme.SERVER, 2**31 - 1, 2**32 - 2), record_silently)
    loop = EventLoop()
    welcomes: list[Welcome] = []
    handshake = 0.2  # once its deadline passes, the far heartbeat deadline heads the heap
    client = Client(
        *fake.address, "patient", loop=loop, on_welcome=welcomes.append, handshake_timeout=handshake
    )
    wake_r, wake_w = socket.socketpair()
    try:
        client.start()
        assert loop.run_until(lambda: welcomes, WAIT_TIMEOUT)
        loop.run_until(lambda: False, 2 * handshake)
        # A readable socket lets the poll return at once; its timeout is the far one.
        loop.add_reader(wake_r.fileno(), lambda: wake_r.recv(1))
        wake_w.send(b"x")
        loop.run_once()
        assert client.stopped is None and client.welcome is not None
    finally:
        loop.remove_reader(wake_r.fileno())
        wake_r.close()
        wake_w.close()
        client.close()
        loop.run_until(lambda: client.done, WAIT_TIMEOUT)
        loop.close()
        fake.close()


def test_a_grant_of_2_31_ms_is_refused_as_malformed_not_a_crash():
    """2^31 ms with the largest u32 timeout breaks T2 (T < 2I): the client refuses it
    (H3) with ERROR MALFORMED, where it used to die in the poll with OverflowError."""
    fake = FakeServer(welcome(Scheme.CLIENT, 2**31, 2**32 - 1), record_silently)
    loop = EventLoop()
    ends: list[str] = []
    client = Client(
        *fake.address,
        "careful",
        loop=loop,
        reconnect=False,
        on_disconnect=lambda why, retry_in: ends.append(str(why)),
    )
    try:
        client.start()
        assert loop.run_until(lambda: ends, WAIT_TIMEOUT)
        assert ends[0].startswith("protocol_error MALFORMED")
        assert wait_for(lambda: any(t == FrameType.ERROR for t, _ in fake.frames()))
    finally:
        loop.run_until(lambda: client.done, WAIT_TIMEOUT)
        loop.close()
        fake.close()


def test_serve_refuses_a_grant_that_would_not_fit_the_wire():
    """Each value is in range, but the longest grant's timeout (the maximum interval at
    the timeout/interval ratio of 10,000) is 10^13 ms, past the wire's 32 bits."""
    result = subprocess.run(
        [
            *HBLOOP,
            "serve",
            "--port",
            "0",
            "--interval",
            "1",
            "--timeout",
            "10000",
            "--max-interval",
            "1000000",
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_TIMEOUT,
    )
    assert result.returncode == 2
    assert "exceeds the protocol's 4294967295 ms" in result.stderr.strip().splitlines()[-1]
