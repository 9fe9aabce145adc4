"""One connection's protocol state machine, for both roles, with no I/O at all.

This is protocol.md sections 2 to 4 as code: the states it names, the handshake
rules (H1-H9), the timing rules (T1-T9) and the closing rules (C1-C5). A ``Session``
is told what happened, always with the time it happened, and answers with the bytes
to send and the events the application should hear of::

    out, events = session.receive_data(data, now)   # bytes read from the peer
    out, events = session.eof_received(now)         # the peer sent its FIN
    out, events = session.deadline_reached(now)     # the one timer came due
    out, events = session.close(Code.NORMAL, now)   # we want to end it

As in h11, the session owns its receive buffer: a shell hands it whatever bytes it
read, however the stream was split, and the session decodes them (checking each
header before buffering its payload, F1), acts on the complete frames in order, and
answers a bad header with ERROR after the frames before it have been served (C3).
Every shell, epoll or asyncio, client or server, thus runs one copy of that sequence.

**Fairness.** One ``receive_data`` acts on at most ``MAX_FRAMES_PER_READ`` frames and
keeps the rest; it then sets ``paused``, as it does when the peer has spent its rate
of unsolicited frames (T9). A paused session wants no more input for now: its shell
stops reading from the socket (so TCP flow control holds the sender back) and, at
``resume_at()``, calls ``receive_data(b"", now)`` for the next share before reading
again.

``next_deadline()`` says when the session next needs ``deadline_reached``: the
handshake deadline, the peer's timeout, this side's next PING or the end of the
linger after our last frame. The caller keeps a single timer per connection and may
fire it late or early; the session re-checks the clock itself, so a heartbeat never
needs a timer operation (re-arming happens about once per timeout period).

In the spirit of h11: no socket is imported here, the clock is a parameter, and the
server's admission decision (capacity, credentials, duplicate names) stays with the
caller: a valid HELLO yields ``HelloReceived`` and the caller answers ``accept(grant)``
or ``refuse(code)``. Bytes that arrived behind the HELLO stay in the buffer until then,
so a client may pipeline its first PING behind its HELLO (H7).

Errors come in the two kinds of ``hbloop.core.protocol``: the peer's violations become an
ERROR frame and a ``Closed`` event (never an exception out of here), while calling a
method in a state where it makes no sense raises ``LocalProtocolError``.
"""

from __future__ import annotations

import enum
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hbloop.core.histogram import Buckets
from hbloop.core.logfields import trailing_text
from hbloop.core.protocol import (
    LocalProtocolError,
    RemoteProtocolError,
    code_name,
    downgrade_hello,
    parse_auth,
    parse_close,
    parse_error,
    parse_hello,
    parse_welcome,
    take_frames,
)
from hbloop.core.wire import (
    ABSOLUTE_MAX_PAYLOAD,
    AUTH_ACK_FRAME,
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    MAX_HELLO_PAYLOAD,
    PING_FRAME,
    PONG_FRAME,
    T_AUTH,
    T_CLOSE,
    T_DATA,
    T_ERROR,
    T_HELLO,
    T_PING,
    T_PONG,
    T_WELCOME,
    VERSION_1,
    Code,
    FrameType,
    Hello,
    Scheme,
    Welcome,
    encode_auth,
    encode_close,
    encode_data,
    encode_error,
    encode_welcome,
)

# T8: a PING arriving sooner than this fraction of the interval after the previous
# one is a strike. Half an interval leaves room for jittered and catching-up clients.
PING_STRIKE_FRACTION = 0.5

# Fairness: the frames one receive_data acts on; the rest wait in the session's buffer,
# with the session paused, for the shell's next turn. At about a microsecond a frame, a
# peer that floods tiny frames holds the loop for at most a few hundred microseconds
# per turn, and a turn still answers a whole burst of ordinary traffic.
MAX_FRAMES_PER_READ = 256

# T9: PONG and DATA frames are counted against the peer's rate in windows this long.
# A second is the unit operators state rates in, and short enough that a throttled
# peer is read again long before anyone's timeout.
RATE_WINDOW = 1.0

# Upper bounds, s, of the histogram of the silence each heartbeat received ends (see
# Session.receive). Steps of 1, 1.5, 2, 3, 5, 7.5 a decade put an on-time heartbeat of
# any common interval I in the bucket just above I, with 1.5I, 2I and 3I (the default
# timeout) as bounds close by; they span the grantable intervals (0.1 to 300 s) and
# their timeouts. 25 bounds: a bisection of five comparisons.
HEARTBEAT_BUCKETS = (
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
    50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 750.0, 1000.0,
)  # fmt: skip

# A heartbeat frame (PING or PONG) is a bare header: a read of exactly this many bytes
# is the common case that ``Session.receive_heartbeat`` recognizes by its bytes.
HEARTBEAT_SIZE = len(PING_FRAME)

# "Long ago": the time of a PING never sent or received (T3 starts last_ping there).
NEVER = float("-inf")
FOREVER = float("inf")


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    """The connection states of protocol.md section 2."""

    CONNECTING = "connecting"  # client: the TCP connection is being set up
    AWAIT_HELLO = "await_hello"  # server: accepted, the handshake deadline runs
    AWAIT_WELCOME = "await_welcome"  # client: HELLO sent
    OPEN = "open"  # handshake done: heartbeats and DATA
    CLOSING = "closing"  # this side sent its last frame and waits, bounded, for EOF
    CLOSED = "closed"  # nothing more to do; the socket can go


# The per-frame paths compare states with these module globals: looking a member up
# on its Enum class costs about 100 ns in CPython 3.11, a global about 6 (the same
# reason as wire.T_PING and its twins).
S_OPEN = State.OPEN
S_CLOSING = State.CLOSING
S_CLOSED = State.CLOSED


class Reason(enum.Enum):
    """Why a connection ended; every end has exactly one."""

    PEER_CLOSED = "peer_closed"  # CLOSE frame or EOF from the peer
    PEER_RESET = "peer_reset"  # ECONNRESET, EPIPE, a failed connect or another socket error
    PEER_ERROR = "peer_error"  # the peer sent ERROR
    TIMEOUT = "timeout"  # nothing heard within the timeout
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    PROTOCOL_ERROR = "protocol_error"  # the peer broke the protocol; we sent ERROR
    REFUSED = "refused"  # we refused the handshake (server full, ...)
    SLOW_CONSUMER = "slow_consumer"  # pending output passed the cap
    TLS_ERROR = "tls_error"  # TLS failed (handshake, record, certificate), or plain text came
    SHUTDOWN = "shutdown"  # this side is stopping
    CLOSED_LOCALLY = "closed_locally"  # the application asked


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: Reason
    code: int | None = None  # the protocol code sent or received, if any
    detail: str = ""

    def __str__(self) -> str:
        parts = [self.reason.value]
        if self.code is not None:
            parts.append(code_name(self.code))
        if self.detail:
            parts.append(trailing_text(self.detail))  # a peer's ERROR message, for one
        return " ".join(parts)


class Grant:
    """The interval, timeout and scheme in force on an OPEN connection.

    A server shares one Grant among every peer granted the same, so the derived
    seconds and the WELCOME frame are computed once, not per connection.
    """

    __slots__ = (
        "scheme",
        "interval_ms",
        "timeout_ms",
        "interval",
        "timeout",
        "ping_floor",
        "version",
        "_welcome",
        "_sibling",
    )

    def __init__(
        self,
        scheme: Scheme,
        interval_ms: int,
        timeout_ms: int,
        welcome: Welcome | None = None,
        version: int = VERSION_1,
    ) -> None:
        self.scheme = scheme
        self.interval_ms = interval_ms
        self.timeout_ms = timeout_ms
        self.interval = interval_ms / 1000
        self.timeout = timeout_ms / 1000
        self.ping_floor = PING_STRIKE_FRACTION * self.interval
        #: The protocol version the connection speaks (H10): what AUTH needs (A1).
        #: Kept here, in the grant a server shares among its peers, rather than in
        #: every session.
        self.version = version
        # A client's grant: the WELCOME it came in, with its version and properties.
        self._welcome = welcome
        # Server: the same grant in the other version, made once when first needed.
        self._sibling: Grant | None = None

    @classmethod
    def from_welcome(cls, welcome: Welcome) -> Grant:
        return cls(
            welcome.scheme, welcome.interval_ms, welcome.timeout_ms, welcome, welcome.version
        )

    def in_version(self, version: int) -> Grant:
        """This grant for a connection speaking ``version``: itself, or its sibling."""
        if version == self.version:
            return self
        sibling = self._sibling
        if sibling is None or sibling.version != version:
            sibling = Grant(self.scheme, self.interval_ms, self.timeout_ms, version=version)
            sibling._sibling = self
            self._sibling = sibling
        return sibling

    @property
    def welcome(self) -> Welcome:
        """A client's: the WELCOME received. A server's: the grant as version 1's
        WELCOME states it (a version 2 WELCOME adds the server's properties)."""
        if self._welcome is not None:
            return self._welcome
        return Welcome(VERSION_1, self.scheme, self.interval_ms, self.timeout_ms)

    def __repr__(self) -> str:
        return (
            f"Grant({self.scheme.name.lower()} pings, interval {self.interval_ms} ms, "
            f"timeout {self.timeout_ms} ms)"
        )


# --- events --------------------------------------------------------------------------


class Event:
    """Something the application should hear of."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HelloReceived(Event):
    """Server: a valid HELLO. Answer with ``accept(grant, now)`` or ``refuse(...)``."""

    hello: Hello


@dataclass(frozen=True, slots=True)
class Opened(Event):
    """The handshake is done; the connection is OPEN under ``grant``."""

    grant: Grant


@dataclass(frozen=True, slots=True)
class Message(Event):
    """A DATA frame's payload."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AuthReceived(Event):
    """Server: an AUTH with a fresh credential on an OPEN version 2 connection (A2).
    Answer with ``reauthenticated(now)`` or ``refuse(Code.UNAUTHORIZED, ...)``."""

    token: str = field(repr=False)  # a secret, as Hello.token


@dataclass(frozen=True, slots=True)
class Reauthenticated(Event):
    """Client: the server accepted the token of our last AUTH (A3)."""


@dataclass(frozen=True, slots=True)
class PongReceived(Event):
    """A PONG arrived (only when ``SessionConfig.report_pongs``, for RTT probes)."""


@dataclass(frozen=True, slots=True)
class Closed(Event):
    """The connection is over for the application; reported exactly once."""

    disconnect: Disconnect


PONG_RECEIVED = PongReceived()
REAUTHENTICATED = Reauthenticated()

Events = Sequence[Event]
Step = tuple[bytes, Events]

NO_EVENTS: tuple[Event, ...] = ()
NOTHING: Step = (b"", NO_EVENTS)


class SessionCounters(Protocol):
    frames_in: int  # complete frames decoded
    heartbeats: int  # PING and PONG frames received
    frames_out: int  # frames produced
    heartbeat_intervals: Buckets  # the silence each heartbeat ended, s (HEARTBEAT_BUCKETS)
    # Heartbeats ``Session.receive_heartbeat`` took, not yet in the three counts above:
    # the fast path bumps one plain integer per heartbeat instead of three, and the
    # owner folds them in (``fold_quick``) when it publishes its figures.
    quick_pings: int  # each one frame in and one PONG out
    quick_pongs: int  # each one frame in


def fold_quick(counters: SessionCounters) -> int:
    """Fold the fast path's heartbeats into ``frames_in``, ``heartbeats`` and
    ``frames_out``; return how many there were (each a read of ``HEARTBEAT_SIZE``
    bytes, for an owner that counts bytes too)."""
    pings = counters.quick_pings
    beats = pings + counters.quick_pongs
    if beats:
        counters.quick_pings = counters.quick_pongs = 0
        counters.frames_in += beats
        counters.heartbeats += beats
        counters.frames_out += pings
    return beats


class _Tally:
    """Counters for sessions whose owner keeps no statistics."""

    __slots__ = (
        "frames_in",
        "heartbeats",
        "frames_out",
        "heartbeat_intervals",
        "quick_pings",
        "quick_pongs",
    )

    def __init__(self) -> None:
        self.frames_in = self.heartbeats = self.frames_out = 0
        self.quick_pings = self.quick_pongs = 0
        self.heartbeat_intervals = Buckets(HEARTBEAT_BUCKETS)


class SessionConfig:
    """What every session of one endpoint (a server, or one client) shares.

    * ``handshake_timeout``: a server closes a connection that has not sent HELLO by
      then (H5); a client gives up on an attempt whose WELCOME has not arrived (H3).
    * ``ping_strikes``: consecutive too-early PINGs before ERROR TOO_MANY_PINGS (T8).
    * ``linger``: how long to wait for the peer's EOF after our last frame (C1, C3).
    * ``hello``: the client's HELLO frame, sent once connected; its version is the
      one the client speaks (``fall_back`` turns a version 2 HELLO into version 1's).
    * ``auto_ping``: the pinging side sends PINGs by rule T3 (off for load
      generators that keep their own schedule).
    * ``report_pongs``: emit ``PongReceived`` for every PONG.
    * ``counters``: where the sessions count heartbeats received and frames sent.
    * ``peer_rate``: PONG and DATA frames a second the peer may send before the
      session pauses, to stop reading from it for the rest of the second (0: no limit).
    * ``max_payload``: the largest payload accepted once OPEN (F2; before that a
      server accepts the longest HELLO).
    * ``enforce_timeout``: the session closes a silent peer (T6); off for load
      generators, which measure the server and leave judging to it.
    * ``reconnect_window_ms``: a server's RECONNECT_WINDOW for version 2 WELCOMEs
      (its drain period, C6 and R7), or None to send none.
    """

    __slots__ = (
        "role",
        "handshake_timeout",
        "ping_strikes",
        "linger",
        "hello",
        "report_pongs",
        "counters",
        "pinging_scheme",
        "peer_rate",
        "max_payload",
        "enforce_timeout",
        "reconnect_window_ms",
    )

    def __init__(
        self,
        role: Role,
        *,
        handshake_timeout: float,
        ping_strikes: int,
        linger: float,
        hello: bytes = b"",
        auto_ping: bool = True,
        report_pongs: bool = False,
        counters: SessionCounters | None = None,
        peer_rate: int = 0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        enforce_timeout: bool = True,
        reconnect_window_ms: int | None = None,
    ) -> None:
        if role is Role.CLIENT and not hello:
            raise LocalProtocolError(Code.MALFORMED, "a client session needs its HELLO")
        if (
            handshake_timeout <= 0
            or ping_strikes < 1
            or linger < 0
            or peer_rate < 0
            or not 0 <= max_payload <= ABSOLUTE_MAX_PAYLOAD
        ):
            raise LocalProtocolError(
                Code.MALFORMED,
                "the handshake timeout and strikes must be positive, linger, rate and "
                "maximum payload not negative",
            )
        self.role = role
        self.handshake_timeout = handshake_timeout
        self.ping_strikes = ping_strikes
        self.linger = linger
        self.hello = hello
        self.report_pongs = report_pongs
        self.counters: SessionCounters = counters if counters is not None else _Tally()
        self.peer_rate = peer_rate
        self.max_payload = max_payload
        self.enforce_timeout = enforce_timeout
        self.reconnect_window_ms = reconnect_window_ms
        # The scheme under which this side sends PINGs (T3), or None if it never does.
        own = Scheme.SERVER if role is Role.SERVER else Scheme.CLIENT
        self.pinging_scheme: Scheme | None = own if auto_ping else None

    @property
    def version(self) -> int:
        """Client: the protocol version its HELLO speaks (H10)."""
        return self.hello[HEADER_SIZE]

    def fall_back(self, disconnect: Disconnect) -> bool:
        """Client: whether ``disconnect`` is a server refusing our version 2 HELLO with
        UNSUPPORTED_VERSION; if so, the HELLO becomes version 1's and the caller
        retries at once (H10). A version 1 HELLO refused so is final (H8)."""
        if (
            disconnect.reason is not Reason.PEER_ERROR
            or disconnect.code != Code.UNSUPPORTED_VERSION
            or self.version == VERSION_1
        ):
            return False
        self.hello = downgrade_hello(self.hello)
        return True


_NO_GRANT = Grant(Scheme.CLIENT, 0, 0)


class Session:
    """The state machine of one connection. Create it with ``Session.server`` when a
    connection is accepted or ``Session.client`` when a connect starts."""

    __slots__ = (
        "config",
        "state",
        "grant",
        "name",
        "deadline",
        "last_recv",
        "last_sent",
        "last_ping_out",
        "last_ping_in",
        "strikes",
        "rate_start",
        "rate_count",
        "paused",
        "peer_max_payload",
        "_hello",
        "_held",
    )

    def __init__(self, config: SessionConfig, state: State, now: float) -> None:
        self.config = config
        self.state = state
        self.grant = _NO_GRANT
        #: Server: the name in the peer's HELLO, once received. Client: None.
        self.name: str | None = None
        #: The handshake deadline, then (CLOSING) the end of the linger.
        self.deadline = now + config.handshake_timeout
        #: When the last complete frame arrived, and when this side last sent one;
        #: last_ping_in is the time credited to the last on-time PING (T8).
        self.last_recv = now
        self.last_sent = now
        self.last_ping_out = NEVER
        self.last_ping_in = NEVER
        self.strikes = 0
        # The current rate window (T9): when it started, and PONG and DATA seen in it.
        self.rate_start = NEVER
        self.rate_count = 0
        #: True while the session wants no more input for now (see the module's
        #: "Fairness"): call ``receive_data(b"", now)`` at ``resume_at()``.
        self.paused = False
        #: The peer's maximum payload once OPEN, from its version 2 handshake (None:
        #: not told, as in version 1; see R6).
        self.peer_max_payload: int | None = None
        # A HELLO awaiting accept() or refuse(); the bytes behind it wait in the buffer.
        self._hello: Hello | None = None
        # The receive buffer: bytes of frames not yet acted on (None when there are
        # none, which costs no bytearray per idle connection).
        self._held: bytearray | None = None

    @classmethod
    def server(cls, config: SessionConfig, now: float) -> Session:
        if config.role is not Role.SERVER:
            raise LocalProtocolError(Code.MALFORMED, "not a server configuration")
        return cls(config, State.AWAIT_HELLO, now)

    @classmethod
    def client(cls, config: SessionConfig, now: float) -> Session:
        if config.role is not Role.CLIENT:
            raise LocalProtocolError(Code.MALFORMED, "not a client configuration")
        return cls(config, State.CONNECTING, now)

    @property
    def handshaken(self) -> bool:
        """True once the handshake completed (the Opened event was emitted)."""
        return self.grant is not _NO_GRANT

    def __repr__(self) -> str:
        return f"<Session {self.config.role.value} {self.state.value} {self.grant!r}>"

    # --- time ------------------------------------------------------------------------

    def _pings(self) -> bool:
        return self.grant.scheme is self.config.pinging_scheme

    def next_ping(self) -> float:
        """T3: when the pinging side sends its next PING, if nothing else is sent.

        Due once either direction has been quiet for an interval, and never sooner
        than an interval after the previous PING: traffic both ways postpones it.
        """
        return max(min(self.last_sent, self.last_recv), self.last_ping_out) + self.grant.interval

    def next_deadline(self) -> float:
        """When ``deadline_reached`` has something to do (infinity: never)."""
        state = self.state
        if state is S_OPEN:
            due = self.last_recv + self.grant.timeout if self.config.enforce_timeout else FOREVER
            if self._pings():
                ping_at = self.next_ping()
                if ping_at < due:
                    return ping_at
            return due
        if state is State.CLOSED:
            return FOREVER
        return self.deadline

    def silence_timeout(self) -> float | None:
        """The peer's timeout if this side's only deadline is the peer's silence (OPEN,
        judging the peer, sending no PINGs of its own): ``next_deadline()`` is then
        ``last_recv`` plus it, and moves only when ``last_recv`` does. Else None."""
        if self.state is S_OPEN and self.config.enforce_timeout and not self._pings():
            return self.grant.timeout
        return None

    def expired(self, now: float) -> bool:
        """True if ``deadline_reached(now)`` would end an OPEN connection for silence:
        the caller's cue to read what is already waiting first (T6)."""
        return (
            self.state is State.OPEN
            and self.config.enforce_timeout
            and now >= self.last_recv + self.grant.timeout
        )

    def resume_at(self) -> float:
        """When a paused session wants input again: the end of the peer's rate window
        if it has spent its rate (T9), else minus infinity: at the shell's next turn."""
        if self.config.peer_rate and self.rate_count > self.config.peer_rate:
            return self.rate_start + RATE_WINDOW
        return NEVER

    @property
    def buffered(self) -> int:
        """Bytes received and not yet acted on: a partial frame, or frames held behind
        a pending HELLO or past one read's share."""
        held = self._held
        return 0 if held is None else len(held)

    def deadline_reached(self, now: float) -> Step:
        state = self.state
        if state is State.OPEN:
            silent = now - self.last_recv
            if silent >= self.grant.timeout and self.config.enforce_timeout:
                return self._close(
                    Code.TIMEOUT,
                    now,
                    Disconnect(Reason.TIMEOUT, Code.TIMEOUT, f"silent for {silent:.3f}s"),
                    self.config.linger,
                )
            if self._pings() and now >= self.next_ping():
                return self.ping(now), NO_EVENTS
            return NOTHING
        if state is State.CLOSED or now < self.deadline:
            return NOTHING
        if state is State.CLOSING:
            self.state = State.CLOSED  # the peer never sent its EOF: give up waiting
            return NOTHING
        if state is State.AWAIT_HELLO:
            return self._close(
                Code.HANDSHAKE_TIMEOUT,
                now,
                Disconnect(Reason.HANDSHAKE_TIMEOUT, Code.HANDSHAKE_TIMEOUT),
                self.config.linger,
            )
        # A client whose connect or WELCOME did not come in time gives up the attempt.
        return self._end(Disconnect(Reason.HANDSHAKE_TIMEOUT, detail="no WELCOME in time"))

    # --- the handshake -----------------------------------------------------------------

    def connected(self, now: float) -> bytes:
        """Client: the TCP connection is up; returns the HELLO to send (H1)."""
        if self.state is not State.CONNECTING:
            raise LocalProtocolError(Code.MALFORMED, f"connected() in state {self.state.value}")
        self.state = State.AWAIT_WELCOME
        self.last_sent = now
        self.config.counters.frames_out += 1
        return self.config.hello

    def accept(self, grant: Grant, now: float) -> Step:
        """Server: admit the pending HELLO under ``grant``; WELCOME goes out (H3) and
        the frames held behind the HELLO are acted on."""
        hello = self._hello
        if self.state is not State.AWAIT_HELLO or hello is None:
            raise LocalProtocolError(Code.MALFORMED, "accept() needs a pending HELLO")
        self._hello = None
        self.state = State.OPEN
        self.grant = grant.in_version(hello.version)
        self.deadline = FOREVER  # a shared float: OPEN needs no deadline of its own
        self.last_sent = now
        self.config.counters.frames_out += 1
        if hello.version == VERSION_1:
            welcome = encode_welcome(grant.welcome)  # exactly as version 1 always was
        else:  # answered in the HELLO's version (H10), with this side's maximum (F2)
            self.peer_max_payload = hello.max_payload
            welcome = encode_welcome(
                Welcome(
                    hello.version,
                    grant.scheme,
                    grant.interval_ms,
                    grant.timeout_ms,
                    self.config.max_payload,
                    self.config.reconnect_window_ms,
                    reauth=True,  # this session answers AUTH (A1, A4)
                )
            )
        opened: tuple[Event, ...] = (Opened(grant),)
        if self._held is None:
            return welcome, opened
        out, events = self.receive_data(b"", now)  # what came behind the HELLO (H7)
        return welcome + out, (*opened, *events)

    def refuse(self, code: Code, message: str, now: float) -> Step:
        """Server: refuse the pending HELLO with ERROR ``code`` (H2), or withdraw the
        admission of an OPEN connection (a duplicate name found out later, P1)."""
        if not (self.state is State.AWAIT_HELLO and self._hello is not None) and (
            self.state is not State.OPEN
        ):
            raise LocalProtocolError(Code.MALFORMED, "refuse() needs a pending HELLO")
        self._hello = None
        return self._fail(RemoteProtocolError(code, message), now, Reason.REFUSED)

    # --- bytes in ----------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> Step:
        """Bytes from the peer, read at ``now``: act on the complete frames buffered, in
        order, at most MAX_FRAMES_PER_READ of them (then ``paused`` is set). A bad
        header (F1) is answered with ERROR once the frames before it are served (C3).
        Input after this side's last frame (CLOSING) is discarded."""
        if self.state is not S_OPEN:
            return self._receive_unopened(data, now)
        # The per-frame path of every heartbeat: few bytecodes, one call (the decoder).
        # Most reads hold a single frame, so counters are bumped per frame, not summed
        # after.
        config = self.config
        failure = None
        try:
            frames, self._held = take_frames(
                self._held, data, config.max_payload, MAX_FRAMES_PER_READ
            )
        except RemoteProtocolError as error:
            frames = error.frames  # served first: the stream was good up to the header
            failure = error
        count = len(frames)
        self.paused = count == MAX_FRAMES_PER_READ
        counters = config.counters
        counters.frames_in += count
        previous_read = self.last_recv
        # ``gap`` is the silence this read ended: each heartbeat observes it, which
        # tells how close the peer runs to its timeout (a second one in the same read
        # ended no silence of its own).
        gap = now - previous_read
        if count:
            self.last_recv = now  # T5: only complete frames prove the peer alive
        out = b""
        events: list[Event] | tuple[Event, ...] = NO_EVENTS
        rated = 0  # PONG and DATA frames, which count against the peer's rate (T9)
        for ftype, payload in frames:
            if ftype == T_PING:
                counters.heartbeats += 1
                counters.heartbeat_intervals.observe(gap)
                gap = 0.0
                # T8: each on-time PING is credited I/2 after the previous one, but no
                # earlier than our previous read: PINGs that waited in the socket while
                # we were not reading share the time since then, and are no flood.
                credit = self.last_ping_in + self.grant.ping_floor
                if credit > now:
                    self.strikes += 1
                    if self.strikes >= config.ping_strikes:
                        return self._strike_out(out, events, now)
                else:
                    self.strikes = 0
                    self.last_ping_in = credit if credit > previous_read else previous_read
                self.last_sent = now
                out += PONG_FRAME
                counters.frames_out += 1
            elif ftype == T_PONG:
                counters.heartbeats += 1
                counters.heartbeat_intervals.observe(gap)
                gap = 0.0
                rated += 1
                if config.report_pongs:
                    if events is NO_EVENTS:
                        events = []
                    events.append(PONG_RECEIVED)  # type: ignore[union-attr]
            elif ftype == T_DATA:
                rated += 1
                if events is NO_EVENTS:
                    events = []
                events.append(Message(payload))  # type: ignore[union-attr]
            else:
                more, extra = self._control(ftype, payload, now)
                out += more
                if extra:
                    events = [*events, *extra]
                if self.state is not S_OPEN:
                    return out, events  # the rest is discarded (C2, C3)
        if failure is not None:
            more, extra = self._fail(failure, now)
            return out + more, [*events, *extra]
        if rated and config.peer_rate:
            self._charge(rated, now)
        return out, events

    def receive_heartbeat(self, buffer: bytes | bytearray, now: float) -> bytes | None:
        """The per-frame fast path: a read of exactly ``HEARTBEAT_SIZE`` bytes, the
        first bytes of ``buffer``, made at ``now``. If they are one PING or PONG that
        needs nothing but a stamp and an answer, act on it exactly as ``receive_data``
        would (same state and histogram, and the same counters once ``fold_quick``
        has published its ``quick_pings`` or ``quick_pongs``) and return what to send (a PONG, or
        nothing); else change nothing and return None: the caller hands the same bytes
        to ``receive_data``. Strikes (T8), rated or reported PONGs (T9), a held partial
        frame and any state but OPEN take the general path."""
        if self.state is not S_OPEN or self._held is not None:
            return None
        config = self.config
        counters = config.counters
        previous_read = self.last_recv
        if buffer.startswith(PING_FRAME):
            credit = self.last_ping_in + self.grant.ping_floor
            if credit > now:
                return None
            self.strikes = 0
            self.last_ping_in = credit if credit > previous_read else previous_read
            self.last_sent = now
            counters.quick_pings += 1  # published by fold_quick
            out = PONG_FRAME
        elif buffer.startswith(PONG_FRAME) and not (config.report_pongs or config.peer_rate):
            counters.quick_pongs += 1  # published by fold_quick
            out = b""
        else:
            return None
        self.paused = False
        self.last_recv = now
        # Buckets.observe, inlined: a Python call is a tenth of this path's cost.
        gap = now - previous_read
        intervals = counters.heartbeat_intervals
        intervals.counts[bisect_left(intervals.bounds, gap)] += 1
        intervals.sum += gap
        return out

    def _charge(self, frames: int, now: float) -> None:
        """T9: count ``frames`` against the peer's rate; once it is spent, pause until
        the window ends (``resume_at``)."""
        if now - self.rate_start >= RATE_WINDOW:
            self.rate_start = now
            self.rate_count = frames
        else:
            self.rate_count += frames
        if self.rate_count > self.config.peer_rate:
            self.paused = True

    def _strike_out(
        self, out: bytes, events: list[Event] | tuple[Event, ...], now: float
    ) -> tuple[bytes, list[Event]]:
        more, extra = self._fail(
            RemoteProtocolError(
                Code.TOO_MANY_PINGS,
                f"{self.strikes} PINGs sooner than half the {self.grant.interval:g}s interval",
            ),
            now,
        )
        return out + more, [*events, *extra]

    def _control(self, ftype: int, payload: bytes, now: float) -> Step:
        """CLOSE, ERROR, and the handshake frames that have no place on an OPEN
        connection."""
        try:
            if ftype == T_CLOSE:
                return self._end(Disconnect(Reason.PEER_CLOSED, parse_close(payload)))
            if ftype == T_ERROR:
                code, message = parse_error(payload)
                return self._end(Disconnect(Reason.PEER_ERROR, code, message))
            if ftype == T_AUTH:
                return self._receive_auth(payload)
            if ftype == T_HELLO and self.config.role is Role.SERVER:
                raise RemoteProtocolError(Code.DUPLICATE_HELLO, "HELLO after the handshake")
            what = "second WELCOME" if ftype == T_WELCOME else FrameType(ftype).name
            raise RemoteProtocolError(
                Code.UNEXPECTED_FRAME,
                f"{what} from a {'client' if self.config.role is Role.SERVER else 'server'}",
            )
        except RemoteProtocolError as exc:
            return self._fail(exc, now)

    def _receive_auth(self, payload: bytes) -> Step:
        """AUTH on an OPEN connection: unknown where it was not offered, on version 1
        or without REAUTH in the WELCOME (A1); a client's carries a token (A2), the
        server's answer none (A3)."""
        server = self.config.role is Role.SERVER
        offered = self.grant.version != VERSION_1 if server else self.grant.welcome.reauth
        if not offered:
            raise RemoteProtocolError(Code.UNKNOWN_TYPE, f"frame type 0x{T_AUTH:02x}")
        token = parse_auth(payload)
        if server:
            if token is None:
                raise RemoteProtocolError(Code.MALFORMED, "AUTH without a TOKEN")
            return b"", (AuthReceived(token),)
        if token is not None:
            raise RemoteProtocolError(Code.MALFORMED, "AUTH from a server carries a TOKEN")
        return b"", (REAUTHENTICATED,)

    def _receive_unopened(self, data: bytes | bytearray | memoryview, now: float) -> Step:
        """The handshake's first frame, one at a time: what follows it is decoded under
        the OPEN connection's rules and maximum, once the handshake is done."""
        state = self.state
        if state is S_CLOSING or state is S_CLOSED:
            return NOTHING  # input is drained and ignored (C1, C2)
        if state is State.CONNECTING:
            raise LocalProtocolError(Code.MALFORMED, "data received before connected()")
        # Before its handshake a server accepts the longest HELLO (F2), so that a
        # connection that never completes one holds no more.
        max_payload = MAX_HELLO_PAYLOAD if state is State.AWAIT_HELLO else self.config.max_payload
        # Awaiting accept() or refuse(), what follows the HELLO is only kept.
        limit = 0 if self._hello is not None else 1
        try:
            frames, self._held = take_frames(self._held, data, max_payload, limit)
        except RemoteProtocolError as exc:
            return self._fail(exc, now)  # F1 comes before H1: no frame is needed
        if not frames:
            return NOTHING
        self.config.counters.frames_in += 1
        ftype, payload = frames[0]
        if state is State.AWAIT_HELLO:
            return self._receive_hello(ftype, payload, now)
        return self._receive_welcome(ftype, payload, now)

    def _receive_hello(self, ftype: int, payload: bytes, now: float) -> Step:
        self.last_recv = now  # the server's timeout clock starts at HELLO (T6)
        try:
            if ftype != T_HELLO:
                raise RemoteProtocolError(
                    Code.HELLO_REQUIRED, f"{FrameType(ftype).name} before HELLO"
                )
            hello = parse_hello(payload)
        except RemoteProtocolError as exc:
            return self._fail(exc, now)
        self.name = hello.name
        self._hello = hello
        return b"", (HelloReceived(hello),)

    def _receive_welcome(self, ftype: int, payload: bytes, now: float) -> Step:
        try:
            if ftype == T_WELCOME:
                welcome = parse_welcome(payload, self.config.version)
            elif ftype in (T_CLOSE, T_ERROR):
                return self._control(ftype, payload, now)
            else:
                raise RemoteProtocolError(
                    Code.UNEXPECTED_FRAME, f"{FrameType(ftype).name} before WELCOME"
                )
        except RemoteProtocolError as exc:
            return self._fail(exc, now)
        self.state = State.OPEN
        self.grant = grant = Grant.from_welcome(welcome)
        self.peer_max_payload = welcome.max_payload
        self.deadline = FOREVER
        self.last_recv = now  # the client's timeout clock starts at WELCOME (H3)
        opened = (Opened(grant),)
        if self._held is None:
            return b"", opened
        out, events = self.receive_data(b"", now)
        return out, (*opened, *events)

    # --- frames out --------------------------------------------------------------------

    def send_data(self, data: bytes, now: float) -> bytes:
        """The DATA frame carrying ``data``; only on an OPEN connection."""
        if self.state is not State.OPEN:
            raise LocalProtocolError(Code.UNEXPECTED_FRAME, f"DATA in state {self.state.value}")
        limit = self.peer_max_payload
        if len(data) > (ABSOLUTE_MAX_PAYLOAD if limit is None else limit):
            raise LocalProtocolError(Code.FRAME_TOO_LARGE, f"{len(data)} bytes of DATA")
        self.last_sent = now
        self.config.counters.frames_out += 1
        return encode_data(data)

    def send_auth(self, token: str, now: float) -> bytes:
        """Client: the AUTH frame offering ``token`` in place of the connection's
        credential; only on an OPEN connection whose WELCOME carried REAUTH (A1)."""
        if self.state is not State.OPEN or not self.grant.welcome.reauth:
            raise LocalProtocolError(
                Code.UNEXPECTED_FRAME, "AUTH needs an OPEN connection whose WELCOME offered it"
            )
        self.last_sent = now
        self.config.counters.frames_out += 1
        return encode_auth(token)

    def reauthenticated(self, now: float) -> bytes:
        """Server: accept the token of the AUTH reported by ``AuthReceived``; returns
        the answer to send, an AUTH with an empty block (A3)."""
        if self.state is not State.OPEN:
            return b""  # ended while the token was judged: nothing to answer
        self.last_sent = now
        self.config.counters.frames_out += 1
        return AUTH_ACK_FRAME

    def ping(self, now: float) -> bytes:
        """A PING, now (T3 sends them by itself; this is for probes and load
        generators that keep their own schedule)."""
        if self.state is not State.OPEN:
            raise LocalProtocolError(Code.UNEXPECTED_FRAME, f"PING in state {self.state.value}")
        self.last_ping_out = self.last_sent = now
        self.config.counters.frames_out += 1
        return PING_FRAME

    # --- ending ------------------------------------------------------------------------

    def close(
        self,
        code: Code,
        now: float,
        reason: Reason = Reason.CLOSED_LOCALLY,
        linger: float | None = None,
    ) -> Step:
        """End the connection with CLOSE ``code`` (C1); then wait up to ``linger``
        (default: the configured one) for the peer's EOF. A no-op once closing."""
        state = self.state
        if state is State.CLOSING or state is State.CLOSED:
            return NOTHING
        disconnect = Disconnect(reason, code)
        if state is State.CONNECTING:
            return self._end(disconnect)
        return self._close(code, now, disconnect, self.config.linger if linger is None else linger)

    def protocol_error(
        self, error: RemoteProtocolError, now: float, reason: Reason = Reason.PROTOCOL_ERROR
    ) -> Step:
        """The transport refused the peer's bytes: ERROR, then close (C3), with the
        ``reason`` it names (plain text where TLS was due: ``TLS_ERROR``)."""
        if self.state is State.CLOSING or self.state is State.CLOSED:
            return NOTHING
        return self._fail(error, now, reason)

    def eof_received(self, now: float) -> Step:
        """The peer shut down its sending half. Frames still held past a read's share
        are served first; a partial frame left is a truncation, not a split (F4)."""
        state = self.state
        if state is S_CLOSING:
            self.state = S_CLOSED  # the EOF we lingered for
            return NOTHING
        if state is S_CLOSED:
            return NOTHING
        out = b""
        events: Events = NO_EVENTS
        while self.paused and self.state is S_OPEN:
            more, extra = self.receive_data(b"", now)
            out += more
            events = [*events, *extra]
        if self.state is S_CLOSING or self.state is S_CLOSED:
            return out, events
        partial = self.buffered
        if partial:
            more, extra = self._fail(
                RemoteProtocolError(Code.MALFORMED, f"EOF inside a frame, {partial} bytes in"),
                now,
            )
        else:
            more, extra = self._end(Disconnect(Reason.PEER_CLOSED, detail="EOF"))
        return out + more, [*events, *extra] if events else extra

    def abort(self, reason: Reason, detail: str = "") -> Step:
        """The transport failed or gave up (reset, refused connect, slow consumer):
        nothing more can be sent. Reported unless the session was already ending."""
        if self.state is State.CLOSING or self.state is State.CLOSED:
            self.state = State.CLOSED
            return NOTHING
        return self._end(Disconnect(reason, detail=detail))

    def _close(self, code: Code, now: float, disconnect: Disconnect, linger: float) -> Step:
        self.state = State.CLOSING
        self.paused = False  # from now on input is discarded, never held
        self._held = None
        self.deadline = now + linger
        self.last_sent = now
        self.config.counters.frames_out += 1
        return encode_close(code), (Closed(disconnect),)

    def _fail(
        self, error: RemoteProtocolError, now: float, reason: Reason = Reason.PROTOCOL_ERROR
    ) -> Step:
        self.state = State.CLOSING
        self.paused = False
        self._held = None
        self.deadline = now + self.config.linger
        self.last_sent = now
        self.config.counters.frames_out += 1
        return encode_error(error.code, error.message), (
            Closed(Disconnect(reason, error.code, error.message)),
        )

    def _end(self, disconnect: Disconnect) -> Step:
        self.state = State.CLOSED
        self.paused = False
        self._held = None
        return b"", (Closed(disconnect),)
