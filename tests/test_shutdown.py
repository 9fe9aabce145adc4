"""Graceful shutdown on SIGTERM/SIGINT, and the second signal that cuts it short
(protocol.md, rule C4 and section 9)."""

from __future__ import annotations

import signal
import socket
import struct
import time

import pytest

from hbloop.core.wire import Code, FrameType, encode_data

from conftest import RawPeer, expect_last_word, tcp_socket, wait_for

# Peers here fall silent while the server shuts down: timers long enough that only the
# shutdown, never the heartbeat timeout, can end them on a loaded machine.
TIMERS = ("--interval", "5", "--timeout", "15")
GRACE = 10.0
# A drained server exits as soon as its last peer is gone; this is "soon" on a shared
# machine, and well under the grace period.
PROMPT_EXIT = 3.0


def assert_refused(address: tuple[str, int]) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=PROMPT_EXIT).close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_every_peer_going_away_and_exits_0(serve, raw_peer, signum):
    server = serve(*TIMERS, "--shutdown-grace", str(GRACE))
    peers = [raw_peer(server.address) for _ in range(3)]
    for i, peer in enumerate(peers):
        assert peer.hello(f"p{i}")[0] == FrameType.WELCOME
    mid_handshake = raw_peer(server.address)  # connected, no HELLO yet
    server.wait_line(r"connect .* name=p2 ")

    server.signal(signum)
    for peer in [*peers, mid_handshake]:
        expect_last_word(peer, FrameType.CLOSE, Code.GOING_AWAY)
    # Our sockets are still open, so the server is still running, and no longer listening.
    assert server.proc.poll() is None
    assert_refused(server.address)

    for peer in [*peers, mid_handshake]:
        peer.close()
    signalled_at = time.monotonic()
    assert server.wait(PROMPT_EXIT + GRACE) == 0
    assert time.monotonic() - signalled_at < PROMPT_EXIT, "a drained server kept waiting"
    server.wait_line("stopped")
    assert len(server.find(r"reason=shutdown GOING_AWAY")) == len(peers) + 1


# --- nothing queued before the signal is lost ----------------------------------------

SLOW_READER_RCVBUF = 4096  # a small window: the echo backs up into the server
# Once the server is signalled, the reader takes what it can as a normal client does:
# the grace is under test, not how often a loaded machine wakes a reader that takes
# 12 MB 4 KB at a time (about 3,000 wakeups within the grace; TCP's window, whose scale
# was fixed at the handshake, still caps a read at 64 KB).
FAST_READER_RCVBUF = 1024 * 1024
ECHO_FRAMES = 200
ECHO_PAYLOAD = 60_000  # bytes per frame: 12 MB of echo, several times what the kernels buffer
# Room for all of it, so that nothing is dropped as a slow consumer.
PENDING_CAP = 32 * 1024 * 1024


def payload(i: int) -> bytes:
    return struct.pack(">I", i) * (ECHO_PAYLOAD // 4)


def test_output_queued_before_the_signal_is_delivered_before_close(serve):
    server = serve(*TIMERS, "--shutdown-grace", str(GRACE), "--max-pending", str(PENDING_CAP))
    with RawPeer(server.address, rcvbuf=SLOW_READER_RCVBUF) as peer:
        assert peer.hello("slow-reader")[0] == FrameType.WELCOME
        for i in range(ECHO_FRAMES):
            peer.send(encode_data(payload(i)))
        # Wait until the server has read every byte we sent (our send queue and its
        # receive queue are both empty): every echo is then written to its buffers.
        mine = peer.sock.getsockname()[1]
        assert wait_for(
            lambda: (
                tcp_socket(mine, server.port).send_queue == 0
                and tcp_socket(server.port, mine).recv_queue == 0
            )
        )
        echoed = ECHO_FRAMES * len(encode_data(payload(0)))
        in_kernels = (
            tcp_socket(server.port, mine).send_queue + tcp_socket(mine, server.port).recv_queue
        )
        assert in_kernels < echoed / 2, "the echo is not backed up in the server"

        server.signal(signal.SIGTERM)
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, FAST_READER_RCVBUF)
        try:
            frames = expect_last_word(peer, FrameType.CLOSE, Code.GOING_AWAY, before=ECHO_FRAMES)
        except AssertionError as exc:  # it failed twice in full runs beside a big bench
            log = "\n".join(server.lines())
            raise AssertionError(f"{exc}\nthe server logged:\n{log}") from None
    assert frames == [(FrameType.DATA, payload(i)) for i in range(ECHO_FRAMES)]
    assert server.wait(GRACE + PROMPT_EXIT) == 0


def test_second_signal_exits_at_once(serve, raw_peer):
    long_grace = 60.0  # the first signal alone would keep the server up this long
    server = serve(*TIMERS, "--shutdown-grace", str(long_grace))
    peer = raw_peer(server.address)
    assert peer.hello("lingerer")[0] == FrameType.WELCOME
    server.signal(signal.SIGTERM)
    # The peer reads the CLOSE but never closes: the server waits on it for the grace.
    assert peer.recv() == (FrameType.CLOSE, struct.pack(">H", Code.GOING_AWAY))
    assert server.proc.poll() is None
    server.signal(signal.SIGINT)
    second_at = time.monotonic()
    assert server.wait(PROMPT_EXIT) == 0
    assert time.monotonic() - second_at < PROMPT_EXIT
    server.wait_line("second stop request")
