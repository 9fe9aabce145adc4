"""The TLS channel, in process: a client and a server LayeredChannel on one EventLoop,
joined by a loopback connection, with the test's certificates (tests/pki.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from test_channel import Recorder, server_channel

from hbloop.core.protocol import FrameDecoder, parse_error
from hbloop.core.session import Closed, Message, Reason, Role, Session, State
from hbloop.core.wire import DEFAULT_MAX_PAYLOAD, PING_FRAME, Code, FrameType, encode_hello
from hbloop.net.channel import Channel, make_channel
from hbloop.net.loop import EventLoop
from hbloop.net.tls import TlsLayer, client_context, server_context

from conftest import WAIT_TIMEOUT
from pki import Pki


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    yield loop
    loop.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(WAIT_TIMEOUT)
        yield sock


def server_tls(pki: Pki) -> TlsLayer:
    return TlsLayer(server_context(pki.server.cert, pki.server.key), server_side=True)


def connect(
    loop: EventLoop, pki: Pki, listener: socket.socket
) -> tuple[Recorder, Channel[None], Recorder, Channel[None]]:
    """A TLS client channel connecting to ``listener``, and the server channel of the
    connection it accepted: (client's endpoint, client, server's endpoint, server)."""
    client_side = Recorder(loop)
    tls = TlsLayer(client_context(pki.ca), server_side=False, server_hostname="127.0.0.1")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    session = Session.client(client_side.config(Role.CLIENT), loop.now)
    client = make_channel(client_side, None, sock, session, tls)
    client.connect(listener.getsockname())
    accepted, _ = listener.accept()
    accepted.setblocking(False)
    server_side = Recorder(loop)
    server = server_channel(server_side, accepted, server_tls(pki))
    return client_side, client, server_side, server


def test_the_tls_handshake_then_hello_and_data_both_ways(loop, pki, listener):
    client_side, client, server_side, server = connect(loop, pki, listener)
    assert loop.run_until(lambda: server.session.state is State.OPEN, WAIT_TIMEOUT)
    assert loop.run_until(lambda: client.session.state is State.OPEN, WAIT_TIMEOUT)
    assert client_side.handshakes == [True] and server_side.handshakes == [True]
    assert server.session.name == "alice"
    assert client.send(b"up") and server.send(b"down")
    assert loop.run_until(lambda: Message(b"up") in server_side.events, WAIT_TIMEOUT)
    assert loop.run_until(lambda: Message(b"down") in client_side.events, WAIT_TIMEOUT)
    # What crossed the socket was ciphertext: more bytes than the frames.
    figures = server_side.counters.copy()
    assert figures.bytes_in > figures.frames_in * 6


def test_a_heartbeat_on_tls_takes_the_fast_path_and_the_figures_count_ciphertext(
    loop, pki, listener
):
    client_side, client, server_side, server = connect(loop, pki, listener)
    assert loop.run_until(lambda: server.session.state is State.OPEN, WAIT_TIMEOUT)
    assert loop.run_until(lambda: client.session.state is State.OPEN, WAIT_TIMEOUT)
    before = server_side.counters.copy()
    assert client._write(PING_FRAME)  # the client's PING, ahead of its schedule
    assert loop.run_until(lambda: server_side.counters.quick_pings == 1, WAIT_TIMEOUT)
    assert loop.run_until(lambda: client_side.counters.copy().heartbeats == 1, WAIT_TIMEOUT)
    server_figures, client_figures = server_side.counters.copy(), client_side.counters.copy()
    assert server_figures.heartbeats - before.heartbeats == 1
    assert server_figures.frames_out - before.frames_out == 1  # its PONG
    # Ciphertext both ways, each byte counted once: what one side sent, the other read.
    assert server_figures.bytes_in == client_figures.bytes_out
    assert server_figures.bytes_out == client_figures.bytes_in


def test_close_sends_close_notify_behind_the_close_and_both_ends_finish(loop, pki, listener):
    client_side, client, server_side, server = connect(loop, pki, listener)
    assert loop.run_until(lambda: server.session.state is State.OPEN, WAIT_TIMEOUT)
    assert loop.run_until(lambda: client.session.state is State.OPEN, WAIT_TIMEOUT)
    server.close(Code.GOING_AWAY)
    assert server.tls is not None and server.tls.closed  # close_notify is on its way
    assert loop.run_until(lambda: client.released and server.released, WAIT_TIMEOUT)
    client_end = client_side.closed()
    assert client_end is not None and client_end.disconnect.code == Code.GOING_AWAY
    server_end = server_side.closed()
    assert server_end is not None and server_end.disconnect.reason is Reason.CLOSED_LOCALLY
    # The server was released by the client's close, not by waiting out its linger.
    assert loop.time() < server.session.deadline


def test_plain_text_on_a_tls_port_gets_a_plain_error(loop, pki, listener):
    theirs = socket.create_connection(listener.getsockname(), timeout=WAIT_TIMEOUT)
    accepted, _ = listener.accept()
    accepted.setblocking(False)
    server_side = Recorder(loop)
    server = server_channel(server_side, accepted, server_tls(pki))
    theirs.sendall(encode_hello("plain", 0))
    assert loop.run_until(lambda: server.released, WAIT_TIMEOUT)
    received = b""
    while chunk := theirs.recv(65536):
        received += chunk
    theirs.close()
    ((ftype, payload),) = FrameDecoder(DEFAULT_MAX_PAYLOAD).feed(received)
    assert ftype == FrameType.ERROR
    code, message = parse_error(payload)
    assert code == Code.UNAUTHORIZED and message.startswith("TLS required on this port")
    assert server_side.handshakes == [False]
    closed = server_side.closed()
    assert isinstance(closed, Closed) and closed.disconnect.reason is Reason.TLS_ERROR
