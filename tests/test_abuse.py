"""Abusive but well-framed peers: ping floods, slow consumers, slowloris (protocol.md,
section 9). Each is cut off by a bounded rule while good peers keep being served."""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from dataclasses import dataclass, field

import psutil

from hbloop.core.protocol import Frame, FrameDecoder
from hbloop.core.wire import (
    DEFAULT_MAX_PAYLOAD,
    MAX_NAME_BYTES,
    PING_FRAME,
    Code,
    FrameType,
    encode_data,
    encode_hello,
)

from conftest import RawPeer, expect_last_word, flood_without_reading, frame_code

INTERVAL = 0.5
TIMEOUT = 1.5
INTERVAL_MS = int(INTERVAL * 1000)
FAST_TIMERS = ("--interval", str(INTERVAL), "--timeout", str(TIMEOUT))

# Lateness a shared 2-core machine may add to any deadline; bench/ measures precision.
SLACK = 3.0

# --- ping flood -------------------------------------------------------------------------

PING_STRIKES = 5  # not the default (3), to show the option is honoured
FLOOD_PINGS = 1000  # in one burst: far more than the strikes allow


def test_ping_flood_gets_too_many_pings_after_bounded_strikes(serve, raw_peer, good_peers):
    server = serve(*FAST_TIMERS, "--ping-strikes", str(PING_STRIKES))
    good = good_peers(server.address)
    peer = raw_peer(server.address)
    assert peer.hello("flooder", INTERVAL_MS)[0] == FrameType.WELCOME
    peer.send(PING_FRAME * FLOOD_PINGS)
    # The first PING and the strikes before the last are answered; then ERROR, then FIN.
    answered = expect_last_word(peer, FrameType.ERROR, Code.TOO_MANY_PINGS, before=PING_STRIKES)
    assert all(ftype == FrameType.PONG for ftype, _ in answered)
    server.wait_line(r"disconnect .* name=flooder .*reason=protocol_error TOO_MANY_PINGS")
    good.assert_served(server)


def test_ping_ping_pong_flood_is_cut_off_too(serve, raw_peer, good_peers):
    """A flooder that politely waits for each PONG is still far too fast."""
    server = serve(*FAST_TIMERS)  # default strikes: 3
    good = good_peers(server.address)
    peer = raw_peer(server.address)
    assert peer.hello("pinger", INTERVAL_MS)[0] == FrameType.WELCOME
    answers: list[Frame] = []
    for _ in range(FLOOD_PINGS):
        peer.send(PING_FRAME)
        answers.append(peer.recv())
        if answers[-1][0] != FrameType.PONG:
            break
    assert [ftype for ftype, _ in answers] == [FrameType.PONG] * 3 + [FrameType.ERROR]
    assert frame_code(answers[-1]) == Code.TOO_MANY_PINGS
    good.assert_served(server)


def test_well_spaced_ping_resets_the_strikes(serve, raw_peer):
    """Bursts shorter than the strike count, an interval apart, are all answered."""
    server = serve(*FAST_TIMERS)  # default strikes: 3
    peer = raw_peer(server.address)
    assert peer.hello("bursty", INTERVAL_MS)[0] == FrameType.WELCOME
    for _ in range(3):
        for _ in range(3):  # one spaced PING, then two strikes: one short of the limit
            peer.send(PING_FRAME)
            assert peer.recv()[0] == FrameType.PONG
        time.sleep(INTERVAL)  # the abuser's own pacing, not a wait for the server
    assert not server.find(r"name=bursty .*reason=")


# --- slow consumer ------------------------------------------------------------------------

MAX_PENDING = 128 * 1024  # small, so that a few echoes overflow it
HOG_RCVBUF = 4096  # the hog's receive window: the kernel can hold little for it
HOG_FRAME = encode_data(bytes(DEFAULT_MAX_PAYLOAD - 1024))
HOGS = 5  # one after another: memory must not grow with each
# Allocator noise; unbounded buffering of the hogs' echoes would be many megabytes each.
MAX_RSS_GROWTH = 16 * 1024 * 1024


def test_slow_consumer_is_closed_and_memory_stays_bounded(serve, good_peers):
    server = serve(*FAST_TIMERS, "--max-pending", str(MAX_PENDING))
    good = good_peers(server.address)
    process = psutil.Process(server.proc.pid)
    rss_before = process.memory_info().rss
    for i in range(HOGS):
        with RawPeer(server.address, rcvbuf=HOG_RCVBUF) as hog:
            assert hog.hello(f"hog-{i}", INTERVAL_MS)[0] == FrameType.WELCOME
            sent = flood_without_reading(hog, HOG_FRAME)
        # What waits in the server are echoes of what the hog sent: more than the cap
        # went out before the cut. (How much more depends on the kernel's buffer
        # autotuning, which a busy machine slows: no multiple of the cap is certain.)
        assert sent > MAX_PENDING
        match = server.wait_line(
            rf"disconnect .* name=hog-{i} .*reason=slow_consumer (\d+) bytes pending"
        )
        # Checked on each write: the cap is passed by at most one frame.
        assert MAX_PENDING < int(match.group(1)) <= MAX_PENDING + len(HOG_FRAME)
    growth = process.memory_info().rss - rss_before
    assert growth < MAX_RSS_GROWTH, f"server RSS grew by {growth >> 20} MiB"
    good.assert_served(server)


# --- slowloris ----------------------------------------------------------------------------

SLOWLORIS_CONNECTIONS = 20
TRICKLE_PERIOD = 0.1  # one byte per connection this often
# A HELLO with the longest name takes 76 bytes, 7.6 s at this pace: far past the
# handshake deadline, so only the deadline can end it.
LONG_HELLO = encode_hello("s" * MAX_NAME_BYTES, INTERVAL_MS)
HANDSHAKE_TIMEOUT = 1.0
# After the handshake, a DATA frame trickled byte by byte takes 20 s: far past the
# heartbeat timeout, which partial frames do not reset.
SLOW_DATA = encode_data(bytes(200))


@dataclass
class Trickler:
    """One slowloris connection and what came back on it."""

    sock: socket.socket
    data: bytes
    sent: int = 0
    frames: list[Frame] = field(default_factory=list)
    closed_after: float | None = None
    decoder: FrameDecoder = field(default_factory=lambda: FrameDecoder(DEFAULT_MAX_PAYLOAD))


def trickle(socks: list[socket.socket], data: bytes, budget: float) -> list[Trickler]:
    """Send ``data`` one byte per TRICKLE_PERIOD on every socket until the server closes
    each of them or ``budget`` seconds pass."""
    started = time.monotonic()
    tricklers = [Trickler(sock, data) for sock in socks]
    selector = selectors.DefaultSelector()
    for t in tricklers:
        t.sock.setblocking(False)
        selector.register(t.sock, selectors.EVENT_READ, t)
    while selector.get_map() and time.monotonic() - started < budget:
        for key, _ in selector.select(timeout=TRICKLE_PERIOD):  # paces the trickle too
            t = key.data
            try:
                chunk = t.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                t.frames.extend(t.decoder.feed(chunk))
                continue
            t.closed_after = time.monotonic() - started
            selector.unregister(t.sock)
        for key in list(selector.get_map().values()):
            t = key.data
            if t.sent < len(t.data):
                # A refused send means the server closed: EOF shows on the next select.
                with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                    t.sent += t.sock.send(t.data[t.sent : t.sent + 1])
    selector.close()
    return tricklers


def assert_all_cut_off(tricklers: list[Trickler], code: Code, deadline: float) -> None:
    for t in tricklers:
        assert t.closed_after is not None, "a slowloris connection was never closed"
        assert t.sent < len(t.data), "the frame was completed before the server gave up"
        assert [ftype for ftype, _ in t.frames] == [FrameType.CLOSE], t.frames
        assert frame_code(t.frames[0]) == code
        assert deadline * 0.9 <= t.closed_after <= deadline + SLACK, t.closed_after


def test_slowloris_hello_is_cut_by_the_handshake_deadline(serve, good_peers):
    server = serve(*FAST_TIMERS, "--handshake-timeout", str(HANDSHAKE_TIMEOUT))
    good = good_peers(server.address)
    socks = [socket.create_connection(server.address) for _ in range(SLOWLORIS_CONNECTIONS)]
    try:
        tricklers = trickle(socks, LONG_HELLO, HANDSHAKE_TIMEOUT + SLACK)
    finally:
        for sock in socks:
            sock.close()
    assert_all_cut_off(tricklers, Code.HANDSHAKE_TIMEOUT, HANDSHAKE_TIMEOUT)
    server.wait_line(r"reason=handshake_timeout", count=SLOWLORIS_CONNECTIONS)
    good.assert_served(server)


def test_slowloris_frame_after_handshake_is_cut_by_the_timeout(serve, good_peers):
    server = serve(*FAST_TIMERS)
    good = good_peers(server.address)
    peers = [RawPeer(server.address) for _ in range(SLOWLORIS_CONNECTIONS)]
    try:
        for i, peer in enumerate(peers):
            assert peer.hello(f"loris-{i}", INTERVAL_MS)[0] == FrameType.WELCOME
        tricklers = trickle([peer.sock for peer in peers], SLOW_DATA, TIMEOUT + SLACK)
    finally:
        for peer in peers:
            peer.close()
    assert_all_cut_off(tricklers, Code.TIMEOUT, TIMEOUT)
    server.wait_line(r"name=loris-\d+ .*reason=timeout TIMEOUT", count=SLOWLORIS_CONNECTIONS)
    good.assert_served(server)
