"""The heartbeat client: handshake, the granted scheme, dead-server detection, reconnects.

A ``Client`` runs on an ``EventLoop`` like the server. It makes one ``Connection``
per attempt; when one ends for any reason but a final one (protocol.md R3), it waits
a full-jitter back-off (delay drawn uniformly from 0 to min(cap, base x 2^n)) and
tries again, so that thousands of clients dropped by one server restart do not come
back in lockstep. n goes back to 0 only after a connection that stayed OPEN for its
granted timeout (R2): a server that welcomes and refuses at once cannot make a
client spin. After CLOSE GOING_AWAY from a draining server whose WELCOME gave a
RECONNECT_WINDOW, the wait is the longer of that delay and a random one within the
window (R7). The limits of R4 to R6 (no token in plain text to a remote host, a floor
on the granted interval, no DATA over the server's maximum) are ``ClientBase``'s.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable

from hbloop.core.backoff import Backoff
from hbloop.core.credentials import REAUTH_RETRY, reauth_delay
from hbloop.core.names import name_problem
from hbloop.core.policy import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_PENDING,
    DEFAULT_MIN_INTERVAL,
    DEFAULT_PING_STRIKES,
    LINGER_SECONDS,
)
from hbloop.core.protocol import LocalProtocolError, RemoteProtocolError, token_problem
from hbloop.core.session import (
    NO_EVENTS,
    Closed,
    Disconnect,
    Events,
    Message,
    Opened,
    Reason,
    Reauthenticated,
    Role,
    Session,
    SessionConfig,
    State,
)
from hbloop.core.wire import (
    ABSOLUTE_MAX_PAYLOAD,
    DEFAULT_MAX_PAYLOAD,
    MAX_NAME_BYTES,
    MIN_MAX_PAYLOAD,
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

# A newer connection with this client's name replaced it (protocol.md H8): reconnecting
# would evict that one in turn, and two clients with one name would take turns forever.
FINAL_CLOSE_CODES = frozenset({Code.TAKEN_OVER})


def is_final(disconnect: Disconnect, opened: bool = False) -> bool:
    """Whether a client must stop rather than reconnect (protocol.md R3): a refusal that a
    retry cannot fix, a newer connection having taken its name over (reconnecting
    would evict that one, and so on forever), or a TLS check that failed before
    WELCOME (``opened``: this connection had its WELCOME). Resets and EOFs during the
    TLS handshake are the network's (``PEER_RESET``, ``PEER_CLOSED``), not final."""
    if disconnect.reason is Reason.PEER_ERROR:
        return disconnect.code in FATAL_ERRORS
    if disconnect.reason is Reason.TLS_ERROR:
        return not opened
    return disconnect.reason is Reason.PEER_CLOSED and disconnect.code in FINAL_CLOSE_CODES


def plaintext_token_allowed(host: str) -> bool:
    """Whether a HELLO token may go to ``host`` without TLS (R4): to a loopback address
    (127.0.0.0/8, ::1) or the name localhost (RFC 6761 reserves it for loopback), and
    nowhere else. Judged from the text alone, without a lookup: any other name may
    resolve anywhere."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# The signals with which Client.run() closes the client: Ctrl-C, and a service stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ClientConfigError(ValueError):
    """Settings a client cannot run with (R3): refused before any packet is sent. The
    message is one line."""


class PayloadTooLarge(ValueError):
    """DATA larger than the server accepts (R6), refused before it is sent; the
    connection is not affected. ``size`` and ``limit`` are in bytes."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"DATA of {size} bytes is over the server's maximum payload of {limit} bytes"
        )
        self.size = size
        self.limit = limit


DisconnectCallback = Callable[[Disconnect, float | None], None]

#: Where the HELLO token comes from: a fixed string, or a provider asked for the
#: current token before each connection attempt (rotation: a provider that reads a
#: file, or asks an identity service, hands out the newest). ``hbloop.aio.Client`` also
#: takes a provider that returns an awaitable. None from a provider: no token.
TokenProvider = Callable[[], str | None]
AsyncTokenProvider = Callable[[], str | Awaitable[str | None] | None]


class ClientBase:
    """What every hbloop client keeps and decides, whatever runs its I/O: the server,
    the name, the session configuration all its connections share, the HELLO token
    (fixed, or a provider's), the back-off and when to stop (``is_final``), the limits
    of protocol.md R4 to R6, the figures, and the callbacks ``on_welcome(welcome)`` and
    ``on_disconnect(disconnect, retry_in)``. ``Client`` (on an EventLoop) and
    ``hbloop.aio.Client`` (on asyncio) are made of it.

    Raises LocalProtocolError for a name, an interval or a token that a HELLO cannot
    carry, and ClientConfigError for settings R4 or R5 refuse.
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
        token: str | AsyncTokenProvider | None = None,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        trace: bool = False,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        peer_max_payload: int = DEFAULT_MAX_PAYLOAD,
        allow_plaintext_token: bool = False,
    ) -> None:
        raw = name.encode("utf-8")
        if not 1 <= len(raw) <= MAX_NAME_BYTES:
            raise LocalProtocolError(
                Code.BAD_NAME, f"name must be 1 to {MAX_NAME_BYTES} UTF-8 bytes"
            )
        problem = name_problem(name)
        if problem is not None:
            raise LocalProtocolError(Code.BAD_NAME, problem)
        if interval < 0 or interval * 1000 > U32_MAX:
            raise LocalProtocolError(Code.MALFORMED, "interval out of range")
        if not 0 <= min_interval * 1000 <= U32_MAX:
            raise ClientConfigError(f"min_interval {min_interval:g}s is out of range")
        if 0 < interval < min_interval:
            raise ClientConfigError(
                f"interval {interval:g}s is below min_interval {min_interval:g}s: "
                "its own grant would be refused"
            )
        if not MIN_MAX_PAYLOAD <= peer_max_payload <= ABSOLUTE_MAX_PAYLOAD:
            raise ClientConfigError(
                f"peer_max_payload {peer_max_payload} is not in "
                f"{MIN_MAX_PAYLOAD}..{ABSOLUTE_MAX_PAYLOAD} bytes"
            )
        if isinstance(token, str):
            self._check_token(token)
        if (
            token is not None
            and tls is None
            and not allow_plaintext_token
            and not plaintext_token_allowed(host)
        ):
            raise ClientConfigError(
                f"a token would go to {host} in plain text, readable by anyone on the "
                "path: use TLS, or allow_plaintext_token (--allow-plaintext-token)"
            )
        self.host = host
        self.port = port
        self.name = name
        self.interval = interval
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.source_address = source_address
        self.on_welcome = on_welcome
        self.on_disconnect = on_disconnect
        self.token = token
        #: Asked for the token before each attempt, when ``token`` is one.
        self.token_provider = None if token is None or isinstance(token, str) else token
        self.tls = tls
        self.server_hostname = server_hostname or host
        self.trace = trace
        self.min_interval_ms = round(min_interval * 1000)
        self.peer_max_payload = peer_max_payload
        #: The limit ``send`` enforces: a version 2 WELCOME's MAX_PAYLOAD, else the above.
        self.payload_limit = peer_max_payload
        self.counters = IoCounters()
        self.session_config = SessionConfig(
            Role.CLIENT,
            handshake_timeout=handshake_timeout,
            ping_strikes=DEFAULT_PING_STRIKES,
            linger=LINGER_SECONDS,
            hello=self._hello(token if isinstance(token, str) else None, PROTOCOL_VERSION),
            counters=self.counters,
        )
        #: Set once the client has stopped for good (closed, or refused for good).
        self.stopped: Disconnect | None = None
        #: Whether it stopped on a final ending (R3) rather than by request or because
        #: it does not reconnect.
        self.final = False
        self.connects = 0  # successful handshakes
        # When the current connection had its WELCOME, its granted timeout (R2), and
        # its RECONNECT_WINDOW, s (R7: applies to CLOSE GOING_AWAY).
        self._opened_at: float | None = None
        self._granted_timeout = 0.0
        self._reconnect_window = 0.0
        #: The credential the connection stands on: HELLO's, then the last AUTH's.
        self.current_token = token if isinstance(token, str) else None

    @staticmethod
    def _check_token(token: str) -> None:
        problem = token_problem(token.encode("utf-8"))
        if problem is not None:
            raise LocalProtocolError(Code.UNAUTHORIZED, problem)

    def _hello(self, token: str | None, version: int) -> bytes:
        return encode_hello(
            self.name,
            round(self.interval * 1000),
            version,
            token=token,
            max_payload=DEFAULT_MAX_PAYLOAD,
        )

    def use_token(self, token: str | None) -> None:
        """Make ``token`` the next connection's (a provider's answer, before each
        attempt). Raises LocalProtocolError for a token that a HELLO cannot carry."""
        if token is not None:
            self._check_token(token)
        # In the version spoken now: a fall-back to version 1 (H10) holds.
        self.session_config.hello = self._hello(token, self.session_config.version)
        self.current_token = token

    def reauth_delay(self, welcome: Welcome) -> float | None:
        """A6: seconds until the provider is asked for a token to offer in AUTH on
        this connection, or None: no provider, a server that takes no AUTH here (A1),
        or a token without ``exp``."""
        if self.token_provider is None or not welcome.reauth:
            return None
        return reauth_delay(self.current_token, time.time())

    def fresh_token(self, token: str | None) -> str | None:
        """The provider's answer at re-authentication time: the token to offer in AUTH
        (it becomes the next HELLO's too), or None if it is not a new one."""
        if token is None or token == self.current_token:
            return None
        self.use_token(token)
        return token

    def reauthenticated(self) -> None:
        log.info("reauthenticated as %s", self.name)

    def token_failed(self, exc: Exception) -> Disconnect:
        """The token provider raised: this attempt ends before connecting, and is
        retried with back-off (a file being rewritten, a service down for a moment)."""
        detail = exc.message if isinstance(exc, LocalProtocolError) else str(exc)
        log.warning("token provider failed: %s", detail or type(exc).__name__)
        return Disconnect(Reason.REFUSED, detail=f"token: {detail or type(exc).__name__}")

    def grant_refused(self, welcome: Welcome) -> RemoteProtocolError | None:
        """R5: the error that answers a WELCOME whose interval is below the floor."""
        if welcome.interval_ms >= self.min_interval_ms:
            return None
        return RemoteProtocolError(
            Code.MALFORMED,
            f"granted interval {welcome.interval_ms} ms is below this client's floor "
            f"of {self.min_interval_ms} ms",
        )

    def check_payload(self, data: bytes) -> None:
        """R6: raise PayloadTooLarge for DATA over the server's maximum."""
        if len(data) > self.payload_limit:
            raise PayloadTooLarge(len(data), self.payload_limit)

    def opened(self, welcome: Welcome, now: float) -> None:
        """A handshake succeeded, ``welcome`` received at ``now``; the back-off starts
        again from its base only once this connection has lasted its granted timeout
        (R2). ``now`` is the session's own stamp of the WELCOME (``last_recv``), the
        time its silence deadline counts from: a later reading of the clock would make
        a connection timed out at that deadline seem not to have lasted it."""
        self.connects += 1
        self._opened_at = now
        self._granted_timeout = welcome.timeout_ms / 1000
        self._reconnect_window = (welcome.reconnect_window_ms or 0) / 1000
        if welcome.max_payload is not None:  # version 2 says it (R6)
            self.payload_limit = welcome.max_payload
        if self.on_welcome is not None:
            call_guarded(log, "on_welcome", self.on_welcome, welcome)

    def _retry_delay(self, disconnect: Disconnect, now: float) -> float | None:
        """After ``disconnect``: how long to wait before the next attempt; or None,
        when the client does not reconnect or the end is final, and it has stopped."""
        opened_at, self._opened_at = self._opened_at, None
        if self.session_config.fall_back(disconnect):
            return 0.0  # a version 1 server: retry at once, in version 1 (H10)
        final = is_final(disconnect, opened=opened_at is not None)
        if not self.reconnect or final:
            self._stop(disconnect, final=final)
            return None
        if opened_at is not None and now - opened_at >= self._granted_timeout:
            self.backoff.reset()  # R2: this connection proved itself
        # R7: the hint of a draining server spreads its fleet's returns over its window.
        hinted = (
            opened_at is not None
            and disconnect.reason is Reason.PEER_CLOSED
            and disconnect.code == Code.GOING_AWAY
        )
        return self.backoff.next_delay(self._reconnect_window if hinted else 0.0)

    def _disconnected(self, disconnect: Disconnect, retry_in: float | None) -> None:
        if self.on_disconnect is not None:
            call_guarded(log, "on_disconnect", self.on_disconnect, disconnect, retry_in)

    def _stop(self, disconnect: Disconnect, final: bool = False) -> None:
        if self.stopped is not None:
            return
        self.stopped = disconnect
        self.final = final
        self._disconnected(disconnect, None)


class Client(ClientBase):
    """A reconnecting heartbeat client on an EventLoop.

    Callbacks, all optional and run on the loop; an exception in one is logged and
    the client carries on:

    * ``on_welcome(welcome)`` after each successful handshake;
    * ``on_message(data)`` for each DATA frame;
    * ``on_disconnect(disconnect, retry_in)`` when a connection ends; ``retry_in`` is
      the back-off delay before the next attempt, or None if the client has stopped.

    ``tls`` (``hbloop.net.tls.client_context(ca, cert, key)``) speaks TLS, verifying the
    server's certificate for ``server_hostname`` (default: ``host``). ``token`` is the
    credential HELLO carries (a JWT for a server that checks them): a string, or a
    provider (``TokenProvider``) asked before each attempt, so that a rotated token is
    used at the next connection. Without TLS a token goes only to a loopback ``host``
    unless ``allow_plaintext_token`` (R4). ``min_interval`` is the floor on the granted
    interval (R5); ``peer_max_payload`` the server's maximum payload, above which
    ``send`` raises PayloadTooLarge (R6). With ``trace``, every frame in and out is
    logged at debug level (``hbloop.net.trace``).
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
        token: str | TokenProvider | None = None,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        peer_max_payload: int = DEFAULT_MAX_PAYLOAD,
        allow_plaintext_token: bool = False,
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
            tls=tls,
            server_hostname=server_hostname,
            trace=trace,
            min_interval=min_interval,
            peer_max_payload=peer_max_payload,
            allow_plaintext_token=allow_plaintext_token,
        )
        self.loop = loop or EventLoop()
        self.on_message = on_message
        self.max_pending = DEFAULT_MAX_PENDING
        #: The current connection attempt's channel, once one was made.
        self.connection: Channel[None] | None = None
        self._retry: Timer | None = None
        self._reauth: Timer | None = None
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
        """Send DATA; False when not connected (nothing is queued across reconnects).
        Raises PayloadTooLarge for DATA over ``peer_max_payload``, connected or not."""
        self.check_payload(data)
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
        if self.token_provider is not None:
            try:
                token = self.token_provider()
                if not isinstance(token, str | None):
                    raise TypeError("an async token provider needs hbloop.aio.Client")
                self.use_token(token)
            except Exception as exc:  # the application's provider: retried, as a reset is
                self._schedule_retry(self.token_failed(exc))
                return
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
                welcome = event.grant.welcome
                refusal = self.grant_refused(welcome)
                if refusal is None:
                    self.opened(welcome, channel.session.last_recv)
                    self._arm_reauth(self.reauth_delay(welcome))
                else:
                    channel.apply(channel.session.protocol_error(refusal, self.loop.now))
            elif isinstance(event, Reauthenticated):
                self.reauthenticated()
                self._arm_reauth(self.reauth_delay(channel.session.grant.welcome))
            elif isinstance(event, Closed) and channel is self.connection:
                self._arm_reauth(None)
                if not self._closing:
                    self._schedule_retry(event.disconnect)

    def _arm_reauth(self, delay: float | None) -> None:
        if self._reauth is not None:
            self._reauth.cancel()
        self._reauth = None if delay is None else self.loop.call_later(delay, self._renew)

    def _renew(self) -> None:
        """A6: offer the provider's token in AUTH; ask again later if it has no new
        one yet (or failed: the server's A5 close is what ends this, not the client)."""
        self._reauth = None
        conn = self.connection
        if conn is None or conn.session.state is not State.OPEN or self.token_provider is None:
            return
        try:
            token = self.token_provider()
            if not isinstance(token, str | None):
                raise TypeError("an async token provider needs hbloop.aio.Client")
            fresh = self.fresh_token(token)
        except Exception as exc:  # the application's provider: asked again later
            self.token_failed(exc)
            fresh = None
        if fresh is None:
            self._arm_reauth(REAUTH_RETRY)
            return
        conn.apply((conn.session.send_auth(fresh, self.loop.now), NO_EVENTS))

    def channel_released(self, channel: Channel[None]) -> None:
        """Nothing to do: ``done`` looks at the connection."""

    def tls_handshake(self, done: bool) -> None:
        """The client keeps no TLS figures: a failure ends the attempt (``tls_error``)."""

    def _schedule_retry(self, disconnect: Disconnect) -> None:
        if self._closing:
            self._stop(disconnect)
            return
        delay = self._retry_delay(disconnect, self.loop.now)
        if delay is not None:
            self._retry = self.loop.call_later(delay, self._connect)
            self._disconnected(disconnect, delay)
