"""A fault-injecting TCP proxy between a node and its Redis (bench.faults, the tests).

``FaultProxy(target)`` listens on 127.0.0.1 (a free port) and forwards each connection
to the Unix socket ``target``, from one thread with a selector. It can fail that path
the ways networks do:

* ``blackhole()``: stop forwarding, silently. Nothing is read from either side, so
  the bytes wait in the kernel's buffers, as they do on a partitioned path while TCP
  retransmits; new connections are accepted and then stall the same way. ``heal()``
  lets everything through again, in order.
* ``delay(seconds)``: every chunk is forwarded that much later.
* ``reset()``: every connection is closed with a RST at both ends (SO_LINGER 0).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import selectors
import socket
import struct
import threading
import time

# Bytes taken by one recv().
CHUNK = 65536

# How long forwarding one chunk may block before the proxy drops that connection
# (a receiver that stopped reading: a stopped Redis with full buffers).
SEND_TIMEOUT = 5.0

# How long close() waits for the thread.
JOIN_TIMEOUT = 5.0


def _rst(sock: socket.socket) -> None:
    """Close with a RST rather than a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultProxy:
    """127.0.0.1:``port`` -> Unix socket ``target``, with faults on demand."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._waker, self._wake_end = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._waker, selectors.EVENT_READ, "wake")
        self._peers: dict[socket.socket, socket.socket] = {}  # each end -> the other
        self._later: list[tuple[float, int, socket.socket, bytes]] = []  # delayed chunks
        self._last_due = 0.0  # chunks keep their order when the delay shrinks
        self._seq = itertools.count()
        self._flowing = True
        self._reading = True  # the pairs are registered with the selector
        self._delay = 0.0
        self._reset_asked = threading.Event()
        self._reset_done = threading.Event()
        self._stop = False
        self.connections = 0  # accepted so far
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    # --- faults -------------------------------------------------------------------------

    def blackhole(self) -> None:
        self._flowing = False
        self._wake()

    def heal(self) -> None:
        self._flowing = True
        self._wake()

    def delay(self, seconds: float) -> None:
        self._delay = seconds
        self._wake()

    def reset(self) -> None:
        """RST every connection now (blocks until done)."""
        self._reset_done.clear()
        self._reset_asked.set()
        self._wake()
        if not self._reset_done.wait(JOIN_TIMEOUT):
            raise RuntimeError("the proxy thread did not reset its connections")

    def close(self) -> None:
        self._stop = True
        self._wake()
        self._thread.join(JOIN_TIMEOUT)
        for sock in list(self._peers):
            sock.close()
        for sock in (self._listener, self._waker, self._wake_end):
            sock.close()
        self._selector.close()

    # --- the thread -----------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_end.send(b"x")

    def _run(self) -> None:
        while not self._stop:
            self._apply_faults()
            timeout = None
            if self._later and self._flowing:
                timeout = max(0.0, self._later[0][0] - time.monotonic())
            for key, _ in self._selector.select(timeout):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    self._waker.recv(CHUNK)
                elif key.fileobj in self._peers:
                    self._forward(key.fileobj)
            if self._flowing:
                self._send_due()

    def _apply_faults(self) -> None:
        if self._reset_asked.is_set():
            self._reset_asked.clear()
            for sock in list(self._peers):
                self._forget(sock)
                _rst(sock)
            self._later.clear()
            self._reset_done.set()
        if self._flowing != self._reading:
            self._reading = self._flowing
            for sock in self._peers:
                if self._reading:
                    self._selector.register(sock, selectors.EVENT_READ, "pipe")
                else:
                    self._selector.unregister(sock)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.target)
        except OSError:
            upstream.close()
            _rst(client)
            return
        self.connections += 1
        for sock in (client, upstream):
            sock.settimeout(SEND_TIMEOUT)
        self._peers[client] = upstream
        self._peers[upstream] = client
        if self._reading:
            for sock in (client, upstream):
                self._selector.register(sock, selectors.EVENT_READ, "pipe")

    def _forward(self, source: socket.socket) -> None:
        target = self._peers[source]
        try:
            data = source.recv(CHUNK)
        except OSError:
            data = b""
        if not data:  # EOF or reset: end the pair, passing a reset on as a reset
            self._close_pair(source)
            return
        if self._delay > 0:
            due = self._last_due = max(time.monotonic() + self._delay, self._last_due)
            heapq.heappush(self._later, (due, next(self._seq), target, data))
        else:
            self._send(target, data)

    def _send_due(self) -> None:
        now = time.monotonic()
        while self._later and self._later[0][0] <= now:
            _, _, target, data = heapq.heappop(self._later)
            if target in self._peers:
                self._send(target, data)

    def _send(self, target: socket.socket, data: bytes) -> None:
        try:
            target.sendall(data)
        except OSError:
            self._close_pair(target)

    def _close_pair(self, sock: socket.socket) -> None:
        other = self._peers.get(sock)
        for each in (sock, other):
            if each is not None and each in self._peers:
                self._forget(each)
                each.close()

    def _forget(self, sock: socket.socket) -> None:
        del self._peers[sock]
        if self._reading:
            self._selector.unregister(sock)
