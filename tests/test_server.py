"""Integration tests of `hbloop serve` over loopback, driven frame by frame."""

from __future__ import annotations

import time

from hbloop.core.protocol import parse_close, parse_welcome
from hbloop.core.wire import (
    PING_FRAME,
    PONG_FRAME,
    Code,
    FrameType,
    Scheme,
    encode_close,
    encode_data,
)

# Timing bounds are generous: the machine is shared and only behaviour is checked here;
# bench/ measures precision.
SLACK = 1.0


def test_handshake_grants_interval_and_timeout(serve, raw_peer):
    server = serve("--interval", "2", "--timeout", "6")
    peer = raw_peer(server.address)
    ftype, payload = peer.hello("alice", 1000)
    assert ftype == FrameType.WELCOME
    welcome = parse_welcome(payload)
    assert (welcome.scheme, welcome.interval_ms, welcome.timeout_ms) == (Scheme.CLIENT, 1000, 3000)
    server.wait_line(r"connect 127\.0\.0\.1:\d+ name=alice interval=1s timeout=3s")


def test_default_request_gets_the_server_interval(serve, raw_peer):
    server = serve("--interval", "2", "--timeout", "6", "--scheme", "server")
    welcome = parse_welcome(raw_peer(server.address).hello("bob", 0)[1])
    assert (welcome.scheme, welcome.interval_ms, welcome.timeout_ms) == (Scheme.SERVER, 2000, 6000)


def test_ping_is_answered_with_pong_and_data_is_echoed(serve, raw_peer):
    server = serve()
    peer = raw_peer(server.address)
    peer.hello("echo")
    peer.send(PING_FRAME)
    assert peer.recv() == (FrameType.PONG, b"")
    peer.send(encode_data(b"hello") + encode_data(b"") + encode_data(b"world"))
    assert [peer.recv() for _ in range(3)] == [
        (FrameType.DATA, b"hello"),
        (FrameType.DATA, b""),
        (FrameType.DATA, b"world"),
    ]


def test_server_scheme_pings_and_a_ponging_client_stays(serve, raw_peer):
    server = serve("--interval", "0.2", "--timeout", "0.6", "--scheme", "server")
    peer = raw_peer(server.address)
    peer.hello("ponger")
    start = time.monotonic()
    pings = 0
    while time.monotonic() - start < 2.0:  # more than three timeouts
        assert peer.recv() == (FrameType.PING, b"")
        pings += 1
        peer.send(PONG_FRAME)
    assert pings >= 5
    assert not server.find("disconnect .*name=ponger")


def test_a_silent_client_is_closed_within_its_timeout(serve, raw_peer):
    server = serve("--interval", "0.3", "--timeout", "0.9")
    peer = raw_peer(server.address)
    last_frame = time.monotonic()  # the server hears HELLO after this instant
    peer.hello("silent")
    frames = peer.recv_until_eof()
    closed_after = time.monotonic() - last_frame
    assert [f[0] for f in frames] == [FrameType.CLOSE]
    assert parse_close(frames[0][1]) == Code.TIMEOUT
    assert 0.9 <= closed_after < 0.9 + SLACK
    server.wait_line(r"disconnect .* name=silent age=[\d.]+s reason=timeout TIMEOUT")


def test_data_alone_keeps_a_peer_alive(serve, raw_peer):
    server = serve("--interval", "0.2", "--timeout", "0.6")
    peer = raw_peer(server.address)
    peer.hello("chatty")
    start = time.monotonic()
    while time.monotonic() - start < 1.5:  # well past the timeout, with no PING
        peer.send(encode_data(b"tick"))
        assert peer.recv() == (FrameType.DATA, b"tick")
        time.sleep(0.1)  # pacing the traffic, not waiting for a condition
    assert not server.find("name=chatty.*reason")


def test_a_connection_that_never_speaks_is_closed_at_the_handshake_deadline(serve, raw_peer):
    server = serve("--handshake-timeout", "0.5")
    peer = raw_peer(server.address)
    start = time.monotonic()
    frames = peer.recv_until_eof()
    assert [(f[0], parse_close(f[1])) for f in frames] == [
        (FrameType.CLOSE, Code.HANDSHAKE_TIMEOUT)
    ]
    assert 0.5 <= time.monotonic() - start < 0.5 + SLACK
    server.wait_line(r"disconnect 127\.0\.0\.1:\d+ name=- age=[\d.]+s reason=handshake_timeout")


def test_client_close_is_logged_with_its_reason(serve, raw_peer):
    server = serve()
    peer = raw_peer(server.address)
    peer.hello("leaver")
    peer.send(encode_close(Code.NORMAL))
    assert peer.recv_until_eof() == []
    server.wait_line(r"disconnect .* name=leaver age=[\d.]+s reason=peer_closed NORMAL")


def test_eof_without_close_is_a_disconnect_too(serve, raw_peer):
    server = serve()
    peer = raw_peer(server.address)
    peer.hello("vanisher")
    peer.close()
    server.wait_line(r"disconnect .* name=vanisher .*reason=peer_closed EOF")


def test_a_ping_just_before_garbage_is_still_answered(serve, raw_peer):
    server = serve()
    peer = raw_peer(server.address)
    peer.hello("sloppy")
    peer.send(PING_FRAME + b"\x00\x00\x00\x00\x42\x00")  # one segment: PING, then type 0x42
    frames = peer.recv_until_eof()
    assert [f[0] for f in frames] == [FrameType.PONG, FrameType.ERROR]
    server.wait_line(r"name=sloppy .*reason=protocol_error UNKNOWN_TYPE")


def test_coalescing_server_still_answers_and_enforces_the_timeout(serve, raw_peer):
    server = serve("--coalesce", "2", "--interval", "0.3", "--timeout", "0.9")
    peer = raw_peer(server.address)
    start = time.monotonic()
    peer.hello("batched")
    peer.send(PING_FRAME)
    assert peer.recv() == (FrameType.PONG, b"")
    frames = peer.recv_until_eof()
    assert [(f[0], parse_close(f[1])) for f in frames] == [(FrameType.CLOSE, Code.TIMEOUT)]
    assert 0.9 <= time.monotonic() - start < 0.9 + SLACK
