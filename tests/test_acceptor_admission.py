"""Admission control: the accept rate and its burst, handshake limits per source
address, and shed counts logged once per interval."""

from __future__ import annotations

import time

import pytest

from hbloop.cli.parser import parse
from hbloop.cli.settings import ServeSettings
from hbloop.core.wire import Code, FrameType, encode_hello
from hbloop.net.acceptor import MAX_TRACKED_SOURCES, AdmissionLimits, SourceLimits

from conftest import RawPeer, frame_code, wait_for

SLOW = ("--interval", "5", "--timeout", "15")


def test_source_limits_count_handshakes_per_address():
    sources = SourceLimits(AdmissionLimits(handshakes_per_source=2))
    assert sources.admit("127.0.0.1", False, 0.0) is None
    assert sources.admit("127.0.0.1", False, 0.0) is None
    assert sources.admit("127.0.0.1", False, 0.0) == "2 handshakes in progress from one address"
    assert sources.admit("127.0.0.2", False, 0.0) is None  # another address has its own
    sources.done("127.0.0.1")
    assert sources.admit("127.0.0.1", False, 0.0) is None


def test_source_limits_rate_tls_handshakes_per_address():
    # A rate of 4 a second: a bucket of one (a quarter second's worth).
    sources = SourceLimits(AdmissionLimits(tls_rate_per_source=4))
    assert sources.admit("127.0.0.1", True, 0.0) is None
    assert sources.admit("127.0.0.1", True, 0.0) == "over 4 TLS handshakes/s from one address"
    assert sources.admit("127.0.0.1", False, 0.0) is None  # plain TCP costs no handshake
    assert sources.admit("127.0.0.2", True, 0.0) is None
    assert sources.admit("127.0.0.1", True, 0.25) is None  # the next token


def test_source_limits_keep_a_bounded_number_of_buckets():
    sources = SourceLimits(AdmissionLimits(tls_rate_per_source=1))
    for n in range(MAX_TRACKED_SOURCES):
        assert sources.admit(f"h{n}", True, 0.0) is None
    assert sources.admit("h0", True, 0.0) is not None
    assert sources.admit("one more", True, 0.0) is None  # the buckets start again, full
    assert sources.admit("h0", True, 0.0) is None


def test_workers_share_the_accept_rate():
    settings = parse(
        ["serve", "--workers", "2", "--max-accept-rate", "100", "--accept-burst", "10"]
    )
    assert isinstance(settings, ServeSettings)
    assert settings.admission() == AdmissionLimits(accept_rate=50, accept_burst=5)
    limiter = settings.admission().accept_limiter(0.0)
    assert limiter is not None and (limiter.rate, limiter.burst) == (50, 5)
    assert AdmissionLimits().accept_limiter(0.0) is None


RATE = 20  # connections accepted a second
BURST = 5
OFFERED = 45  # (OFFERED - BURST) / RATE = 2 s at the least


def test_a_connect_storm_is_slowed_not_refused(serve):
    server = serve(*SLOW, "--max-accept-rate", str(RATE), "--accept-burst", str(BURST))
    started = time.monotonic()
    peers = [RawPeer(server.address) for _ in range(OFFERED)]  # queued in the backlog
    try:
        for i, peer in enumerate(peers):
            peer.send(encode_hello(f"storm-{i}", 0))
        answers = [peer.recv()[0] for peer in peers]
        took = time.monotonic() - started
    finally:
        for peer in peers:
            peer.close()
    assert answers == [FrameType.WELCOME] * OFFERED  # every one let in, none refused
    # The bucket cannot have given more: a lower bound, which holds on a busy machine.
    assert took >= (OFFERED - BURST) / RATE, took


PER_SOURCE = 2
REFUSED = 5


def test_handshakes_are_limited_per_source_address(serve):
    server = serve(*SLOW, "--max-handshakes-per-source", str(PER_SOURCE))
    # PER_SOURCE connections from 127.0.0.1 in their handshake (no HELLO yet).
    waiting = [RawPeer(server.address) for _ in range(PER_SOURCE)]
    refused = [RawPeer(server.address) for _ in range(REFUSED)]
    try:
        for peer in refused:
            frame = peer.recv()
            assert (frame[0], frame_code(frame)) == (FrameType.ERROR, Code.SERVER_FULL)
        with RawPeer(server.address, source="127.0.0.2") as other:
            assert other.hello("other")[0] == FrameType.WELCOME
        # One through its handshake: room for another from 127.0.0.1.
        assert waiting[0].hello("first")[0] == FrameType.WELCOME
        with RawPeer(server.address) as again:
            assert again.hello("again")[0] == FrameType.WELCOME
    finally:
        for peer in waiting + refused:
            peer.close()
    # Counted, not a line per connection: every refusal is in the interval's lines.
    shed = rf"{PER_SOURCE} handshakes in progress from one address: shed (\d+) connections in 1s"
    assert wait_for(lambda: sum(int(m.group(1)) for m in server.find(shed)) == REFUSED)
    assert len(server.find(shed)) < REFUSED


@pytest.mark.parametrize("option", ["--max-accept-rate", "--accept-burst"])
def test_rates_cannot_be_negative(option, capsys):
    with pytest.raises(SystemExit):
        parse(["serve", option, "-1"])
    assert option in capsys.readouterr().err
