"""Flooding peers, run as a process of their own so that they compete with the server
for the CPU as a real attacker would: ``python -m bench.flood HOST PORT COUNT KIND
SECONDS`` opens COUNT connections, completes the handshake on each, then sends KIND
frames ("pong": unsolicited PONGs, or "data": empty DATA, which the server echoes) as
fast as the kernel takes them for SECONDS, reading and discarding whatever comes back.
It prints one line: ``sent N frames``. The bench's ``--flooders`` and the tests both
start it.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import time

from hbloop.core.policy import DEFAULT_PING_STRIKES, LINGER_SECONDS
from hbloop.core.session import Events, Opened, Role, Session, SessionConfig
from hbloop.core.wire import PONG_FRAME, encode_data, encode_hello

FRAMES = {"pong": PONG_FRAME, "data": encode_data(b"")}
KINDS = tuple(FRAMES)

# Frames written per send call: a burst large enough to fill the socket buffer.
BURST = 4096

# The one line a run prints: "sent N frames".
SENT_PREFIX = "sent "

# Seconds a flooder's handshake may take: it connects to a server started for it.
HANDSHAKE_TIMEOUT = 10.0


def start(address: tuple[str, int], count: int, kind: str, seconds: float) -> subprocess.Popen[str]:
    """A flooding process against ``address``; read its stdout for the frames sent."""
    argv = [sys.executable, "-m", "bench.flood", address[0], str(address[1])]
    return subprocess.Popen(
        [*argv, str(count), kind, str(seconds)], stdout=subprocess.PIPE, text=True
    )


def frames_sent(process: subprocess.Popen[str], timeout: float) -> int:
    """Wait for a flooding process to end; the frames it sent."""
    out, _ = process.communicate(timeout=timeout)
    if not out.startswith(SENT_PREFIX):
        raise RuntimeError(f"the flooding process failed (exit {process.returncode})")
    return int(out[len(SENT_PREFIX) :].split()[0])


def main() -> int:
    host, port, count, kind, seconds = sys.argv[1:6]
    frame = FRAMES[kind]
    burst = frame * BURST
    socks = []
    for i in range(int(count)):
        # The handshake through a client session, which judges the WELCOME; the flood
        # that follows is raw bytes.
        config = SessionConfig(
            Role.CLIENT,
            handshake_timeout=HANDSHAKE_TIMEOUT,
            ping_strikes=DEFAULT_PING_STRIKES,
            linger=LINGER_SECONDS,
            hello=encode_hello(f"flooder-{os.getpid()}-{i}", 0),
        )
        session = Session.client(config, time.monotonic())
        sock = socket.create_connection((host, int(port)), timeout=HANDSHAKE_TIMEOUT)
        sock.sendall(session.connected(time.monotonic()))
        events: Events = ()
        while not events:
            data = sock.recv(64)
            if not data:
                raise ConnectionError("the server closed the connection before WELCOME")
            _, events = session.receive_data(data, time.monotonic())
        assert isinstance(events[0], Opened), events
        sock.setblocking(False)
        socks.append(sock)
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    sent = 0
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        for key, mask in selector.select(timeout=0.1):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            try:
                if mask & selectors.EVENT_READ and not ready.recv(65536):
                    selector.unregister(ready)  # the server closed it
                    continue
                if mask & selectors.EVENT_WRITE:
                    sent += ready.send(burst) // len(frame)
            except (BlockingIOError, ConnectionError):
                continue
    print(f"{SENT_PREFIX}{sent} frames", flush=True)
    for sock in socks:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
