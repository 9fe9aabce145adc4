"""The heartbeat client: handshake, the granted scheme, dead-server detection, reconnects.

A ``Client`` runs on an ``EventLoop`` like the server. It makes one ``Connection``
per attempt; when one ends for any reason but a refusal that retrying cannot fix,
it waits a full-jitter back-off (delay drawn uniformly from 0 to min(cap, base x 2^n))
and tries again, so that thousands of clients dropped by one server restart do not
come back in lockstep.
"""

from __future__ import annotations

import logging
import signal
import socket
import ssl
from collections.abc import Callable

from hbloop.core.backoff import Backoff
from hbloop.core.policy import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_PENDING,
    DEFAULT_PING_STRIKES,
    LINGER_SECONDS,
)
from hbloop.core.protocol import LocalProtocolError, token_problem
from hbloop.core.session import (
    Closed,
    Disconnect,
    Events,
    Message,
    Opened,
    Reason,
    Role,
    Session,
    SessionConfig,
    State,
)
from hbloop.core.wire import (
    DEFAULT_MAX_PAYLOAD,
    MAX_NAME_BYTES,
    PROTOCOL_VERSION,
    U32_MAX,
    Code,
    Welcome,
    encode_hello,
)
from hbloop.net.channel import Channel, make_channel
from hbloop.net.counters import IoCounters
from hbloop.net.loop import EventLoop, Timer, call_guarded
from hbloop.net.sockets import apply_tcp_options
from hbloop.net.tls import TlsLayer
from hbloop.net.trace import Tracer

log = logging.getLogger("hbloop.client")


# Refusals that a retry with the same HELLO cannot fix (H8): the client stops.
FATAL_ERRORS = frozenset(
    {Code.UNSUPPORTED_VERSION, Code.BAD_NAME, Code.UNAUTHORIZED, Code.UNSUPPORTED_PROPERTY}
)


def is_final(disconnect: Disconnect) -> bool:
    """Whether a client must stop rather than reconnect (H8, C2): a refusal that a
    retry cannot fix, or a newer connection having taken its name over (reconnecting
    would evict that one, and so on forever)."""
    if disconnect.reason is Reason.PEER_ERROR:
        return disconnect.code in FATAL_ERRORS
    return disconnect.reason is Reason.PEER_CLOSED and disconnect.code in FINAL_CLOSE_CODES


# The signals with which Client.run() closes the client: Ctrl-C, and a service stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# A newer connection with this client's name replaced it (protocol.md H8): reconnecting
# would evict that one in turn, and two clients with one name would take turns forever.
FINAL_CLOSE_CODES = frozenset({Code.TAKEN_OVER})


DisconnectCallback = Callable[[Disconnect, float | None], None]


class ClientBase:
    """What every hbloop client keeps and decides, whatever runs its I/O: the server,
    the name, the session configuration all its connections share, the back-off and
    when to stop (``is_final``), the figures, and the callbacks ``on_welcome(welcome)``
    and ``on_disconnect(disconnect, retry_in)``. ``Client`` (on an EventLoop) and
    ``hbloop.aio.Client`` (on asyncio) are made of it.

    Raises LocalProtocolError for a name, an interval or a token that a HELLO cannot carry.
    """

    def __init__(
        self,
        host: str,
        port: int,
        name: str,
        *,
        interval: float,
        reconnect: bool,
        backoff: Backoff | None,
        source_address: tuple[str, int] | None,
        handshake_timeout: float,
        on_welcome: Callable[[Welcome], None] | None,
        on_disconnect: DisconnectCallback | None,
        token: str | None = None,
    ) -> None:
        raw = name.encode("utf-8")
        if not 1 <= len(raw) <= MAX_NAME_BYTES:
            raise LocalProtocolError(
                Code.BAD_NAME, f"name must be 1 to {MAX_NAME_BYTES} UTF-8 bytes"
            )
        if interval < 0 or interval * 1000 > U32_MAX:
            raise LocalProtocolError(Code.MALFORMED, "interval out of range")
        if token is not None:
            problem = token_problem(token.encode("utf-8"))
            if problem is not None:
                raise LocalProtocolError(Code.UNAUTHORIZED, problem)
        self.host = host
        self.port = port
        self.name = name
        self.interval = interval
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.source_address = source_address
        self.on_welcome = on_welcome
        self.on_disconnect = on_disconnect
        self.counters = IoCounters()
        self.session_config = SessionConfig(
            Role.CLIENT,
            handshake_timeout=handshake_timeout,
            ping_strikes=DEFAULT_PING_STRIKES,
            linger=LINGER_SECONDS,
            hello=encode_hello(
                name,
                round(interval * 1000),
                PROTOCOL_VERSION,
                token=token,
                max_payload=DEFAULT_MAX_PAYLOAD,
            ),
            counters=self.counters,
        )
        #: Set once the client has stopped for good (closed, or refused for good).
        self.stopped: Disconnect | None = None
        self.connects = 0  # successful handshakes

    def opened(self, welcome: Welcome) -> None:
        """A handshake succeeded: the back-off starts again from its base."""
        self.connects += 1
        self.backoff.reset()
        if self.on_welcome is not None:
            call_guarded(log, "on_welcome", self.on_welcome, welcome)

    def _retry_delay(self, disconnect: Disconnect) -> float | None:
        """After ``disconnect``: how long to wait before the next attempt; or None,
        when the client does not reconnect or the end is final, and it has stopped."""
        if self.session_config.fall_back(disconnect):
            return 0.0  # a version 1 server: retry at once, in version 1 (H10)
        if not self.reconnect or is_final(disconnect):
            self._stop(disconnect)
            return None
        return self.backoff.next_delay()

    def _disconnected(self, disconnect: Disconnect, retry_in: float | None) -> None:
        if self.on_disconnect is not None:
            call_guarded(log, "on_disconnect", self.on_disconnect, disconnect, retry_in)

    def _stop(self, disconnect: Disconnect) -> None:
        if self.stopped is not None:
            return
        self.stopped = disconnect
        self._disconnected(disconnect, None)


class Client(ClientBase):
    """A reconnecting heartbeat client on an EventLoop.

    Callbacks, all optional and run on the loop; an exception in one is logged and
    the client carries on:

    * ``on_welcome(welcome)`` after each successful handshake;
    * ``on_message(data)`` for each DATA frame;
    * ``on_disconnect(disconnect, retry_in)`` when a connection ends; ``retry_in`` is
      the back-off delay before the next attempt, or None if the client has stopped.

    ``tls`` (``hbloop.net.tls.client_context``) speaks TLS, verifying the server's
    certificate for ``server_hostname`` (default: ``host``); ``token`` is the credential
    HELLO carries (a JWT for a server that checks them). With ``trace``, every frame in
    and out is logged at debug level (``hbloop.net.trace``).
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
        on_disconnect: DisconnectCallback | None = None,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        source_address: tuple[str, int] | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        trace: bool = False,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(
            host,
            port,
            name,
            interval=interval,
            reconnect=reconnect,
            backoff=backoff,
            source_address=source_address,
            handshake_timeout=handshake_timeout,
            on_welcome=on_welcome,
            on_disconnect=on_disconnect,
            token=token,
        )
        self.loop = loop or EventLoop()
        self.on_message = on_message
        self.tls = tls
        self.server_hostname = server_hostname or host
        self.trace = trace
        self.max_pending = DEFAULT_MAX_PENDING
        #: The current connection attempt's channel, once one was made.
        self.connection: Channel[None] | None = None
        self._retry: Timer | None = None
        self._closing = False

    @property
    def welcome(self) -> Welcome | None:
        conn = self.connection
        if conn is None or conn.session.state is not State.OPEN:
            return None
        return conn.session.grant.welcome

    def start(self) -> None:
        """Make the first connection attempt now."""
        self._connect()

    def send(self, data: bytes) -> bool:
        """Send DATA; False when not connected (nothing is queued across reconnects)."""
        conn = self.connection
        return conn is not None and conn.send(data)

    def close(self, code: Code = Code.NORMAL, linger: float | None = None) -> None:
        """Send CLOSE, stop reconnecting, and end the connection cleanly."""
        self._closing = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        conn = self.connection
        if conn is not None:
            conn.close(code, linger=linger)
        self._stop(Disconnect(Reason.CLOSED_LOCALLY, code))

    def run(self, stop_signals: tuple[int, ...] = STOP_SIGNALS) -> Disconnect:
        """Start the client and run its loop until it stops for good; return why.

        Each of ``stop_signals`` closes the client as ``close()`` does (CLOSE NORMAL,
        then the connection ends cleanly), so that Ctrl-C ends a program that embeds
        it without a traceback. The signal handlers are removed before returning.
        """
        for signum in stop_signals:
            self.loop.add_signal_handler(signum, self._stop_signalled)
        try:
            self.start()
            while not self.done:
                self.loop.run_once()
        finally:
            for signum in stop_signals:
                self.loop.remove_signal_handler(signum)
        assert self.stopped is not None
        return self.stopped

    def _stop_signalled(self) -> None:
        if self.stopped is None:
            self.close()

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
            apply_tcp_options(sock, self.max_pending)
            if self.source_address is not None:
                sock.bind(self.source_address)
        except OSError as exc:
            sock.close()
            self._schedule_retry(Disconnect(Reason.PEER_RESET, detail=str(exc)))
            return
        tls = self.tls
        conn = make_channel(
            self,
            None,
            sock,
            Session.client(self.session_config, self.loop.now),
            tls=None
            if tls is None
            else TlsLayer(tls, server_side=False, server_hostname=self.server_hostname),
            tracer=Tracer(f"{self.host}:{self.port}") if self.trace else None,
        )
        self.connection = conn
        conn.connect(address)

    # --- what the connection's channel reports ----------------------------------

    def channel_events(self, channel: Channel[None], events: Events) -> None:
        for event in events:
            if isinstance(event, Message):
                if channel.fd < 0:
                    return  # an earlier callback's send found the connection gone
                if self.on_message is not None:
                    call_guarded(log, "on_message", self.on_message, event.data)
            elif isinstance(event, Opened):
                self.opened(event.grant.welcome)
            elif isinstance(event, Closed) and channel is self.connection and not self._closing:
                self._schedule_retry(event.disconnect)

    def channel_released(self, channel: Channel[None]) -> None:
        """Nothing to do: ``done`` looks at the connection."""

    def tls_handshake(self, done: bool) -> None:
        """The client keeps no TLS figures: a failure ends the attempt (``tls_error``)."""

    def _schedule_retry(self, disconnect: Disconnect) -> None:
        if self._closing:
            self._stop(disconnect)
            return
        delay = self._retry_delay(disconnect)
        if delay is not None:
            self._retry = self.loop.call_later(delay, self._connect)
            self._disconnected(disconnect, delay)
