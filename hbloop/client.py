"""The heartbeat client: handshake, the granted scheme, dead-server detection, reconnects.

A ``Client`` runs on an ``EventLoop`` like the server. It makes one ``Connection``
per attempt; when one ends for any reason but a refusal that retrying cannot fix,
it waits a full-jitter back-off (delay drawn uniformly from 0 to min(cap, base x 2^n))
and tries again, so that thousands of clients dropped by one server restart do not
come back in lockstep.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
from collections.abc import Callable

from hbloop.channel import Channel, Disconnect, IoCounters, Reason
from hbloop.loop import EventLoop, Timer, call_guarded
from hbloop.protocol import (
    Frame,
    LocalProtocolError,
    RemoteProtocolError,
    Role,
    check_sender,
    parse_close,
    parse_error,
    parse_welcome,
)
from hbloop.wire import (
    DEFAULT_MAX_PAYLOAD,
    MAX_NAME_BYTES,
    PONG_FRAME,
    T_CLOSE,
    T_DATA,
    T_ERROR,
    T_PING,
    T_PONG,
    T_WELCOME,
    Code,
    Scheme,
    Welcome,
    encode_close,
    encode_data,
    encode_error,
    encode_hello,
)

log = logging.getLogger("hbloop.client")

# gRPC's reconnect parameters start at 1 s; half that keeps a restart short for
# interactive use, while the 30 s cap bounds how long a client sits out an outage.
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_CAP = 30.0

# How long a TCP connect, and then the WELCOME, may take before the attempt counts
# as failed.
CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0

# Output a client may queue before it considers the server a slow consumer.
MAX_PENDING = 1024 * 1024

# Refusals that a retry cannot fix: the client stops instead of reconnecting.
FATAL_CODES = frozenset({Code.UNSUPPORTED_VERSION, Code.BAD_NAME})

# A newer connection with this client's name replaced it (protocol.md H8): reconnecting
# would evict that one in turn, and two clients with one name would take turns forever.
FINAL_CLOSE_CODES = frozenset({Code.TAKEN_OVER})


class Backoff:
    """Capped exponential back-off with full jitter."""

    def __init__(
        self,
        base: float = DEFAULT_BACKOFF_BASE,
        cap: float = DEFAULT_BACKOFF_CAP,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("back-off needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 62)  # keeps 2**attempt a sane float
        return self._rng() * ceiling

    def reset(self) -> None:
        self.attempt = 0


class Connection(Channel):
    """One connection attempt of a ``Client``."""

    __slots__ = ("client", "welcome", "_scheme_pings")

    def __init__(self, client: Client, sock: socket.socket) -> None:
        super().__init__(client.loop, sock, client.counters, DEFAULT_MAX_PAYLOAD, MAX_PENDING)
        self.client = client
        self.welcome: Welcome | None = None
        self._scheme_pings = False

    # --- connecting ------------------------------------------------------------

    def begin(self, address: tuple[str, int]) -> None:
        err = self.sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):
            self.lose(
                Disconnect(Reason.PEER_RESET, detail=f"connect: {errno.errorcode.get(err, err)}")
            )
            return
        self.loop.add_writer(self.fd, self._on_connected)
        self._arm(self.loop.now + CONNECT_TIMEOUT)

    def _on_connected(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.lose(
                Disconnect(Reason.PEER_RESET, detail=f"connect: {errno.errorcode.get(err, err)}")
            )
            return
        self.loop.remove_writer(self.fd)
        self.last_recv = self.loop.now
        self.start_reading()
        client = self.client
        if self.write(encode_hello(client.name, int(client.interval * 1000))):
            self._arm(self.loop.now + HANDSHAKE_TIMEOUT)

    # --- frames ----------------------------------------------------------------

    def frames_received(self, frames: list[Frame]) -> None:
        try:
            for ftype, payload in frames:
                if self.closing:
                    return
                if ftype == T_PING:
                    self.write(PONG_FRAME)
                elif ftype == T_PONG:
                    pass
                elif ftype == T_DATA:
                    if self.welcome is None:
                        raise RemoteProtocolError(Code.UNEXPECTED_FRAME, "DATA before WELCOME")
                    self.client.deliver(payload)
                elif ftype == T_WELCOME:
                    self._on_welcome(payload)
                elif ftype == T_CLOSE:
                    code = parse_close(payload)
                    self.lose(Disconnect(Reason.PEER_CLOSED, code))
                elif ftype == T_ERROR:
                    code, message = parse_error(payload)
                    self.lose(Disconnect(Reason.PEER_ERROR, code, message))
                else:
                    check_sender(ftype, Role.SERVER)
        except RemoteProtocolError as exc:
            self.protocol_violated(exc)

    def _on_welcome(self, payload: bytes) -> None:
        if self.welcome is not None:
            raise RemoteProtocolError(Code.UNEXPECTED_FRAME, "second WELCOME")
        welcome = parse_welcome(payload)
        self.welcome = welcome
        self._scheme_pings = welcome.scheme is Scheme.CLIENT
        self._arm(self.loop.now + welcome.interval_ms / 1000)
        self.client.established(self)

    def protocol_violated(self, error: RemoteProtocolError) -> None:
        disconnect = Disconnect(Reason.PROTOCOL_ERROR, error.code, error.message)
        self.finish(encode_error(error.code, error.message), 0.0)
        self.client.lost(self, disconnect)

    def connection_lost(self, disconnect: Disconnect) -> None:
        self.client.lost(self, disconnect)

    # --- the one timer -----------------------------------------------------------

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(when, self._on_deadline)

    def _on_deadline(self) -> None:
        self.timer = None
        welcome = self.welcome
        now = self.loop.now
        if welcome is None:
            self.lose(Disconnect(Reason.HANDSHAKE_TIMEOUT, detail="no WELCOME in time"))
            return
        timeout = welcome.timeout_ms / 1000
        due = self.last_recv + timeout
        if now >= due:
            # The server is presumed dead; the CLOSE tells it why if it is only slow.
            self.write(encode_close(Code.TIMEOUT))
            self.lose(
                Disconnect(
                    Reason.TIMEOUT, Code.TIMEOUT, f"server silent for {now - self.last_recv:.3f}s"
                )
            )
            return
        if self._scheme_pings:
            ping_at = self.ping_if_due(welcome.interval_ms / 1000)
            if ping_at is None:
                return
            due = min(due, ping_at)
        self.timer = self.loop.call_at(due, self._on_deadline)


class Client:
    """A reconnecting heartbeat client.

    Callbacks, all optional and run on the loop; an exception in one is logged and
    the client carries on:

    * ``on_welcome(welcome)`` after each successful handshake;
    * ``on_message(data)`` for each DATA frame;
    * ``on_disconnect(disconnect, retry_in)`` when a connection ends; ``retry_in`` is
      the back-off delay before the next attempt, or None if the client has stopped.
    """

    def __init__(
        self,
        host: str,
        port: int,
        name: str,
        *,
        interval: float = 0.0,
        loop: EventLoop | None = None,
        on_welcome: Callable[[Welcome], None] | None = None,
        on_message: Callable[[bytes], None] | None = None,
        on_disconnect: Callable[[Disconnect, float | None], None] | None = None,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        source_address: tuple[str, int] | None = None,
    ) -> None:
        raw = name.encode("utf-8")
        if not 1 <= len(raw) <= MAX_NAME_BYTES:
            raise LocalProtocolError(
                Code.BAD_NAME, f"name must be 1 to {MAX_NAME_BYTES} UTF-8 bytes"
            )
        if interval < 0 or interval * 1000 > 0xFFFFFFFF:
            raise LocalProtocolError(Code.MALFORMED, "interval out of range")
        self.host = host
        self.port = port
        self.name = name
        self.interval = interval
        self.loop = loop or EventLoop()
        self.on_welcome = on_welcome
        self.on_message = on_message
        self.on_disconnect = on_disconnect
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.source_address = source_address
        self.counters = IoCounters()
        self.connection: Connection | None = None
        #: Set once the client has stopped for good (closed, or refused for good).
        self.stopped: Disconnect | None = None
        self.connects = 0  # successful handshakes
        self._retry: Timer | None = None
        self._closing = False

    @property
    def welcome(self) -> Welcome | None:
        conn = self.connection
        return conn.welcome if conn is not None and not conn.closing else None

    def start(self) -> None:
        """Make the first connection attempt now."""
        self._connect()

    def send(self, data: bytes) -> bool:
        """Send DATA; False when not connected (nothing is queued across reconnects)."""
        conn = self.connection
        if conn is None or conn.welcome is None or conn.closing:
            return False
        return conn.write(encode_data(data))

    def close(self, code: Code = Code.NORMAL, linger: float = 2.0) -> None:
        """Send CLOSE, stop reconnecting, and end the connection cleanly."""
        self._closing = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        conn = self.connection
        if conn is not None and not conn.closing:
            conn.finish(encode_close(code), linger)
        self._stop(Disconnect(Reason.CLOSED_LOCALLY, code))

    @property
    def done(self) -> bool:
        """True once stopped and the socket is released."""
        return self.stopped is not None and (self.connection is None or self.connection.released)

    # --- attempts ----------------------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            family, socktype, proto, _, address = infos[0]
            sock = socket.socket(family, socktype, proto)
        except OSError as exc:
            self._schedule_retry(Disconnect(Reason.PEER_RESET, detail=str(exc)))
            return
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.source_address is not None:
                sock.bind(self.source_address)
        except OSError as exc:
            sock.close()
            self._schedule_retry(Disconnect(Reason.PEER_RESET, detail=str(exc)))
            return
        conn = Connection(self, sock)
        self.connection = conn
        conn.begin(address)

    def established(self, conn: Connection) -> None:
        self.connects += 1
        self.backoff.reset()
        if self.on_welcome is not None and conn.welcome is not None:
            call_guarded(log, "on_welcome", self.on_welcome, conn.welcome)

    def deliver(self, data: bytes) -> None:
        if self.on_message is not None:
            call_guarded(log, "on_message", self.on_message, data)

    def lost(self, conn: Connection, disconnect: Disconnect) -> None:
        if conn is not self.connection or self._closing:
            return
        if (disconnect.code in FATAL_CODES and disconnect.reason is Reason.PEER_ERROR) or (
            disconnect.code in FINAL_CLOSE_CODES and disconnect.reason is Reason.PEER_CLOSED
        ):
            self._stop(disconnect)
            return
        self._schedule_retry(disconnect)

    def _schedule_retry(self, disconnect: Disconnect) -> None:
        if not self.reconnect or self._closing:
            self._stop(disconnect)
            return
        delay = self.backoff.next_delay()
        self._retry = self.loop.call_later(delay, self._connect)
        if self.on_disconnect is not None:
            call_guarded(log, "on_disconnect", self.on_disconnect, disconnect, delay)

    def _stop(self, disconnect: Disconnect) -> None:
        if self.stopped is not None:
            return
        self.stopped = disconnect
        if self.on_disconnect is not None:
            call_guarded(log, "on_disconnect", self.on_disconnect, disconnect, None)
