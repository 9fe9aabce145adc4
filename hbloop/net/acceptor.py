"""Accepting connections on an EventLoop without spinning when descriptors run out,
and admission control for connect storms.

Shared by the heartbeat listener (``Server``) and the ``/metrics`` listener. Out of
descriptors (EMFILE), Linux keeps a connection that cannot be accepted in the queue
and the listener stays readable, so a listener that only logged the failure would
spin the loop at 100% CPU. As libev and libuv do, the acceptor keeps a spare
descriptor: it gives it up to accept each queued connection, sends it a farewell
(ERROR SERVER_FULL, or an HTTP 503) and closes it, then reopens the spare. If the
spare cannot be reopened, it stops watching the listener for ``ACCEPT_PAUSE``.

Admission (``AdmissionLimits``), as EMQX's ``max_conn_rate``: with an accept rate, the
acceptor takes connections from a token bucket and, when it is empty, stops watching
the listener until the next token, so a storm waits in the kernel's backlog (and, past
it, in the clients' SYN retries) instead of being admitted and later killed.
``SourceLimits`` caps handshakes in progress and TLS handshakes a second per source
address, so that one address (one NAT, one replaying client) cannot hold the whole
process at its caps. Connections shed are counted per reason and logged once per
SHED_LOG_PERIOD, as a count, never as a line per connection.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from hbloop.net.loop import EventLoop, Timer
from hbloop.net.tls import HandshakeLimiter

# When accept() fails for lack of descriptors and the spare one cannot be reopened, or
# fails unexpectedly, stop accepting for this long rather than spin on a listener that
# stays readable: long enough to cost nothing, short enough to recover promptly.
ACCEPT_PAUSE = 1.0

# Shed connections are counted per reason and logged once per this period: a flood
# is one line a second per reason, not one line per connection.
SHED_LOG_PERIOD = 1.0

# Source addresses whose TLS handshake buckets are kept. Past it the buckets are
# dropped, and each source starts again with a full bucket: a bounded gift of one
# burst per source, where keeping every address a flood ever came from would grow
# without bound.
MAX_TRACKED_SOURCES = 65536

# Errors from accept() that concern only the connection being accepted.
TRANSIENT_ACCEPT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

Adopt = Callable[[socket.socket, tuple[str, int]], None]


@dataclass(frozen=True)
class AdmissionLimits:
    """How fast new connections are let in; 0 means no limit.

    ``accept_rate`` connections accepted a second, with a bucket of ``accept_burst``
    (0: a quarter second's worth); ``handshakes_per_source`` connections in their
    handshake at once from one address; ``tls_rate_per_source`` new TLS handshakes a
    second from one address."""

    accept_rate: float = 0.0
    accept_burst: float = 0.0
    handshakes_per_source: int = 0
    tls_rate_per_source: float = 0.0

    def accept_limiter(self, now: float) -> HandshakeLimiter | None:
        """The accept rate's token bucket, or None without a rate."""
        if not self.accept_rate:
            return None
        if not self.accept_burst:
            return HandshakeLimiter.per_second(self.accept_rate, now)
        return HandshakeLimiter(self.accept_rate, max(1.0, self.accept_burst), now)


class SourceLimits:
    """Per source address: handshakes in progress and new TLS handshakes a second.
    ``admit`` says why a newcomer is refused (None: admitted, its handshake counted
    until ``done``)."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self._handshaking: dict[str, int] = {}
        self._tls: dict[str, HandshakeLimiter] = {}
        self.update(limits)

    def update(self, limits: AdmissionLimits) -> None:
        """New limits, in place (SIGHUP): the TLS buckets start again full."""
        self.handshakes = limits.handshakes_per_source
        self.tls_rate = limits.tls_rate_per_source
        self._tls.clear()

    def admit(self, host: str, tls: bool, now: float) -> str | None:
        if self.handshakes and self._handshaking.get(host, 0) >= self.handshakes:
            return f"{self.handshakes} handshakes in progress from one address"
        if tls and self.tls_rate:
            bucket = self._tls.get(host)
            if bucket is None:
                if len(self._tls) >= MAX_TRACKED_SOURCES:
                    self._tls.clear()
                bucket = self._tls[host] = HandshakeLimiter.per_second(self.tls_rate, now)
            if not bucket.allow(now):
                return f"over {self.tls_rate:g} TLS handshakes/s from one address"
        if self.handshakes:
            self._handshaking[host] = self._handshaking.get(host, 0) + 1
        return None

    def done(self, host: str) -> None:
        """``host``'s admitted connection is through its handshake, or gone (one
        admitted before a limit was set is not counted)."""
        if self.handshakes:
            left = self._handshaking.get(host, 0) - 1
            if left > 0:
                self._handshaking[host] = left
            else:
                self._handshaking.pop(host, None)


class Acceptor:
    """Accepts up to ``batch`` connections a wake-up from ``listener`` and hands each
    to ``adopt(sock, address)``. Out of descriptors, it sheds queued connections with
    ``farewell`` and reports each batch to ``on_shed(count)``; ``log`` (with ``label``
    before its messages) gets the counts shed, per reason, once per SHED_LOG_PERIOD.
    With ``limiter`` (the accept rate's bucket), it stops accepting while the bucket is
    empty. A ``shared`` listener (inherited: other processes accept from it too) wakes
    one of them per connection (``EventLoop.add_shared_reader``)."""

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
        limiter: HandshakeLimiter | None = None,
        shared: bool = False,
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
        self.limiter = limiter
        self._spare: int | None = os.open(os.devnull, os.O_RDONLY)
        self._shed_counts: dict[str, int] = {}
        self._shed_log: Timer | None = None
        # A connection accepted when the bucket was empty: adopted at the next token.
        self._held: tuple[socket.socket, tuple[str, int]] | None = None
        self._watch = loop.add_shared_reader if shared else loop.add_reader
        self._watch(listener.fileno(), self._accept)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return host, port

    def _accept(self) -> None:
        listener = self.listener
        limiter = self.limiter
        if self._held is not None:
            held, self._held = self._held, None
            if not self._admit(*held):
                return
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
            if limiter is None:
                self.adopt(sock, address)
            elif not self._admit(sock, address):
                return

    def _admit(self, sock: socket.socket, address: tuple[str, int]) -> bool:
        """Adopt a connection if the accept rate allows; else hold it and stop
        accepting until the next token (False)."""
        limiter = self.limiter
        if limiter is None or limiter.allow(self.loop.now):
            self.adopt(sock, address)
            return True
        self._held = sock, address
        self._pause(1.0 / limiter.rate)
        return False

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
        """Count ``count`` connections shed for ``why``; the counts are logged at the
        end of the SHED_LOG_PERIOD this one starts, or is in."""
        self._shed_counts[why] = self._shed_counts.get(why, 0) + count
        if self._shed_log is None:
            self._shed_log = self.loop.call_later(SHED_LOG_PERIOD, self._log_shed)

    def _log_shed(self) -> None:
        self._shed_log = None
        counts, self._shed_counts = self._shed_counts, {}
        for why, count in counts.items():
            self.log.warning(
                "%s%s: shed %d connections in %gs", self.label, why, count, SHED_LOG_PERIOD
            )

    def _pause(self, seconds: float = ACCEPT_PAUSE) -> None:
        self.loop.remove_reader(self.listener.fileno())
        self.loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        if self.closed:
            return
        if self._spare is None:
            try:
                self._spare = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                self.loop.call_later(ACCEPT_PAUSE, self._resume)
                return
        self._watch(self.listener.fileno(), self._accept)
        if self._held is not None:
            self._accept()  # the listener may have nothing more to wake it for

    def close(self) -> None:
        """Stop accepting and close the listener and the spare descriptor."""
        if self.closed:
            return
        self.closed = True
        if self._shed_log is not None:
            self._shed_log.cancel()
            self._log_shed()
        if self._held is not None:
            self.turn_away(self._held[0])
            self._held = None
        self.loop.forget_fd(self.listener.fileno())
        self.listener.close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
