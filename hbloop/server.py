"""The heartbeat server: accepts peers, runs their sessions, tracks liveness.

Each accepted socket becomes a ``Peer``, the application's handle on it, whose
``hbloop.net.channel.Channel`` (the I/O shell) drives a server-side
``hbloop.core.session.Session``, which implements protocol.md. The server owns what
the protocol leaves to it: admission (credentials, then capacity, then duplicate
names), the grants, the statistics, the log lines and the application's callbacks;
its channels report to it (``channel_events``).

With a TLS context each channel holds a ``hbloop.net.tls.TlsLayer``, after a
per-process rate limit on new handshakes; the TLS handshake runs inside the session's
handshake deadline. With ``trace`` each holds a ``hbloop.net.trace.Tracer``.

Liveness costs no heap operation per heartbeat: a frame overwrites the session's
``last_recv`` and moves the peer to the end of its deadline group, whose one timer
serves every peer with the same timeout (see ``Channel.arm``).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

from hbloop.auth import Authenticator, Refusal
from hbloop.core.credentials import jwt_expiry
from hbloop.core.logfields import fields, token
from hbloop.core.policy import DEFAULT_BACKLOG, ServerPolicy, drain_due, seconds_to_ms
from hbloop.core.session import (
    NO_EVENTS,
    AuthReceived,
    Closed,
    Disconnect,
    Events,
    Grant,
    HelloReceived,
    Message,
    Opened,
    Reason,
    Role,
    Session,
    SessionConfig,
    State,
)
from hbloop.core.wire import Code, Hello, encode_error
from hbloop.net.acceptor import Acceptor, AdmissionLimits, SourceLimits
from hbloop.net.channel import Channel, make_channel
from hbloop.net.counters import IoCounters, ServerStats
from hbloop.net.loop import EventLoop, Timer, call_guarded
from hbloop.net.sockets import apply_tcp_options, make_listener
from hbloop.net.tls import DEFAULT_HANDSHAKE_RATE, Certificate, HandshakeLimiter, TlsLayer
from hbloop.net.trace import Tracer


class Registry(Protocol):
    """What the server asks of a name registry (``hbloop.presence.node.Presence``):
    whether a HELLO's name may be admitted (None, or the code and reason to refuse it
    with), and to be told of each peer that joins and leaves. ``joined`` returns the
    handle ``left`` is given back."""

    def check(self, name: str) -> tuple[Code, str] | None: ...

    def joined(
        self, name: str, address: str, since: float, evict: Callable[[Code, str], None]
    ) -> object: ...

    def left(self, member: Any, reason: str) -> None: ...


log = logging.getLogger("hbloop.server")

# Accept at most this many connections per wake-up (Redis uses the same figure), so
# that a connection storm cannot starve heartbeats of already connected peers.
MAX_ACCEPTS_PER_WAKEUP = 1000

# Distinct interval requests whose grants are cached. Clients of one fleet ask for
# a handful of intervals; the cap keeps hostile requests from growing the cache.
MAX_CACHED_GRANTS = 256

# Distinct peer addresses whose strings are shared; bounded for the same reason.
MAX_INTERNED_HOSTS = 4096

# The shortest wait between two batches of a drain's closes. Each batch closes the
# peers due since the last one (a tenth of a second's share of the drain at most), and
# between batches the loop serves the heartbeats of the peers still open; ten batches
# a second are fine enough that clients see the closes spread, not in steps.
DRAIN_TICK = 0.1


ConnectCallback = Callable[["Peer"], None]
MessageCallback = Callable[["Peer", bytes], None]
DisconnectCallback = Callable[["Peer", Disconnect], None]


class Peer:
    """One accepted connection, as the application sees it.

    Read-only: ``name`` (None until HELLO), ``address`` (host, port), ``state`` (a
    ``State``) and ``open`` (past the handshake and not ending), ``connected_at`` (wall
    clock), ``idle`` (seconds since its last complete frame), and the granted
    ``interval`` and ``timeout`` (seconds; 0 before the handshake). Methods:
    ``send(data)``, ``close(code)`` and, under TLS, ``peer_certificate()``.

    The connection's I/O is its ``hbloop.net.channel.Channel``, which the server drives.
    """

    __slots__ = ("_channel", "_host", "_port", "_accepted", "_member")

    def __init__(self, server: Server, sock: socket.socket, host: str, port: int) -> None:
        now = server.loop.now
        # Host and port apart rather than an address tuple, and the loop's clock rather
        # than a float of our own: both are shared objects, which saves about 100 bytes
        # per connection.
        self._host = host
        self._port = port
        self._accepted = now
        self._member: object = None  # its handle in server.presence
        tls_context = server.tls_context
        self._channel: Channel[Peer] = make_channel(
            server,
            self,
            sock,
            Session.server(server.session_config, now),
            tls=None if tls_context is None else TlsLayer(tls_context, server_side=True),
            tracer=Tracer(self._label) if server.trace else None,
        )

    @property
    def name(self) -> str | None:
        return self._channel.session.name

    @property
    def address(self) -> tuple[str, int]:
        return self._host, self._port

    @property
    def state(self) -> State:
        return self._channel.session.state

    @property
    def open(self) -> bool:
        """Past the handshake and not ending."""
        return self._channel.session.state is State.OPEN

    @property
    def connected_at(self) -> float:
        """Wall-clock time the connection was accepted."""
        return time.time() - self._age

    @property
    def idle(self) -> float:
        """Seconds since the last complete frame from this peer."""
        channel = self._channel
        return channel.endpoint.loop.time() - channel.session.last_recv

    @property
    def interval(self) -> float:
        """The granted heartbeat interval, s (0 before the handshake)."""
        return self._channel.session.grant.interval

    @property
    def timeout(self) -> float:
        """The granted timeout, s (0 before the handshake)."""
        return self._channel.session.grant.timeout

    def send(self, data: bytes) -> bool:
        """Send application DATA; False if the peer is gone or closing."""
        return self._channel.send(data)

    def close(self, code: Code = Code.NORMAL) -> None:
        """Send CLOSE with ``code`` and end the connection."""
        self._channel.close(code)

    def peer_certificate(self) -> Certificate | None:
        """The client's verified certificate under mutual TLS, else None."""
        return self._channel.peer_certificate()

    def __repr__(self) -> str:
        return f"<Peer {self._label} name={self.name} {self.state.value}>"

    # --- for the server -------------------------------------------------------------

    @property
    def _label(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def _age(self) -> float:
        """Seconds since the connection was accepted."""
        return self._channel.endpoint.loop.time() - self._accepted

    def _evict(self, code: Code, message: str) -> None:
        """End the connection at presence's request: CLOSE for TAKEN_OVER (its client
        must not reconnect), ERROR for a refusal found out after WELCOME (NAME_TAKEN)."""
        channel = self._channel
        session = channel.session
        if code is Code.TAKEN_OVER:
            channel.close(code)
        elif session.state is State.OPEN:
            channel.apply(session.refuse(code, message, channel.endpoint.loop.now))


class Server:
    """An hbloop server on an EventLoop.

    Callbacks (all optional) run on the loop; an exception in one is logged and the
    server carries on:

    * ``on_connect(peer)`` after a successful handshake;
    * ``on_message(peer, data)`` for each DATA frame;
    * ``on_disconnect(peer, disconnect)`` once for each peer that had connected.

    ``presence`` (optional, also settable after ``start()``), a ``Registry`` such as
    ``hbloop.presence.node.Presence``, is told of every peer that connects and leaves,
    and may refuse or evict one by name.

    ``tls_context`` (``hbloop.net.tls.server_context``) makes the port speak TLS, with
    at most ``tls_handshake_rate`` new handshakes a second (the excess is closed at
    accept); ``authenticator`` (``hbloop.auth.Authenticator``: JWTs, client
    certificate names, an ``authorize(hello, peer) -> bool`` hook) judges every HELLO's
    credential, refusing with ERROR UNAUTHORIZED, and the fresh one of every AUTH (A2);
    with ``close_expired`` a session whose JWT's ``exp`` passes with no fresh token is
    closed with CLOSE CREDENTIALS_EXPIRED (A5).
    With ``trace``, every frame in and out is logged at debug level (``hbloop.net.trace``).

    ``listener``, a listening socket the process inherited (``hbloop.net.sockets.
    adopt_listener``: systemd's socket activation, a supervisor's, ``--fd``), is served
    instead of binding ``host`` and ``port``. Other processes may accept from it too,
    and the socket outlives this server: whoever passed it keeps it listening, so
    connections that arrive while no server runs wait in its backlog.
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
        listener: socket.socket | None = None,
        presence: Registry | None = None,
        tls_context: ssl.SSLContext | None = None,
        tls_handshake_rate: float = DEFAULT_HANDSHAKE_RATE,
        authenticator: Authenticator | None = None,
        close_expired: bool = True,
        trace: bool = False,
        admission: AdmissionLimits = AdmissionLimits(),  # noqa: B008 (frozen)
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
        self.listener = listener
        self.presence = presence
        self.stats = ServerStats()
        self.counters: IoCounters = self.stats  # what the peers' channels count into
        self.max_pending = policy.max_pending
        self.session_config = SessionConfig(
            Role.SERVER,
            handshake_timeout=policy.handshake_timeout,
            ping_strikes=policy.ping_strikes,
            linger=policy.linger,
            counters=self.stats,
            peer_rate=policy.max_peer_rate,
            max_payload=policy.max_payload,
            reconnect_window_ms=policy.drain_period_ms,
        )
        self._live: set[Peer] = set()  # every unreleased peer, handshaken or not
        # requested interval_ms -> its Grant, shared by every peer that asked the same.
        self._grants: dict[int, Grant] = {}
        # Peer host strings are interned: thousands of peers share a few addresses.
        self._hosts: dict[str, str] = {}
        self._acceptor: Acceptor | None = None
        self._stopping = False
        # The drain: the peers live when it began, in the order they are closed, how
        # many of them have been, when it began, and its next batch.
        self._draining: list[Peer] = []
        self._drained = 0
        self._drain_started = 0.0
        self._drain_timer: Timer | None = None
        self._handshakes = 0  # peers accepted and not yet through their handshake
        self._too_many_handshakes = encode_error(Code.SERVER_FULL, "too many handshakes")
        self.admission = admission
        self._sources = SourceLimits(admission)
        self.tls_context = tls_context
        self.authenticator = authenticator
        self.close_expired = close_expired
        # The timers of the sessions whose token has an exp (A5): an entry only for
        # them, so sessions without tokens cost nothing, and no heartbeat checks it.
        self._expiries: dict[Peer, Timer] = {}
        self.trace = trace
        self._tls_limiter = (
            None
            if tls_context is None
            else HandshakeLimiter.per_second(tls_handshake_rate, self.loop.now)
        )

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Bind and listen, unless given a ``listener``; return the address it listens
        on (useful with port 0)."""
        listener = self.listener
        if listener is None:
            listener = make_listener(self.host, self.port, self.backlog, self.reuse_port)
        self._acceptor = Acceptor(
            self.loop,
            listener,
            self._adopt,
            batch=MAX_ACCEPTS_PER_WAKEUP,
            farewell=encode_error(Code.SERVER_FULL, "out of file descriptors"),
            on_shed=self._count_shed,
            log=log,
            limiter=self.admission.accept_limiter(self.loop.now),
            shared=self.listener is not None,
        )
        host, self.port = self._acceptor.address
        return host, self.port

    def serve_forever(self, install_signal_handlers: bool = True) -> None:
        """Run until ``shutdown()`` completes; SIGINT/SIGTERM call it."""
        if self._acceptor is None:
            self.start()
        if install_signal_handlers:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.loop.add_signal_handler(signum, self.shutdown)
        try:
            self.loop.run_forever()
        finally:
            self._close_listener()

    def stop_accepting(self) -> None:
        """Close the listening socket, so that new connections go elsewhere (with
        ``reuse_port``, the port's other listeners: the kernel hashes none to a closed
        one; with an inherited ``listener``, this process's descriptor only: the others'
        keep the socket and its queue); the peers already connected are served on.
        ``stats.draining`` says so."""
        self._close_listener()
        self.stats.draining = 1

    def shutdown(self) -> None:
        """Stop gracefully: stop accepting, then CLOSE(GOING_AWAY) the peers spread
        evenly over the policy's drain period (protocol.md C4), a batch at a time
        (``drain_due``), each after the output already queued for it; stop the loop
        once every peer is gone, or the shutdown grace after the drain period.

        A second call closes every remaining peer at once and stops.
        """
        if self._stopping:
            log.warning(
                "second stop request: closing %d connections now",
                len(self._draining) - self._drained,
            )
            self._close_due(len(self._draining))  # their CLOSE goes out, best effort
            for peer in list(self._live):
                peer._channel.drop(Reason.SHUTDOWN, "second stop request")
            self.loop.stop()
            return
        self._stopping = True
        self.stop_accepting()
        policy = self.policy
        self._draining = list(self._live)
        log.info(
            "shutting down: closing %d connections over %gs (grace %.1fs)",
            len(self._draining),
            policy.drain_period,
            policy.shutdown_grace,
        )
        self._drain_started = self.loop.now
        self._drain_batch()
        self.loop.call_later(policy.drain_period + policy.shutdown_grace, self._grace_expired)
        self._stop_if_drained()

    def _drain_batch(self) -> None:
        """Close the peers due by now; come back when the next one is due."""
        self._drain_timer = None
        count = len(self._draining)
        period_ms = self.policy.drain_period_ms
        elapsed_ms = seconds_to_ms(self.loop.now - self._drain_started)
        self._close_due(drain_due(count, period_ms, elapsed_ms))
        if self._drained < count:
            next_ms = self._drained * period_ms // count  # when drain_due reaches it
            wait = max(DRAIN_TICK, (next_ms - elapsed_ms) / 1000)
            self._drain_timer = self.loop.call_later(wait, self._drain_batch)

    def _close_due(self, due: int) -> None:
        """CLOSE(GOING_AWAY) the drain's peers up to ``due`` (a no-op for any gone or
        closing already)."""
        grace = self.policy.shutdown_grace
        for peer in self._draining[self._drained : due]:
            peer._channel.close(Code.GOING_AWAY, Reason.SHUTDOWN, grace)
        self._drained = max(self._drained, due)

    def _grace_expired(self) -> None:
        if self._live:
            log.warning("grace period over: dropping %d connections", len(self._live))
            for peer in list(self._live):
                peer._channel.drop(Reason.SHUTDOWN, "grace period over")
        self.loop.stop()

    def _stop_if_drained(self) -> None:
        if self._stopping and not self._live:
            if self._drain_timer is not None:
                self._drain_timer.cancel()
                self._drain_timer = None
            self.loop.stop()

    def _close_listener(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()

    # --- the application's view ------------------------------------------------

    @property
    def peers(self) -> list[Peer]:
        """Peers past the handshake and not closing."""
        return [peer for peer in self._live if peer.open]

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    # --- accepting -------------------------------------------------------------

    def _adopt(self, sock: socket.socket, address: tuple[str, int]) -> None:
        try:
            sock.setblocking(False)
            policy = self.policy
            apply_tcp_options(
                sock, policy.max_pending, policy.tcp_keepalive, policy.tcp_user_timeout
            )
        except OSError:  # reset before we got to it
            sock.close()
            return
        self.stats.accepted += 1
        if self._handshakes >= self.policy.max_handshakes:
            assert self._acceptor is not None
            self._acceptor.turn_away(sock, self._too_many_handshakes)
            self._count_shed(1)
            self._acceptor.warn_shed(f"{self._handshakes} handshakes in progress", 1)
            return
        host = self._hosts.get(address[0], address[0])
        limiter = self._tls_limiter
        refusal = self._sources.admit(host, limiter is not None, self.loop.now)
        if refusal is None and limiter is not None and not limiter.allow(self.loop.now):
            self._sources.done(host)
            refusal = f"over {limiter.rate:g} TLS handshakes/s"
        if refusal is not None:
            assert self._acceptor is not None
            if limiter is None:
                self._acceptor.turn_away(sock, self._too_many_handshakes)
                self._count_shed(1)
            else:
                # Over a TLS handshake rate: closed now, before OpenSSL costs
                # anything; the client's jittered back-off spreads its retry.
                sock.close()
                self.stats.tls_handshakes_refused += 1
            self._acceptor.warn_shed(refusal, 1)
            return
        self._handshakes += 1
        if len(self._hosts) < MAX_INTERNED_HOSTS:
            self._hosts.setdefault(host, host)
        peer = Peer(self, sock, host, address[1])
        self._live.add(peer)
        channel = peer._channel
        channel.start_reading()
        channel.arm()  # the handshake deadline (H5)

    def set_admission(self, admission: AdmissionLimits) -> None:
        """New admission limits, applied in place (SIGHUP)."""
        self.admission = admission
        self._sources.update(admission)
        if self._acceptor is not None:
            self._acceptor.limiter = admission.accept_limiter(self.loop.now)

    def set_limits(self, max_connections: int, max_handshakes: int, tls_rate: float) -> None:
        """New connection, handshake and TLS-handshake-rate limits, applied in place
        (SIGHUP): peers already admitted stay, newcomers meet the new limits."""
        self.policy = dataclasses.replace(
            self.policy, max_connections=max_connections, max_handshakes=max_handshakes
        )
        if self._tls_limiter is not None:
            self._tls_limiter = HandshakeLimiter.per_second(tls_rate, self.loop.now)

    def _count_shed(self, count: int) -> None:
        self.stats.shed += count

    # --- what the peers' channels report ------------------------------------------

    def channel_events(self, channel: Channel[Peer], events: Events) -> None:
        peer = channel.app
        for event in events:
            if isinstance(event, Message):
                if channel.fd < 0:
                    return  # an earlier callback's send found the peer gone
                if self.on_message is not None:
                    call_guarded(log, "on_message", self.on_message, peer, event.data)
            elif isinstance(event, HelloReceived):
                self._admit(channel, event.hello)
            elif isinstance(event, AuthReceived):
                self._reauthenticate(channel, event.token)
            elif isinstance(event, Opened):
                self._opened(peer)
            elif isinstance(event, Closed):
                self._closed(peer, event.disconnect)

    def channel_released(self, channel: Channel[Peer]) -> None:
        self._live.discard(channel.app)
        if self._stopping:
            self._stop_if_drained()

    def tls_handshake(self, done: bool) -> None:
        if done:
            self.stats.tls_handshakes += 1
        else:
            self.stats.tls_handshakes_failed += 1

    # --- peer lifecycle -----------------------------------------------------------------

    def grant_for(self, requested_ms: int) -> Grant:
        """What a client asking for ``requested_ms`` gets; shared by all who asked so."""
        grant = self._grants.get(requested_ms)
        if grant is None:
            interval_ms, timeout_ms = self.policy.grant(requested_ms)
            grant = Grant(self.policy.scheme, interval_ms, timeout_ms)
            if len(self._grants) < MAX_CACHED_GRANTS:
                self._grants[requested_ms] = grant
        return grant

    def _admit(self, channel: Channel[Peer], hello: Hello) -> None:
        """H2's last checks in order (the credential, capacity, duplicate names), then
        WELCOME: the one place a HELLO is judged."""
        peer = channel.app
        session = channel.session
        now = self.loop.now
        if self.authenticator is not None:
            refusal = self.authenticator.check(hello, peer)
            if refusal is not None:
                self._unauthorized(channel, hello.name, refusal)
                return
        limit = self.policy.max_connections
        if self.stats.connections >= limit:
            channel.apply(session.refuse(Code.SERVER_FULL, f"{limit} connections", now))
            return
        if self.presence is not None:
            # May evict older connections with this name (replace), which re-enters here.
            taken = self.presence.check(hello.name)
            if taken is not None:
                channel.apply(session.refuse(*taken, now))
                return
        channel.apply(session.accept(self.grant_for(hello.interval_ms), now))
        if session.state is State.OPEN:
            self._watch_expiry(peer, hello.token)

    def _unauthorized(self, channel: Channel[Peer], name: str, refusal: Refusal) -> None:
        """Refuse a credential, of a HELLO or of an AUTH, and say why in the log."""
        peer = channel.app
        self.stats.auth_refused[refusal.check] += 1
        # The reason names the problem, never the token (hbloop.auth).
        log.warning(
            "unauthorized %s name=%s check=%s reason=%s",
            peer._label,
            token(name),
            refusal.check,
            refusal.reason,
            extra=fields(event="unauthorized", peer=peer._label, name=name, reason=refusal.reason),
        )
        session = channel.session
        channel.apply(session.refuse(refusal.code, refusal.reason, self.loop.now))

    def _reauthenticate(self, channel: Channel[Peer], fresh: str) -> None:
        """A2-A4: judge an AUTH's token as HELLO's was (the same checks, for the
        session's name); answer it, or refuse with UNAUTHORIZED. A server that checks
        no credentials answers without judging (A4)."""
        peer = channel.app
        session = channel.session
        if session.state is not State.OPEN:
            return  # the peer's CLOSE (or a violation) came in the same read: nothing to judge
        assert peer.name is not None  # OPEN: said in HELLO
        if self.authenticator is not None:
            hello = Hello(session.grant.version, session.grant.interval_ms, peer.name, fresh)
            refusal = self.authenticator.check(hello, peer)
            if refusal is not None:
                self._unauthorized(channel, peer.name, refusal)
                return
        log.info(
            "reauth %s name=%s",
            peer._label,
            token(peer.name),
            extra=fields(event="reauth", peer=peer._label, name=peer.name),
        )
        channel.apply((session.reauthenticated(self.loop.now), NO_EVENTS))
        self._watch_expiry(peer, fresh)

    def _watch_expiry(self, peer: Peer, credential: str | None) -> None:
        """A5: (re)arm the timer that closes ``peer`` when its JWT's exp passes."""
        old = self._expiries.pop(peer, None)
        if old is not None:
            old.cancel()
        verifier = None if self.authenticator is None else self.authenticator.jwt_verifier
        if not self.close_expired or verifier is None or credential is None:
            return
        exp = jwt_expiry(credential)  # verified by the caller
        if exp is not None:
            delay = max(exp - time.time(), 0.0)  # exp is wall-clock time, timers monotonic
            self._expiries[peer] = self.loop.call_later(delay, self._expired, peer)

    def _expired(self, peer: Peer) -> None:
        self._expiries.pop(peer, None)
        if peer.state is not State.OPEN:
            return
        log.info(
            "credentials expired %s name=%s",
            peer._label,
            token(peer.name) if peer.name else "-",
            extra=fields(event="credentials_expired", peer=peer._label, name=peer.name),
        )
        peer.close(Code.CREDENTIALS_EXPIRED)

    def _opened(self, peer: Peer) -> None:
        self._handshakes -= 1
        self._sources.done(peer._host)
        stats = self.stats
        stats.connections += 1
        if stats.connections > stats.peak:
            stats.peak = stats.connections
        assert peer.name is not None  # said in HELLO, before WELCOME
        log.info(
            "connect %s name=%s interval=%gs timeout=%gs",
            peer._label,
            token(peer.name),
            peer.interval,
            peer.timeout,
            extra=fields(event="connect", peer=peer._label, name=peer.name),
        )
        if self.presence is not None:
            assert peer.name is not None
            peer._member = self.presence.joined(
                peer.name, peer._label, peer.connected_at, peer._evict
            )
        if self.on_connect is not None:
            call_guarded(log, "on_connect", self.on_connect, peer)

    def _closed(self, peer: Peer, disconnect: Disconnect) -> None:
        self.stats.closed[disconnect.reason.value] += 1
        log.info(
            "disconnect %s name=%s age=%.1fs reason=%s",
            peer._label,
            token(peer.name) if peer.name else "-",
            peer._age,
            disconnect,
            extra=fields(
                event="disconnect", peer=peer._label, name=peer.name, reason=disconnect.reason.value
            ),
        )
        if not peer._channel.session.handshaken:
            self._handshakes -= 1
            self._sources.done(peer._host)
            return
        self.stats.connections -= 1
        expiry = self._expiries.pop(peer, None)
        if expiry is not None:
            expiry.cancel()
        if peer._member is not None:
            assert self.presence is not None
            self.presence.left(peer._member, disconnect.reason.value)
            peer._member = None
        if self.on_disconnect is not None:
            call_guarded(log, "on_disconnect", self.on_disconnect, peer, disconnect)
