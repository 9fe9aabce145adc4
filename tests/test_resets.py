"""Resets, half-closes, write errors and failing callbacks (protocol.md, section 9):
each is a disconnect with a reason, never an unhandled exception, and the server goes
on serving."""

from __future__ import annotations

import logging
import select
import socket

import pytest

from hbloop.core.policy import ServerPolicy
from hbloop.core.session import Disconnect, Reason
from hbloop.core.wire import FrameType, encode_hello
from hbloop.server import Peer

from conftest import WAIT_TIMEOUT, RawPeer, rst_close

FAST_TIMERS = ("--interval", "0.5", "--timeout", "1.5")
POLICY = ServerPolicy(interval=0.5, timeout=1.5)
HEARTBEAT_INTERVAL = 0.1  # seconds; the good client in-process pings this often
HEARTBEATS = 5  # answered PINGs that prove the server still serves


# --- over real sockets, against `hbloop serve` -------------------------------------------


def test_rst_after_handshake_is_peer_reset(serve, good_peers):
    server = serve(*FAST_TIMERS)
    good = good_peers(server.address)
    peer = RawPeer(server.address)
    assert peer.hello("resetter")[0] == FrameType.WELCOME
    rst_close(peer.sock)
    server.wait_line(r"disconnect .* name=resetter .*reason=peer_reset Connection reset by peer")
    good.assert_served(server)


def test_rst_during_handshake_is_peer_reset(serve, good_peers):
    server = serve(*FAST_TIMERS)
    good = good_peers(server.address)
    sock = socket.create_connection(server.address)
    port = sock.getsockname()[1]
    sock.sendall(encode_hello("half-a-hello", 0)[:5])
    rst_close(sock)
    server.wait_line(rf"disconnect 127\.0\.0\.1:{port} name=- .*reason=peer_reset")
    good.assert_served(server)


def test_half_close_is_a_disconnect_and_the_server_closes_too(serve, raw_peer, good_peers):
    server = serve(*FAST_TIMERS)
    good = good_peers(server.address)
    peer = raw_peer(server.address)
    assert peer.hello("half-closer")[0] == FrameType.WELCOME
    peer.sock.shutdown(socket.SHUT_WR)
    # A peer that can no longer send cannot heartbeat: the server ends it at once.
    assert peer.recv_until_eof() == []
    server.wait_line(r"disconnect .* name=half-closer .*reason=peer_closed EOF")
    good.assert_served(server)


# --- in process: write errors and application callbacks ----------------------------------


def server_side_is_hung_up(peer: Peer) -> bool:
    """The RST has reached the server's socket (seen without consuming the error)."""
    poller = select.poll()
    poller.register(peer._channel.fd, select.POLLIN)
    return any(mask & (select.POLLHUP | select.POLLERR) for _, mask in poller.poll(0))


@pytest.mark.parametrize(
    ("consume_error", "detail"),
    [(False, "Connection reset by peer"), (True, "Broken pipe")],
    ids=["ECONNRESET", "EPIPE"],
)
def test_write_to_a_reset_peer_is_a_disconnect(in_process_server, consume_error, detail):
    gone: list[Disconnect] = []
    harness = in_process_server(POLICY, on_disconnect=lambda peer, d: gone.append(d))
    server = harness.server
    victim = socket.create_connection(harness.address, timeout=WAIT_TIMEOUT)
    victim.sendall(encode_hello("victim", 0))
    harness.run_until(lambda: server.peers)
    (peer,) = server.peers
    rst_close(victim)
    harness.run_until(lambda: server_side_is_hung_up(peer))
    if consume_error:
        # Once the pending ECONNRESET has been collected, the kernel reports EPIPE.
        peer._channel.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    # The application writes before the loop has noticed the reset.
    assert peer.send(b"anyone there?") is False
    assert [(d.reason, d.detail) for d in gone] == [(Reason.PEER_RESET, detail)]
    assert peer.send(b"still?") is False  # a released peer just refuses

    good = harness.client("good", interval=HEARTBEAT_INTERVAL)
    harness.run_until(lambda: server.stats.copy().heartbeats >= HEARTBEATS)
    assert good.welcome is not None


def test_exceptions_in_application_callbacks_are_logged_and_the_loop_goes_on(
    in_process_server, caplog
):
    calls: list[str] = []

    def explode(what: str):  # type: ignore[no-untyped-def]
        def callback(*args: object) -> None:
            calls.append(what)
            raise RuntimeError(f"bug in {what}")

        return callback

    harness = in_process_server(
        POLICY,
        on_connect=explode("on_connect"),
        on_message=explode("on_message"),
        on_disconnect=explode("on_disconnect"),
    )
    server = harness.server
    caplog.set_level(logging.ERROR, logger="hbloop.server")

    first = harness.client("first", interval=HEARTBEAT_INTERVAL)
    harness.run_until(lambda: first.welcome is not None)
    for i in range(3):
        assert first.send(b"boom %d" % i)
    harness.run_until(lambda: calls.count("on_message") == 3)
    # Still connected and heartbeating after every callback failed.
    beats = server.stats.copy().heartbeats
    harness.run_until(lambda: server.stats.copy().heartbeats >= beats + HEARTBEATS)
    assert first.welcome is not None and len(server.peers) == 1

    first.close()
    harness.run_until(lambda: "on_disconnect" in calls)
    second = harness.client("second", interval=HEARTBEAT_INTERVAL)
    harness.run_until(lambda: second.welcome is not None)
    assert calls.count("on_connect") == 2

    failures = [r for r in caplog.records if "application callback" in r.getMessage()]
    assert {r.getMessage().split()[2] for r in failures} == {
        "on_connect",
        "on_message",
        "on_disconnect",
    }
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in failures)


def test_exceptions_in_client_callbacks_are_logged_and_the_loop_goes_on(in_process_server, caplog):
    def echo(peer: Peer, data: bytes) -> None:
        peer.send(data)

    def explode(*args: object) -> None:
        raise RuntimeError("bug in the client application")

    harness = in_process_server(POLICY, on_message=echo)
    server = harness.server
    caplog.set_level(logging.ERROR, logger="hbloop.client")
    client = harness.client(
        "fragile",
        interval=HEARTBEAT_INTERVAL,
        on_welcome=explode,
        on_message=explode,
        on_disconnect=explode,
    )
    harness.run_until(lambda: client.welcome is not None)
    assert client.send(b"echo me")
    harness.run_until(lambda: len(caplog.records) >= 2)
    beats = server.stats.copy().heartbeats
    harness.run_until(lambda: server.stats.copy().heartbeats >= beats + HEARTBEATS)
    assert client.welcome is not None and len(server.peers) == 1
    client.close()
    harness.run_until(lambda: client.done)
    messages = [r.getMessage() for r in caplog.records]
    assert all("application callback" in m for m in messages), messages
    assert {m.split()[2] for m in messages} == {"on_welcome", "on_message", "on_disconnect"}
