"""A reader that stops reading costs an endpoint a bounded amount of memory: its own
pending output (``--max-pending``) plus a kernel send buffer capped from the same
figure (SO_SNDBUF, ``hbloop.net.sockets.apply_tcp_options``), whatever the kernel's
autotuning would have allowed (protocol.md, section 9)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from hbloop.aio import connect
from hbloop.core.policy import DEFAULT_MAX_PENDING as CLIENT_MAX_PENDING
from hbloop.core.policy import ServerPolicy
from hbloop.core.wire import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    WELCOME_STRUCT,
    FrameType,
    encode_data,
)
from hbloop.net.sockets import KERNEL_SNDBUF_FACTOR, send_buffer_request

from conftest import RawPeer, flood_without_reading, metrics_address, wait_for_metrics

MAX_PENDING = 128 * 1024  # the server's cap under test: small against Linux's 4 MiB
# The reader's receive buffer, set before connect so that its window stays small: what
# its own kernel holds is bounded by this (doubled, as Linux reports it), not by us.
READER_RCVBUF = 4096
FRAME = encode_data(bytes(DEFAULT_MAX_PAYLOAD - 1024))  # echoed back by the server
WELCOME_BYTES = HEADER_SIZE + WELCOME_STRUCT.size


def test_a_reader_that_never_reads_gets_at_most_the_caps(serve):
    server = serve("--max-pending", str(MAX_PENDING), "--metrics-port", "0")
    metrics = metrics_address(server)
    with RawPeer(server.address, rcvbuf=READER_RCVBUF) as reader:
        assert reader.hello("reader")[0] == FrameType.WELCOME
        # What the reader's own kernel may hold for it: its receive buffer, as Linux
        # reports it (twice what was asked for), which bounds the window it advertises.
        reader_kernel = reader.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        flood_without_reading(reader, FRAME)
    cut = server.wait_line(r"disconnect .* name=reader .*reason=slow_consumer (\d+) bytes pending")
    # hbloop's own buffer at the cut: over the cap by the one frame that passed it.
    pending = int(cut.group(1))
    assert MAX_PENDING < pending <= MAX_PENDING + len(FRAME)
    # Every byte the server accepted for the reader: counted as it was written.
    written = wait_for_metrics(metrics, {'hbloop_closed_total{reason="slow_consumer"}': 1})[
        "hbloop_out_bytes_total"
    ]
    # What left hbloop for the kernels, the server's send buffer and the reader's
    # receive buffer: the server's share is capped at MAX_PENDING (about 4 MB without
    # the cap, this machine's net.ipv4.tcp_wmem maximum).
    in_kernels = written - WELCOME_BYTES - pending
    server_kernel = in_kernels - reader_kernel
    assert server_kernel <= MAX_PENDING, (
        f"the server's kernel took {server_kernel} bytes for a reader that never reads "
        f"(cap {MAX_PENDING}; {in_kernels} in both kernels, the reader's holding at most "
        f"{reader_kernel})"
    )


def kernel_send_buffer(max_pending: int) -> int:
    """The send buffer Linux gives for ``max_pending``: the request clamped to
    net.core.wmem_max, then doubled."""
    wmem_max = int(Path("/proc/sys/net/core/wmem_max").read_text())
    return min(send_buffer_request(max_pending), wmem_max) * KERNEL_SNDBUF_FACTOR


def test_accepted_and_client_sockets_get_a_capped_send_buffer(in_process_server):
    harness = in_process_server(ServerPolicy(max_pending=MAX_PENDING))
    client = harness.client("capped")
    harness.run_until(lambda: harness.server.peers and client.welcome)
    # The socket is the channel's, below the application's Peer handle.
    accepted_sock = harness.server.peers[0]._channel.sock
    accepted = accepted_sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert accepted == kernel_send_buffer(MAX_PENDING) <= MAX_PENDING
    assert client.connection is not None
    connected = client.connection.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert connected == kernel_send_buffer(CLIENT_MAX_PENDING) <= CLIENT_MAX_PENDING


def test_the_asyncio_client_socket_gets_a_capped_send_buffer(serve):
    server = serve()

    async def send_buffer() -> int:
        async with connect(*server.address, "aio-capped") as client:
            await client.welcome()
            assert client.connection is not None and client.connection.transport is not None
            sock = client.connection.transport.get_extra_info("socket")
            return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))

    assert asyncio.run(send_buffer()) == kernel_send_buffer(CLIENT_MAX_PENDING)


# The smallest send buffer the option gives with a cap that holds a maximum-size frame:
# bursts of those frames must still flow to a reader that reads. The burst is as many
# as the client's own cap holds at once, which is more than the server's.
SMALL_PENDING = 2 * (DEFAULT_MAX_PAYLOAD + HEADER_SIZE)
BURST = CLIENT_MAX_PENDING // (DEFAULT_MAX_PAYLOAD + HEADER_SIZE)
assert BURST * (DEFAULT_MAX_PAYLOAD + HEADER_SIZE) > SMALL_PENDING


def test_maximum_frames_and_heartbeats_flow_under_a_small_cap(in_process_server):
    harness = in_process_server(
        ServerPolicy(max_pending=SMALL_PENDING, interval=0.1, timeout=0.3),
        on_message=lambda peer, data: peer.send(data),
    )
    received: list[bytes] = []
    client = harness.client("bulk", on_message=received.append)
    harness.run_until(lambda: client.welcome)
    payload = bytes(DEFAULT_MAX_PAYLOAD)
    for _ in range(BURST):
        assert client.send(payload)
    harness.run_until(lambda: len(received) == BURST)
    assert all(data == payload for data in received)
    # Heartbeats went on meanwhile: the peer is still there, past several timeouts'
    # worth of 6-byte PINGs and PONGs through the same small buffers.
    heartbeats = harness.server.stats.copy().heartbeats
    harness.run_until(lambda: harness.server.stats.copy().heartbeats >= heartbeats + 5)
    assert harness.server.peers and not harness.server.stats.closed
