"""The I/O shell, in process: a Channel on a socket pair, an EventLoop driven by the
test, and a recording endpoint. The other end is a plain socket the test reads and
writes itself."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from hbloop.core.protocol import Frame, FrameDecoder
from hbloop.core.session import (
    MAX_FRAMES_PER_READ,
    Closed,
    Event,
    Events,
    Grant,
    HelloReceived,
    Message,
    Reason,
    Role,
    Session,
    SessionConfig,
    State,
)
from hbloop.core.wire import (
    DEFAULT_MAX_PAYLOAD,
    PING_FRAME,
    Code,
    FrameType,
    Scheme,
    encode_data,
    encode_hello,
)
from hbloop.net.channel import Channel, make_channel
from hbloop.net.clock import MockClock
from hbloop.net.counters import IoCounters
from hbloop.net.loop import EventLoop
from hbloop.net.tls import TlsLayer

from conftest import WAIT_TIMEOUT, rst_close

# The grant every test's server session gives: long enough that no deadline fires
# unless a test waits for one.
GRANT = Grant(Scheme.CLIENT, 10_000, 30_000)

# How long a closing channel waits for the peer's EOF in these tests, s: long enough
# that a peer's EOF on a busy machine comes first, short enough for the test that
# waits it out.
LINGER = 2.0

# A cap on unsent output small enough to reach with a few writes.
SMALL_PENDING = 64 * 1024


class Recorder:
    """An endpoint that admits every HELLO, echoes nothing, and records what its
    channels report."""

    def __init__(self, loop: EventLoop, max_pending: int = 1024 * 1024) -> None:
        self.loop = loop
        self.counters = IoCounters()
        self.max_pending = max_pending
        self.events: list[Event] = []
        self.released: list[Channel[None]] = []
        self.handshakes: list[bool] = []

    def channel_events(self, channel: Channel[None], events: Events) -> None:
        self.events.extend(events)
        for event in events:
            if isinstance(event, HelloReceived):
                channel.apply(channel.session.accept(GRANT, self.loop.now))

    def channel_released(self, channel: Channel[None]) -> None:
        self.released.append(channel)

    def tls_handshake(self, done: bool) -> None:
        self.handshakes.append(done)

    def closed(self) -> Closed | None:
        ends = [event for event in self.events if isinstance(event, Closed)]
        assert len(ends) <= 1, "Closed is reported once"
        return ends[0] if ends else None

    def config(self, role: Role = Role.SERVER, name: str = "alice") -> SessionConfig:
        return SessionConfig(
            role,
            handshake_timeout=WAIT_TIMEOUT,
            ping_strikes=3,
            linger=LINGER,
            hello=encode_hello(name, 0) if role is Role.CLIENT else b"",
            counters=self.counters,
        )


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    yield loop
    loop.close()


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    """(the channel's end, the test's end) of a TCP connection on 127.0.0.1, both
    non-blocking: TCP, not a Unix socket pair, whose half-closes differ."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.create_connection(listener.getsockname(), timeout=WAIT_TIMEOUT)
        ours, _ = listener.accept()
    ours.setblocking(False)
    theirs.setblocking(False)
    return ours, theirs


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = loopback_pair()
    yield ours, theirs
    ours.close()
    theirs.close()


def server_channel(
    recorder: Recorder, sock: socket.socket, tls: TlsLayer | None = None
) -> Channel[None]:
    session = Session.server(recorder.config(), recorder.loop.now)
    channel = make_channel(recorder, None, sock, session, tls)
    channel.start_reading()
    channel.arm()
    return channel


def read_frames(sock: socket.socket, decoder: FrameDecoder) -> list[Frame]:
    frames: list[Frame] = []
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return frames
        if not data:
            return frames
        frames += decoder.feed(data)


def open_channel(
    loop: EventLoop, pair: tuple[socket.socket, socket.socket], max_pending: int = 1024 * 1024
) -> tuple[Recorder, Channel[None], socket.socket]:
    """A server channel past its handshake, and the test's end of it (WELCOME read)."""
    ours, theirs = pair
    recorder = Recorder(loop, max_pending)
    channel = server_channel(recorder, ours)
    theirs.sendall(encode_hello("alice", 0))
    assert loop.run_until(lambda: channel.session.state is State.OPEN, WAIT_TIMEOUT)
    decoder = FrameDecoder(DEFAULT_MAX_PAYLOAD)
    assert loop.run_until(lambda: bool(read_frames(theirs, decoder)), WAIT_TIMEOUT)
    return recorder, channel, theirs


def test_a_write_goes_out_at_once_and_watches_nothing(loop, pair):
    _recorder, channel, theirs = open_channel(loop, pair)
    assert channel.send(b"hello")
    assert channel.out is None  # nothing pending, no writability watched
    assert channel.fd not in loop._writers
    assert theirs.recv(64) == encode_data(b"hello")


def test_output_the_socket_refuses_waits_and_is_watched_only_until_sent(loop, pair):
    _recorder, channel, theirs = open_channel(loop, pair)
    chunk = bytes(16 * 1024)
    while channel.out is None:  # until the kernel's buffers are full
        assert channel.send(chunk)
    assert channel.fd in loop._writers
    decoder = FrameDecoder(DEFAULT_MAX_PAYLOAD)
    received: list[Frame] = []

    def drained() -> bool:
        received.extend(read_frames(theirs, decoder))
        return channel.out is None

    assert loop.run_until(drained, WAIT_TIMEOUT)
    assert channel.fd not in loop._writers
    assert received and all(frame == (FrameType.DATA, chunk) for frame in received)


def test_a_peer_that_does_not_read_is_dropped_past_the_cap(loop, pair):
    recorder, channel, _ = open_channel(loop, pair, max_pending=SMALL_PENDING)
    chunk = bytes(16 * 1024)
    while channel.send(chunk):
        pass
    closed = recorder.closed()
    assert closed is not None and closed.disconnect.reason is Reason.SLOW_CONSUMER
    assert channel.released and recorder.released == [channel]


def test_eof_from_the_peer_ends_the_connection(loop, pair):
    recorder, channel, theirs = open_channel(loop, pair)
    theirs.shutdown(socket.SHUT_WR)
    assert loop.run_until(lambda: channel.released, WAIT_TIMEOUT)
    closed = recorder.closed()
    assert closed is not None and closed.disconnect.reason is Reason.PEER_CLOSED


def test_eof_inside_a_frame_is_a_truncation(loop, pair):
    recorder, _channel, theirs = open_channel(loop, pair)
    theirs.sendall(encode_data(b"cut short")[:8])
    theirs.shutdown(socket.SHUT_WR)
    assert loop.run_until(lambda: recorder.closed() is not None, WAIT_TIMEOUT)
    closed = recorder.closed()
    assert closed is not None and closed.disconnect.code == Code.MALFORMED


def test_a_reset_is_a_disconnect(loop, pair):
    recorder, channel, theirs = open_channel(loop, pair)
    rst_close(theirs)
    assert loop.run_until(lambda: channel.released, WAIT_TIMEOUT)
    closed = recorder.closed()
    assert closed is not None and closed.disconnect.reason is Reason.PEER_RESET


def test_close_sends_close_then_fin_and_lingers_for_the_peers_eof(loop, pair):
    _, channel, theirs = open_channel(loop, pair)
    channel.close(Code.NORMAL)  # the CLOSE and the FIN leave at once
    theirs.setblocking(True)
    theirs.settimeout(WAIT_TIMEOUT)
    received = b""
    while chunk := theirs.recv(65536):
        received += chunk
    assert FrameDecoder(DEFAULT_MAX_PAYLOAD).feed(received) == [(FrameType.CLOSE, b"\x00\x00")]
    assert not channel.released  # lingering: the peer may still be sending
    theirs.sendall(PING_FRAME)  # discarded while closing
    theirs.shutdown(socket.SHUT_WR)
    assert loop.run_until(lambda: channel.released, WAIT_TIMEOUT)
    assert channel.session.state is State.CLOSED
    assert loop.time() - channel.session.deadline < 0  # released by the EOF, not the linger


def test_a_peer_that_never_closes_is_released_after_the_linger(loop, pair):
    _recorder, channel, _ = open_channel(loop, pair)
    # The linger counts from the loop's time of the close, as every deadline does: the
    # time its iteration woke, which a loaded machine can leave milliseconds behind.
    started = loop.now
    channel.close(Code.NORMAL)
    assert loop.run_until(lambda: channel.released, WAIT_TIMEOUT)
    assert loop.time() - started >= LINGER


def test_a_burst_is_acted_on_a_share_per_read(loop, pair):
    recorder, channel, theirs = open_channel(loop, pair)
    before = len(recorder.events)
    theirs.sendall(encode_data(b"") * (MAX_FRAMES_PER_READ + 10))
    assert select.select([channel.sock], [], [], WAIT_TIMEOUT)[0]
    channel.on_readable()
    assert len(recorder.events) - before == MAX_FRAMES_PER_READ
    assert channel.session.paused and channel.fd not in loop._readers
    loop.run_once()  # at the end of the iteration, after the others' I/O: the rest
    assert len(recorder.events) - before == MAX_FRAMES_PER_READ + 10
    assert all(isinstance(event, Message) for event in recorder.events[before:])
    assert channel.fd in loop._readers  # then the socket again


# PINGs a peer sent, one an interval, while the server was stalled.
STALLED_PINGS = 8


def test_pings_that_waited_out_a_stall_after_the_wake_up_are_no_flood(pair):
    """T6, T8: the loop reads its clock when epoll returns. A process stopped (SIGSTOP,
    a paused VM) or starved right after that reads, on resuming, the PINGs a live peer
    sent during the whole stall: on time, not a flood, once judged by the time they
    were read rather than the wake-up's."""
    clock = MockClock()
    loop = EventLoop(clock=clock)
    try:
        recorder, channel, theirs = open_channel(loop, pair)
        interval = GRANT.interval
        decoder = FrameDecoder(DEFAULT_MAX_PAYLOAD)
        clock.jump(interval)
        theirs.sendall(PING_FRAME)  # on time
        assert loop.run_until(lambda: bool(read_frames(theirs, decoder)), WAIT_TIMEOUT)

        def stall_then_read() -> None:  # the wake-up's time is read; then the stall
            clock.jump(STALLED_PINGS * interval)
            channel.on_readable()

        loop._readers[channel.fd] = stall_then_read
        theirs.sendall(PING_FRAME * STALLED_PINGS)
        assert select.select([channel.sock], [], [], WAIT_TIMEOUT)[0]
        loop.run_once()
        answers: list[Frame] = []

        def answered() -> bool:  # every PONG, or anything else (the mock time stands still)
            answers.extend(read_frames(theirs, decoder))
            pongs = all(frame == (FrameType.PONG, b"") for frame in answers)
            return len(answers) >= STALLED_PINGS or not pongs

        assert loop.run_until(answered, WAIT_TIMEOUT)
        assert answers == [(FrameType.PONG, b"")] * STALLED_PINGS
        assert recorder.closed() is None and channel.session.state is State.OPEN
    finally:
        loop.close()
