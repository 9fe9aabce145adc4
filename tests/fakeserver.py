"""A scripted, deliberately simple server for testing clients and the checker.

It accepts connections on loopback and answers the first complete frame of each with
a fixed WELCOME; what happens next is up to ``after_welcome``, which gets the socket,
a decoder holding the rest of the stream, and the frames that came with the first.
``record_silently`` is the dead server: it records what the client sends and never
answers; ``deaf`` neither reads nor sends; ``say`` sends some frames and records;
``ping_flood`` is the hostile server that sends PINGs as fast as the client takes them.
``fake_server`` runs one whose connections ``Attempts`` counts, for reconnect tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

from hbloop.core.protocol import Frame, FrameDecoder, RemoteProtocolError
from hbloop.core.wire import (
    DEFAULT_MAX_PAYLOAD,
    PING_FRAME,
    VERSION_1,
    Scheme,
    Welcome,
    encode_welcome,
)

AfterWelcome = Callable[["FakeServer", socket.socket, FrameDecoder, list[Frame]], None]


class FakeServer:
    def __init__(self, welcome: Welcome, after_welcome: AfterWelcome) -> None:
        self.welcome = welcome
        self.after_welcome = after_welcome
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()
        self.received: list[Frame] = []  # every frame after the first, all connections
        self.flooded = 0  # bytes of PINGs sent by ping_flood, all connections
        self.closed = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        decoder = FrameDecoder(DEFAULT_MAX_PAYLOAD)
        frames: list[Frame] = []
        with sock:
            try:
                while not frames:
                    data = sock.recv(65536)
                    if not data:
                        return
                    frames = decoder.feed(data)
                sock.sendall(welcome_answering(frames[0][1], self.welcome))
                self.after_welcome(self, sock, decoder, frames[1:])
            except (OSError, RemoteProtocolError):
                return  # the checker's hostile cases: this fake just hangs up

    def record(self, frames: list[Frame]) -> None:
        with self._lock:
            self.received.extend(frames)

    def frames(self) -> list[Frame]:
        with self._lock:
            return list(self.received)

    def count_flood(self, sent: int) -> None:
        with self._lock:
            self.flooded += sent

    def pings_flooded(self) -> int:
        with self._lock:
            return self.flooded // len(PING_FRAME)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


def welcome_answering(hello: bytes, welcome: Welcome) -> bytes:
    """The WELCOME frame answering the HELLO payload ``hello`` in that HELLO's version,
    as a server speaking versions 1 and 2 does (protocol.md H10)."""
    version = hello[0] if hello else VERSION_1
    return encode_welcome(dataclasses.replace(welcome, version=version))


def welcome(scheme: Scheme, interval_ms: int, timeout_ms: int) -> Welcome:
    return Welcome(VERSION_1, scheme, interval_ms, timeout_ms)


def record_silently(
    server: FakeServer, sock: socket.socket, decoder: FrameDecoder, frames: list[Frame]
) -> None:
    server.record(frames)
    while data := sock.recv(65536):
        server.record(decoder.feed(data))


def deaf(
    server: FakeServer, _sock: socket.socket, _decoder: FrameDecoder, _frames: list[Frame]
) -> None:
    """A server that never reads nor sends after its WELCOME, until it is closed."""
    server.closed.wait()


def say(*frames: bytes) -> AfterWelcome:
    """A server that sends ``frames`` after its WELCOME, half-closes, and records what
    the client sends until it closes."""

    def after_welcome(
        server: FakeServer, sock: socket.socket, decoder: FrameDecoder, received: list[Frame]
    ) -> None:
        sock.sendall(b"".join(frames))
        sock.shutdown(socket.SHUT_WR)
        record_silently(server, sock, decoder, received)

    return after_welcome


# ping_flood writes this many PINGs at a time: far more than any client answers
# one by one, and few enough to stop quickly once the test is over.
FLOOD_BURST = 4096

# ping_flood's select() wakes at least this often to see whether the test is over.
FLOOD_POLL = 0.1


def ping_flood(read: bool) -> AfterWelcome:
    """A hostile server: after its WELCOME it sends PINGs as fast as the client takes
    them, until the client goes away or the FakeServer is closed. With ``read`` it
    records what the client sends (its PONGs) up to any invalid frame; without, it
    never reads again."""

    def after_welcome(
        server: FakeServer, sock: socket.socket, decoder: FrameDecoder, received: list[Frame]
    ) -> None:
        server.record(received)
        burst = memoryview(PING_FRAME * FLOOD_BURST)
        pending = burst
        watch = [sock] if read else []
        while not server.closed.is_set():
            readable, writable, _ = select.select(watch, [sock], [], FLOOD_POLL)
            if readable:
                data = sock.recv(65536)
                if not data:
                    return
                try:
                    server.record(decoder.feed(data))
                except RemoteProtocolError:
                    watch = []  # the rest of the stream is noise; keep flooding
            if writable:
                sent = sock.send(pending)
                pending = pending[sent:] or burst  # a partial PING is finished first
                server.count_flood(sent)

    return after_welcome


class Attempts:
    """An AfterWelcome for FakeServer that counts the connections (every one that sent
    its HELLO), then hands each to ``then``."""

    def __init__(self, then: AfterWelcome) -> None:
        self.then = then
        self._times: list[float] = []
        self._lock = threading.Lock()

    def __call__(
        self, server: FakeServer, sock: socket.socket, decoder: FrameDecoder, frames: list[Frame]
    ) -> None:
        with self._lock:
            self._times.append(time.monotonic())
        self.then(server, sock, decoder, frames)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._times)


@contextlib.contextmanager
def fake_server(grant: Welcome, then: AfterWelcome) -> Iterator[tuple[str, Attempts]]:
    """A FakeServer on loopback whose connections are counted: (port, attempts)."""
    attempts = Attempts(then)
    fake = FakeServer(grant, attempts)
    try:
        yield str(fake.address[1]), attempts
    finally:
        fake.close()
