"""The workloads of the cost gate (``bench.cost``): an hbloop Server and raw clients.

``Rig`` is an in-process ``hbloop.Server`` on an ``EventLoop`` whose clock only moves
when the rig moves it, and plain blocking client sockets that speak the protocol in
raw bytes. Nothing here depends on the machine's speed or load: with the same
arguments, the server executes the same code every time.

``python -m bench.cost_workload CONNECTIONS HEARTBEATS`` is the program ``bench.cost``
runs under callgrind: it opens and handshakes CONNECTIONS connections, drives
HEARTBEATS heartbeats through them (see ``Rig.heartbeats``), closes everything and
exits 0.
"""

from __future__ import annotations

import functools
import select
import socket
import sys
import time
from collections.abc import Sequence

from hbloop import FrameType, Server, ServerPolicy

# hbloop's wire encoders, which the top-level package does not export, and the
# function that makes hbloop serve's loop: the imports from inside hbloop in the cost
# gate. Update them here when the modules move.
from hbloop.core.wire import HEADER_STRUCT, PING_FRAME, PONG_FRAME, encode_hello
from hbloop.net.loop import paced_loop

# The default 10 s / 30 s grant scaled down: the clock is simulated, so only the ratio
# matters, and with three intervals per timeout each connection's timer comes due and
# re-arms every two to three of its heartbeats, as in production.
INTERVAL = 1.0
TIMEOUT = 3.0
POLICY = ServerPolicy(interval=INTERVAL, timeout=TIMEOUT, max_connections=100_000)

# Every client says the same HELLO, asking for the server's default interval.
HELLO = encode_hello("cost", 0)

# Where the handshakes happen on the simulated clock; heartbeats start one interval
# later, so that no client's first PING comes sooner than an interval after its HELLO.
START = 0.0

# How long to wait for a late PONG before running the loop again (seconds).
LATE_POLL = 0.01

# Handshakes take a second under callgrind; past this (real seconds), the server is
# refusing or ignoring the clients.
HANDSHAKE_WAIT = 60.0


class Rig:
    """An hbloop Server on 127.0.0.1 (port 0) with a simulated clock, and ``clients``:
    TCP sockets, not yet connected."""

    def __init__(self, clients: list[socket.socket]) -> None:
        self._now = [START]
        # A C-level callable: reading the clock runs no Python code, as with the real one.
        clock = functools.partial(self._now.__getitem__, 0)
        # The loop ``hbloop serve`` runs, gather policy included (it costs per wake-up).
        self.loop = paced_loop(INTERVAL, clock=clock)
        self.server = Server("127.0.0.1", 0, POLICY, loop=self.loop)
        self.address = self.server.start()
        self.clients = clients
        #: Heartbeats whose PONG was not there after one loop iteration.
        self.late = 0

    def handshake(self) -> None:
        """Connect the clients, say HELLO on each, run the loop until the server has
        admitted them all, and read each WELCOME. Nothing the clients allocate outlives
        this call: memory traced across it is the server's."""
        for sock in self.clients:
            sock.connect(self.address)
            sock.sendall(HELLO)
        deadline = time.monotonic() + HANDSHAKE_WAIT
        while len(self.server.peers) < len(self.clients):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the server admitted {len(self.server.peers)} of {len(self.clients)} "
                    f"clients in {HANDSHAKE_WAIT:g} s"
                )
            self.loop.run_once()
        for sock in self.clients:
            length, ftype, _flags = HEADER_STRUCT.unpack(_recv_exactly(sock, HEADER_STRUCT.size))
            if ftype != FrameType.WELCOME:
                raise RuntimeError(f"expected WELCOME, got frame type {ftype}")
            _recv_exactly(sock, length)

    def heartbeats(self, count: int) -> None:
        """``count`` client-scheme heartbeats, round robin over the clients, each one
        PING written raw, one loop iteration, and the PONG read raw.

        The simulated clock advances by an interval divided by the number of clients
        before each PING, so every client pings exactly once per interval and each
        connection's timer comes due and re-arms as it would in production.
        """
        clients = self.clients
        step = INTERVAL / len(clients)
        now = self._now
        run_once = self.loop.run_once
        pong_size = len(PONG_FRAME)
        for i in range(count):
            now[0] = START + INTERVAL + i * step
            sock = clients[i % len(clients)]
            sock.sendall(PING_FRAME)
            run_once()
            # Loopback normally delivers before send() returns, so the PING was there
            # for that iteration and its PONG is there for this recv().
            try:
                reply = sock.recv(pong_size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                reply = self._await_pong(sock)
            if reply != PONG_FRAME:
                raise RuntimeError(f"heartbeat {i}: {reply!r} in answer to a PING")

    def _await_pong(self, sock: socket.socket) -> bytes:
        """The rare case of a delivery the kernel deferred: iterate until the PONG."""
        self.late += 1
        while not select.select([sock], [], [], LATE_POLL)[0]:
            self.loop.run_once()
        return sock.recv(len(PONG_FRAME))

    def close(self) -> None:
        for sock in self.clients:
            sock.close()
        self.server.shutdown()
        self.loop.close()


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise RuntimeError("the server closed a client's connection")
        data += chunk
    return data


def new_clients(count: int) -> list[socket.socket]:
    return [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]


def main(argv: Sequence[str]) -> int:
    connections, heartbeats = (int(arg) for arg in argv)
    rig = Rig(new_clients(connections))
    try:
        rig.handshake()
        rig.heartbeats(heartbeats)
        print(f"late={rig.late}")
    finally:
        rig.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
