"""A flooding client, run as its own process so that it competes with the server for
the CPU as a real attacker would: ``python tests/flooder.py HOST PORT COUNT KIND
SECONDS`` opens COUNT connections, completes the handshake on each, then sends KIND
frames ("pong" or "data", empty DATA) as fast as the kernel takes them for SECONDS,
reading and discarding whatever comes back. It prints one line: ``sent N frames``.
"""

from __future__ import annotations

import selectors
import socket
import sys
import time

from hbloop.protocol import FrameDecoder
from hbloop.wire import DEFAULT_MAX_PAYLOAD, PONG_FRAME, FrameType, encode_data, encode_hello

FRAMES = {"pong": PONG_FRAME, "data": encode_data(b"")}

# Frames written per send call: a burst large enough to fill the socket buffer.
BURST = 4096


def main() -> int:
    host, port, count, kind, seconds = sys.argv[1:6]
    frame = FRAMES[kind]
    burst = frame * BURST
    socks = []
    for i in range(int(count)):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(encode_hello(f"flooder-{i}", 0))
        first = FrameDecoder(DEFAULT_MAX_PAYLOAD).feed(sock.recv(64))
        assert first and first[0][0] == FrameType.WELCOME, first
        sock.setblocking(False)
        socks.append(sock)
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    sent = 0
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        for key, events in selector.select(timeout=0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if events & selectors.EVENT_READ and not sock.recv(65536):
                    selector.unregister(sock)  # the server closed it
                    continue
                if events & selectors.EVENT_WRITE:
                    sent += sock.send(burst) // len(frame)
            except (BlockingIOError, ConnectionError):
                continue
    print(f"sent {sent} frames", flush=True)
    for sock in socks:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
