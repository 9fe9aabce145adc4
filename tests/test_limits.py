"""Capacity limits: the connection cap and running out of descriptors (protocol.md,
section 9). At either limit a newcomer is refused with ERROR SERVER_FULL, the server
neither crashes nor spins, and it recovers once room frees up."""

from __future__ import annotations

import contextlib
import socket

import psutil

from hbloop.core.protocol import Frame, FrameDecoder
from hbloop.core.wire import DEFAULT_MAX_PAYLOAD, Code, FrameType, encode_close, encode_hello

from conftest import WAIT_TIMEOUT, RawPeer, expect_last_word, frame_code, wait_for

FAST_TIMERS = ("--interval", "0.5", "--timeout", "1.5")


def test_at_max_connections_a_newcomer_gets_server_full(serve, raw_peer, good_peers):
    # Long timers: "second" stays silent throughout, and only its CLOSE may end it.
    server = serve("--interval", "5", "--timeout", "15", "--max-connections", "2")
    good = good_peers(server.address, count=1)
    second = raw_peer(server.address)
    assert second.hello("second")[0] == FrameType.WELCOME

    third = raw_peer(server.address)
    third.send(encode_hello("third", 0))
    expect_last_word(third, FrameType.ERROR, Code.SERVER_FULL)
    server.wait_line(r"disconnect .* name=third .*reason=refused SERVER_FULL")
    good.assert_served(server)

    # Room frees up: the next newcomer is admitted.
    second.send(encode_close(Code.NORMAL))
    server.wait_line(r"disconnect .* name=second .*reason=peer_closed")
    fourth = raw_peer(server.address)
    assert fourth.hello("fourth")[0] == FrameType.WELCOME
    good.assert_served(server)


# --- out of descriptors (EMFILE) ---------------------------------------------------------

FD_LIMIT = 64
# Several times the descriptors the server has: most of the flood cannot be accepted.
FLOOD_CONNECTIONS = 200
# Long enough that the accepted flood connections are still held while CPU is measured.
HANDSHAKE_TIMEOUT = 10.0
CPU_SAMPLE = 1.0  # seconds
# A server spinning on a readable listener burns a whole core (100%); an idle one with a
# few heartbeating peers uses a few percent. Half a core leaves room for a busy machine.
MAX_CPU_PERCENT = 50.0


def read_available(sock: socket.socket) -> list[Frame]:
    """Frames already sent to ``sock`` (up to its EOF), without waiting for more."""
    sock.setblocking(False)
    decoder = FrameDecoder(DEFAULT_MAX_PAYLOAD)
    frames: list[Frame] = []
    with contextlib.suppress(BlockingIOError, ConnectionResetError):
        while chunk := sock.recv(65536):
            frames.extend(decoder.feed(chunk))
    return frames


def test_out_of_descriptors_sheds_without_spinning_and_recovers(serve, good_peers):
    server = serve(
        *FAST_TIMERS,
        "--handshake-timeout",
        str(HANDSHAKE_TIMEOUT),
        prefix=["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}"],
    )
    good = good_peers(server.address, count=2)
    process = psutil.Process(server.proc.pid)
    assert process.rlimit(psutil.RLIMIT_NOFILE) == (FD_LIMIT, FD_LIMIT)

    flood: list[socket.socket] = []
    try:
        for _ in range(FLOOD_CONNECTIONS):
            flood.append(socket.create_connection(server.address, timeout=WAIT_TIMEOUT))
        server.wait_line(r"Too many open files: shed \d+ connections")
        # Held open: the server is at its limit, and must sit idle rather than spin.
        process.cpu_percent()
        cpu = process.cpu_percent(interval=CPU_SAMPLE)
        assert cpu < MAX_CPU_PERCENT, f"server used {cpu:.0f}% CPU while out of descriptors"
        assert server.proc.poll() is None
        good.assert_served(server)

        refused = 0
        for sock in flood:
            frames = read_available(sock)
            if frames:
                assert len(frames) == 1 and frames[0][0] == FrameType.ERROR, frames
                assert frame_code(frames[0]) == Code.SERVER_FULL
                refused += 1
        # Every descriptor the server has is taken long before the flood ends.
        assert refused >= FLOOD_CONNECTIONS - FD_LIMIT, refused
    finally:
        for sock in flood:
            sock.close()

    # Descriptors free up as the flood leaves; a newcomer is then served normally.
    def newcomer_welcomed() -> bool:
        try:
            with RawPeer(server.address) as peer:
                return peer.hello("after-flood")[0] == FrameType.WELCOME
        except (OSError, EOFError):
            return False

    assert wait_for(newcomer_welcomed), "no recovery after the descriptor flood"
    assert server.proc.poll() is None
    good.assert_served(server)
