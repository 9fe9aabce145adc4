"""The heartbeat server: accepts peers, runs the handshake, tracks liveness.

Liveness costs no timer operation per heartbeat. Each peer owns one timer; a frame
only overwrites ``last_recv``. When the timer comes due it compares the clock with
``last_recv + timeout`` and either closes the peer or re-arms itself for the new
deadline, so a peer that heartbeats every interval costs about one heap push per
timeout period. In the server-pings scheme the same timer also sends the PINGs,
which traffic in both directions postpones (``policy.next_ping_at``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hbloop.channel import NEVER, Channel, Disconnect, Reason
from hbloop.loop import EventLoop, call_guarded
from hbloop.netutil import apply_tcp_options, make_listener
from hbloop.policy import DEFAULT_BACKLOG, ServerPolicy
from hbloop.protocol import (
    Frame,
    RemoteProtocolError,
    Role,
    check_before_hello,
    check_sender,
    parse_close,
    parse_error,
    parse_hello,
)
from hbloop.stats import ServerStats
from hbloop.wire import (
    PONG_FRAME,
    PROTOCOL_VERSION,
    T_CLOSE,
    T_DATA,
    T_ERROR,
    T_HELLO,
    T_PING,
    T_PONG,
    Code,
    Scheme,
    Welcome,
    encode_close,
    encode_data,
    encode_error,
    encode_welcome,
)

if TYPE_CHECKING:
    from hbloop.presence import Member, Presence

log = logging.getLogger("hbloop.server")

# Accept at most this many connections per wake-up (Redis uses the same figure), so
# that a connection storm cannot starve heartbeats of already connected peers.
MAX_ACCEPTS_PER_WAKEUP = 1000

# When accept() fails for lack of descriptors and the spare one cannot be reopened,
# stop accepting for this long rather than spin on a listener that stays readable.
EMFILE_PAUSE = 1.0

# Errors from accept() that concern only the connection being accepted.
_TRANSIENT_ACCEPT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# Distinct interval requests whose grants are cached. Clients of one fleet ask for
# a handful of intervals; the cap keeps hostile requests from growing the cache.
MAX_CACHED_GRANTS = 256

# Distinct peer addresses whose strings are shared; bounded for the same reason.
MAX_INTERNED_HOSTS = 4096


ConnectCallback = Callable[["Peer"], None]
MessageCallback = Callable[["Peer", bytes], None]
DisconnectCallback = Callable[["Peer", Disconnect], None]


@dataclass(frozen=True, slots=True)
class Grant:
    """The outcome of a handshake; one object shared by every peer granted the same."""

    interval: float  # s
    timeout: float  # s
    ping_floor: float  # s; a PING sooner than this after the previous one is a strike
    welcome: bytes  # the WELCOME frame announcing it


_NO_GRANT = Grant(0.0, 0.0, 0.0, b"")


class Peer(Channel):
    """One accepted connection, as the application sees it.

    Public, read-only: ``name`` (None until HELLO), ``address``, ``connected_at``
    (wall clock), ``interval`` and ``timeout`` (granted, seconds), ``idle`` and
    ``last_heard``. Methods: ``send(data)`` and ``close(code)``.
    """

    __slots__ = (
        "server",
        "host",
        "port",
        "name",
        "open",
        "grant",
        "member",
        "_connected",
        "_last_ping_in",
        "_strikes",
    )

    def __init__(self, server: Server, sock: socket.socket, host: str, port: int) -> None:
        policy = server.policy
        super().__init__(server.loop, sock, server.stats, policy.max_payload, policy.max_pending)
        self.server = server
        # Host and port apart rather than an address tuple, and the loop's clock rather
        # than a float of our own: both are shared objects, which saves about 100 bytes
        # per connection.
        self.host = host
        self.port = port
        self.name: str | None = None
        self.open = False
        self.grant = _NO_GRANT
        self.member: Member | None = None  # its handle in server.presence
        self._connected = self.loop.now
        self._last_ping_in = NEVER
        self._strikes = 0

    # --- the application's view ----------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def age(self) -> float:
        """Seconds since the connection was accepted."""
        return time.monotonic() - self._connected

    @property
    def connected_at(self) -> float:
        """Wall-clock time the connection was accepted."""
        return time.time() - self.age

    @property
    def interval(self) -> float:
        """The granted heartbeat interval, s (0 before the handshake)."""
        return self.grant.interval

    @property
    def timeout(self) -> float:
        """The granted timeout, s (0 before the handshake)."""
        return self.grant.timeout

    @property
    def idle(self) -> float:
        """Seconds since the last complete frame from this peer."""
        return self.loop.now - self.last_recv

    @property
    def last_heard(self) -> float:
        """Wall-clock time of the last complete frame from this peer."""
        return time.time() - (time.monotonic() - self.last_recv)

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    def send(self, data: bytes) -> bool:
        """Send application DATA; False if the peer is gone or closing."""
        if not self.open or self.closing:
            return False
        return self.write(encode_data(data))

    def close(self, code: Code = Code.NORMAL) -> None:
        """Send CLOSE with ``code`` and end the connection."""
        self.server.end(self, Disconnect(Reason.CLOSED_LOCALLY, code), encode_close(code))

    def evict(self, code: Code, message: str) -> None:
        """End the connection at presence's request: CLOSE for TAKEN_OVER (its client
        must not reconnect), ERROR for a refusal such as NAME_TAKEN."""
        if code is Code.TAKEN_OVER:
            disconnect = Disconnect(Reason.CLOSED_LOCALLY, code, message)
            self.server.end(self, disconnect, encode_close(code))
        else:
            self.server.refuse(self, code, message)

    # --- frames ---------------------------------------------------------------

    def frames_received(self, frames: list[Frame]) -> None:
        try:
            for ftype, payload in frames:
                if self.closing:
                    return
                if not self.open:
                    self._handshake(ftype, payload)
                elif ftype == T_PING:
                    self._on_ping()
                elif ftype == T_PONG:
                    self.server.stats.heartbeats += 1
                elif ftype == T_DATA:
                    self.server.deliver(self, payload)
                else:
                    self._on_control(ftype, payload)
        except RemoteProtocolError as exc:
            self.protocol_violated(exc)

    def _on_ping(self) -> None:
        server = self.server
        server.stats.heartbeats += 1
        now = self.loop.now
        if now - self._last_ping_in < self.grant.ping_floor:
            self._strikes += 1
            if self._strikes >= server.policy.ping_strikes:
                raise RemoteProtocolError(
                    Code.TOO_MANY_PINGS,
                    f"{self._strikes} PINGs closer than half the {self.interval:g}s interval",
                )
        else:
            self._strikes = 0
        self._last_ping_in = now
        self.write(PONG_FRAME)

    def _on_control(self, ftype: int, payload: bytes) -> None:
        if ftype == T_CLOSE:
            self.lose(Disconnect(Reason.PEER_CLOSED, parse_close(payload)))
        elif ftype == T_ERROR:
            code, message = parse_error(payload)
            self.lose(Disconnect(Reason.PEER_ERROR, code, message))
        elif ftype == T_HELLO:
            raise RemoteProtocolError(Code.DUPLICATE_HELLO, "HELLO after the handshake")
        else:
            check_sender(ftype, Role.CLIENT)

    def _handshake(self, ftype: int, payload: bytes) -> None:
        check_before_hello(ftype)
        hello = parse_hello(payload)
        server = self.server
        if server.stats.connections >= server.policy.max_connections:
            server.refuse(self, Code.SERVER_FULL, f"{server.policy.max_connections} connections")
            return
        if server.presence is not None:
            refusal = server.presence.check(hello.name)
            if refusal is not None:
                server.refuse(self, refusal, f"{hello.name} is already connected")
                return
        self.grant = grant = server.grant_for(hello.interval_ms)
        self.name = hello.name
        if not self.write(grant.welcome):
            return
        self.open = True
        # The first check: the timeout, or the first PING when the server pings.
        first = grant.interval if server.policy.scheme is Scheme.SERVER else grant.timeout
        due = self.loop.now + first
        timer = self.timer
        if timer is None or timer > due:  # else the handshake timer comes first anyway
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(due, self.on_deadline)
        server.admit(self)

    def protocol_violated(self, error: RemoteProtocolError) -> None:
        self.server.end(
            self,
            Disconnect(Reason.PROTOCOL_ERROR, error.code, error.message),
            encode_error(error.code, error.message),
        )

    def connection_lost(self, disconnect: Disconnect) -> None:
        self.server.report(self, disconnect)

    def release(self) -> None:
        super().release()
        self.server.forget(self)

    # --- the one timer -------------------------------------------------------

    def on_deadline(self) -> None:
        self.timer = None
        now = self.loop.now
        server = self.server
        if not self.open:
            server.end(
                self,
                Disconnect(Reason.HANDSHAKE_TIMEOUT, Code.HANDSHAKE_TIMEOUT),
                encode_close(Code.HANDSHAKE_TIMEOUT),
            )
            return
        grant = self.grant
        due = self.last_recv + grant.timeout
        if now >= due:
            server.end(
                self,
                Disconnect(Reason.TIMEOUT, Code.TIMEOUT, f"silent for {now - self.last_recv:.3f}s"),
                encode_close(Code.TIMEOUT),
            )
            return
        if server.policy.scheme is Scheme.SERVER:
            ping_at = self.ping_if_due(grant.interval)
            if ping_at is None:
                return
            due = min(due, ping_at)
        self.timer = self.loop.call_at(due, self.on_deadline)


class Server:
    """An hbloop server on an EventLoop.

    Callbacks (all optional) run on the loop; an exception in one is logged and the
    server carries on:

    * ``on_connect(peer)`` after a successful handshake;
    * ``on_message(peer, data)`` for each DATA frame;
    * ``on_disconnect(peer, disconnect)`` once for each peer that had connected.

    ``presence`` (optional, also settable after ``start()``) is told of every peer that
    connects and leaves, and may refuse or evict one by name (``hbloop.presence``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        policy: ServerPolicy,
        *,
        on_connect: ConnectCallback | None = None,
        on_message: MessageCallback | None = None,
        on_disconnect: DisconnectCallback | None = None,
        loop: EventLoop | None = None,
        backlog: int = DEFAULT_BACKLOG,
        reuse_port: bool = False,
        presence: Presence | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.policy = policy
        self.on_connect = on_connect
        self.on_message = on_message
        self.on_disconnect = on_disconnect
        self.loop = loop or EventLoop()
        self.backlog = backlog
        self.reuse_port = reuse_port
        self.presence = presence
        self.stats = ServerStats()
        self.started_at = time.time()
        self._live: set[Peer] = set()  # every unreleased peer, handshaken or not
        # requested interval_ms -> its Grant, shared by every peer that asked the same.
        self._grants: dict[int, Grant] = {}
        # Peer host strings are interned: thousands of peers share a few addresses.
        self._hosts: dict[str, str] = {}
        self._listener: socket.socket | None = None
        self._spare_fd: int | None = None
        self._stopping = False
        self._last_shed_log = float("-inf")

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Bind and listen; return the bound address (useful with port 0)."""
        self._listener = make_listener(self.host, self.port, self.backlog, self.reuse_port)
        self._spare_fd = os.open(os.devnull, os.O_RDONLY)
        self.loop.add_reader(self._listener.fileno(), self._accept_connections)
        address = self._listener.getsockname()
        self.port = address[1]
        return address[0], address[1]

    def serve_forever(self, install_signal_handlers: bool = True) -> None:
        """Run until ``shutdown()`` completes; SIGINT/SIGTERM call it."""
        if self._listener is None:
            self.start()
        if install_signal_handlers:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.loop.add_signal_handler(signum, self.shutdown)
        try:
            self.loop.run_forever()
        finally:
            self._close_listener()
            if self._spare_fd is not None:
                os.close(self._spare_fd)
                self._spare_fd = None

    def shutdown(self) -> None:
        """Stop gracefully: CLOSE(GOING_AWAY) to every peer, flush, then stop the loop.

        A second call gives up on flushing and stops at once.
        """
        if self._stopping:
            log.warning("second stop request: closing %d connections now", len(self._live))
            for peer in list(self._live):
                peer.release()
            self.loop.stop()
            return
        self._stopping = True
        self._close_listener()
        grace = self.policy.shutdown_grace
        log.info("shutting down: closing %d connections (grace %.1fs)", len(self._live), grace)
        for peer in list(self._live):
            self.end(
                peer,
                Disconnect(Reason.SHUTDOWN, Code.GOING_AWAY),
                encode_close(Code.GOING_AWAY),
                grace,
            )
        self.loop.call_later(grace, self._grace_expired)
        self._stop_if_drained()

    def _grace_expired(self) -> None:
        if self._live:
            log.warning("grace period over: dropping %d connections", len(self._live))
            for peer in list(self._live):
                peer.release()
        self.loop.stop()

    def _stop_if_drained(self) -> None:
        if self._stopping and not self._live:
            self.loop.stop()

    def _close_listener(self) -> None:
        if self._listener is not None:
            self.loop.forget_fd(self._listener.fileno())
            self._listener.close()
            self._listener = None

    # --- the application's view ------------------------------------------------

    @property
    def peers(self) -> list[Peer]:
        """Peers past the handshake and not closing."""
        return [peer for peer in self._live if peer.open and not peer.closing]

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    # --- accepting -------------------------------------------------------------

    def _accept_connections(self) -> None:
        listener = self._listener
        assert listener is not None
        for _ in range(MAX_ACCEPTS_PER_WAKEUP):
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._shed_connections(exc)
                    return
                if exc.errno in _TRANSIENT_ACCEPT_ERRNOS:
                    continue
                # Unexpected: keep serving the connected peers, retry accepting later.
                log.error("accept failed: %s; pausing accepts for %.0fs", exc, EMFILE_PAUSE)
                self._pause_accepting()
                return
            self._adopt(sock, address)

    def _adopt(self, sock: socket.socket, address: tuple[str, int]) -> None:
        try:
            sock.setblocking(False)
            apply_tcp_options(sock, self.policy.tcp_keepalive, self.policy.tcp_user_timeout)
        except OSError:  # reset before we got to it
            sock.close()
            return
        self.stats.accepted += 1
        host = self._hosts.get(address[0], address[0])
        if len(self._hosts) < MAX_INTERNED_HOSTS:
            self._hosts.setdefault(host, host)
        peer = Peer(self, sock, host, address[1])
        self._live.add(peer)
        peer.start_reading()
        peer.timer = self.loop.call_at(
            self.loop.now + self.policy.handshake_timeout, peer.on_deadline
        )

    def _shed_connections(self, exc: OSError) -> None:
        """Out of descriptors: accept-and-close what is queued, as libev/libuv do.

        Linux keeps a connection we cannot accept in the queue and the listener stays
        readable, so doing nothing would spin the loop at 100% CPU. The spare
        descriptor is given up to make room for each accept.
        """
        shed = 0
        listener = self._listener
        assert listener is not None
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
            refusal = encode_error(Code.SERVER_FULL, "out of file descriptors")
            for _ in range(MAX_ACCEPTS_PER_WAKEUP):
                try:
                    sock, _address = listener.accept()
                except OSError:
                    break
                try:
                    sock.setblocking(False)
                    sock.send(refusal)
                except OSError:
                    pass
                sock.close()
                shed += 1
            with contextlib.suppress(OSError):
                self._spare_fd = os.open(os.devnull, os.O_RDONLY)
        self.stats.shed += shed
        if self._spare_fd is None:
            # Still no descriptor to spare: stop watching the listener for a while.
            self._pause_accepting()
        now = self.loop.now
        if now - self._last_shed_log >= 1.0:
            self._last_shed_log = now
            log.warning("%s: shed %d connections (%d open)", exc.strerror, shed, len(self._live))

    def _pause_accepting(self) -> None:
        assert self._listener is not None
        self.loop.remove_reader(self._listener.fileno())
        self.loop.call_later(EMFILE_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if self._listener is None:
            return
        if self._spare_fd is None:
            try:
                self._spare_fd = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                self.loop.call_later(EMFILE_PAUSE, self._resume_accepting)
                return
        self.loop.add_reader(self._listener.fileno(), self._accept_connections)

    # --- peer lifecycle (called by Peer) ---------------------------------------

    def grant_for(self, requested_ms: int) -> Grant:
        """What a client asking for ``requested_ms`` gets; shared by all who asked so."""
        grant = self._grants.get(requested_ms)
        if grant is None:
            interval_ms, timeout_ms = self.policy.grant(requested_ms)
            welcome = Welcome(PROTOCOL_VERSION, self.policy.scheme, interval_ms, timeout_ms)
            interval = interval_ms / 1000
            grant = Grant(
                interval,
                timeout_ms / 1000,
                self.policy.ping_floor(interval),
                encode_welcome(welcome),
            )
            if len(self._grants) < MAX_CACHED_GRANTS:
                self._grants[requested_ms] = grant
        return grant

    def admit(self, peer: Peer) -> None:
        stats = self.stats
        stats.connections += 1
        if stats.connections > stats.peak:
            stats.peak = stats.connections
        log.info(
            "connect %s name=%s interval=%gs timeout=%gs",
            peer.label,
            peer.name,
            peer.interval,
            peer.timeout,
        )
        if self.presence is not None:
            assert peer.name is not None
            peer.member = self.presence.joined(peer.name, peer.label, peer.connected_at, peer.evict)
        if self.on_connect is not None:
            call_guarded(log, "on_connect", self.on_connect, peer)

    def deliver(self, peer: Peer, payload: bytes) -> None:
        if self.on_message is not None:
            call_guarded(log, "on_message", self.on_message, peer, payload)

    def refuse(self, peer: Peer, code: Code, message: str) -> None:
        self.end(peer, Disconnect(Reason.REFUSED, code, message), encode_error(code, message))

    def end(
        self, peer: Peer, disconnect: Disconnect, last_frame: bytes, linger: float | None = None
    ) -> None:
        """Report ``disconnect`` and close ``peer`` after sending ``last_frame``."""
        if peer.closing:
            return
        self.report(peer, disconnect)
        peer.finish(last_frame, self.policy.linger if linger is None else linger)

    def report(self, peer: Peer, disconnect: Disconnect) -> None:
        self.stats.closed[disconnect.reason.value] += 1
        log.info(
            "disconnect %s name=%s age=%.1fs reason=%s",
            peer.label,
            peer.name or "-",
            peer.age,
            disconnect,
        )
        if peer.open:
            peer.open = False
            self.stats.connections -= 1
            if peer.member is not None:
                assert self.presence is not None
                self.presence.left(peer.member, disconnect.reason.value)
                peer.member = None
            if self.on_disconnect is not None:
                call_guarded(log, "on_disconnect", self.on_disconnect, peer, disconnect)

    def forget(self, peer: Peer) -> None:
        self._live.discard(peer)
        if self._stopping:
            self._stop_if_drained()
