"""Accepting connections on an EventLoop without spinning when descriptors run out.

Shared by the heartbeat listener (``Server``) and the ``/metrics`` listener. Out of
descriptors (EMFILE), Linux keeps a connection that cannot be accepted in the queue
and the listener stays readable, so a listener that only logged the failure would
spin the loop at 100% CPU. As libev and libuv do, the acceptor keeps a spare
descriptor: it gives it up to accept each queued connection, sends it a farewell
(ERROR SERVER_FULL, or an HTTP 503) and closes it, then reopens the spare. If the
spare cannot be reopened, it stops watching the listener for ``ACCEPT_PAUSE``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable

from hbloop.net.loop import EventLoop

# When accept() fails for lack of descriptors and the spare one cannot be reopened, or
# fails unexpectedly, stop accepting for this long rather than spin on a listener that
# stays readable: long enough to cost nothing, short enough to recover promptly.
ACCEPT_PAUSE = 1.0

# At most one "shed" warning per listener this often: a flood is one line a second,
# not one line per connection.
SHED_LOG_PERIOD = 1.0

# Errors from accept() that concern only the connection being accepted.
TRANSIENT_ACCEPT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

Adopt = Callable[[socket.socket, tuple[str, int]], None]


class Acceptor:
    """Accepts up to ``batch`` connections a wake-up from ``listener`` and hands each
    to ``adopt(sock, address)``. Out of descriptors, it sheds queued connections with
    ``farewell`` and reports each batch to ``on_shed(count)``; ``log`` (with ``label``
    before its messages) gets at most one warning a second about it."""

    def __init__(
        self,
        loop: EventLoop,
        listener: socket.socket,
        adopt: Adopt,
        *,
        batch: int,
        farewell: bytes,
        on_shed: Callable[[int], None],
        log: logging.Logger,
        label: str = "",
    ) -> None:
        self.loop = loop
        self.listener = listener
        self.adopt = adopt
        self.batch = batch
        self.farewell = farewell
        self.on_shed = on_shed
        self.log = log
        self.label = label
        self.closed = False
        self._spare: int | None = os.open(os.devnull, os.O_RDONLY)
        self._last_shed_log = float("-inf")
        loop.add_reader(listener.fileno(), self._accept)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return host, port

    def _accept(self) -> None:
        listener = self.listener
        for _ in range(self.batch):
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:
                    self._shed(exc)
                    return
                if exc.errno in TRANSIENT_ACCEPT_ERRNOS:
                    continue
                # Unexpected: keep serving what is connected, retry accepting later.
                self.log.error(
                    "%saccept failed: %s; pausing accepts for %.0fs", self.label, exc, ACCEPT_PAUSE
                )
                self._pause()
                return
            self.adopt(sock, address)

    def _shed(self, exc: OSError) -> None:
        """Accept-and-close what is queued, giving up the spare descriptor to do so."""
        shed = 0
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
            for _ in range(self.batch):
                try:
                    sock, _address = self.listener.accept()
                except OSError:
                    break
                self.turn_away(sock)
                shed += 1
            with contextlib.suppress(OSError):
                self._spare = os.open(os.devnull, os.O_RDONLY)
        self.on_shed(shed)
        if self._spare is None:
            # Still no descriptor to spare: stop watching the listener for a while.
            self._pause()
        self.warn_shed(exc.strerror or str(exc), shed)

    def turn_away(self, sock: socket.socket, farewell: bytes | None = None) -> None:
        """Refuse a connection just accepted: ``farewell`` (by default the acceptor's),
        best effort, then close it."""
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(self.farewell if farewell is None else farewell)
        sock.close()

    def warn_shed(self, why: str, count: int) -> None:
        """The shedding warning, at most once per SHED_LOG_PERIOD."""
        now = self.loop.now
        if now - self._last_shed_log >= SHED_LOG_PERIOD:
            self._last_shed_log = now
            self.log.warning("%s%s: shed %d connections", self.label, why, count)

    def _pause(self) -> None:
        self.loop.remove_reader(self.listener.fileno())
        self.loop.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        if self.closed:
            return
        if self._spare is None:
            try:
                self._spare = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                self.loop.call_later(ACCEPT_PAUSE, self._resume)
                return
        self.loop.add_reader(self.listener.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close the listener and the spare descriptor."""
        if self.closed:
            return
        self.closed = True
        self.loop.forget_fd(self.listener.fileno())
        self.listener.close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
