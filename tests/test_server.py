"""Integration tests of `hbloop serve` over loopback, driven frame by frame."""

from __future__ import annotations

from hbloop.protocol import parse_welcome
from hbloop.wire import FrameType, Scheme


def test_handshake_grants_interval_and_timeout(serve, raw_peer):
    server = serve("--interval", "2", "--timeout", "6")
    peer = raw_peer(server.address)
    ftype, payload = peer.hello("alice", 1000)
    assert ftype == FrameType.WELCOME
    welcome = parse_welcome(payload)
    assert (welcome.scheme, welcome.interval_ms, welcome.timeout_ms) == (Scheme.CLIENT, 1000, 3000)
    server.wait_line(r"connect 127\.0\.0\.1:\d+ name=alice interval=1s timeout=3s")
