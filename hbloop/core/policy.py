"""Server policy: every interval, limit and consequence the operator can tune.

The loop knows nothing of heartbeats and the protocol knows nothing of time; this
module is where "how often", "how long" and "how much" are decided, and checked once
at start-up so that a bad combination is a clear error rather than odd behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

from hbloop.core.wire import (
    ABSOLUTE_MAX_PAYLOAD,
    DEFAULT_MAX_PAYLOAD,
    MIN_MAX_PAYLOAD,
    U32_MAX,
    Scheme,
)

# Defaults for a general-purpose deployment: a 10 s interval and a 30 s timeout sit
# well inside every common NAT and load-balancer idle limit (AWS ELB: 60 s) and, at
# three intervals, tolerate two lost or delayed heartbeats in a row.
DEFAULT_INTERVAL = 10.0
DEFAULT_TIMEOUT = 30.0

# The timeout must cover at least two intervals (AMQP's "two missed heartbeats"):
# with less, one heartbeat delayed by a GC pause or a retransmit kills a live peer.
MIN_TIMEOUT_RATIO = 2.0

# Bounds on what a client may ask for. Below 0.1 s heartbeats become a load of their
# own; above 300 s they no longer keep typical NAT mappings open.
DEFAULT_MIN_INTERVAL = 0.1
DEFAULT_MAX_INTERVAL = 300.0

# A connection must finish its handshake within this many seconds: a socket that
# never speaks (or trickles bytes) would otherwise be held forever. A client gives an
# attempt as long, from its TCP connect to WELCOME, before it counts as failed (H3).
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

# Per-connection cap on output the other end has not read yet, the server's to each
# peer as a client's to its server. A peer behind it by more is a slow consumer and
# is closed; this bounds the memory each connection can hold.
DEFAULT_MAX_PENDING = 256 * 1024

# PINGs sooner than half an interval after the previous one are strikes (T8, in
# hbloop.session); this many in a row close the connection (gRPC's "too_many_pings").
DEFAULT_PING_STRIKES = 3

# After sending CLOSE or ERROR the server half-closes and waits this long for the
# peer's FIN before releasing the socket, so the frame is read rather than lost to an
# RST triggered by unread input.
LINGER_SECONDS = 2.0

# T9: PONG and DATA frames a second a peer may send before the server stops reading
# from it until the second is over. Heartbeats need a frame every interval; a
# thousand a second is far beyond any presence or chat client, while a flooder is
# held to a few milliseconds of server time a second.
DEFAULT_MAX_PEER_RATE = 1000

# Connections still in their handshake at once. A reconnect storm completes each
# handshake in one round trip, so a healthy server seldom has more than hundreds;
# past this, newcomers are refused at once (ERROR SERVER_FULL) rather than held, so
# sockets that never say HELLO cannot pile up outside --max-connections.
DEFAULT_MAX_HANDSHAKES = 1024

# On SIGTERM, how long pending output (CLOSE frames included) may take to drain.
DEFAULT_SHUTDOWN_GRACE = 5.0

# On SIGTERM the server closes its peers spread evenly over this many seconds, and
# tells version 2 clients (RECONNECT_WINDOW) to spread their returns over as long: a
# fleet closed at once comes back at once. Ten seconds spreads 100,000 clients to
# 10,000 reconnects a second, what one worker accepts, and stays well inside systemd's
# default stop timeout (90 s) and a load balancer's deregistration delay.
DEFAULT_DRAIN_PERIOD = 10.0

# Descriptors kept back from the connection limit for the listener, epoll, the
# signal socketpair, the spare EMFILE descriptor, logs, metrics and handshakes in
# flight.
RESERVED_FDS = 64

# Linux caps the accept queue at net.core.somaxconn (4096 here).
DEFAULT_BACKLOG = 4096

# What Linux accepts for keepalive probes (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL and
# MAX_TCP_KEEPCNT in include/net/tcp.h): setsockopt refuses more with EINVAL, which
# would fail every accept rather than the start.
MAX_KEEPALIVE_IDLE = 32767
MAX_KEEPALIVE_INTERVAL = 32767
MAX_KEEPALIVE_COUNT = 127

# TCP_USER_TIMEOUT is a C int of milliseconds: at most 2**31 - 1 ms, about 24.8 days;
# and less than a millisecond would be 0, which turns it off.
MAX_TCP_USER_TIMEOUT_MS = 2**31 - 1


def seconds_to_ms(seconds: float) -> int:
    """Configuration is in seconds, the wire in whole milliseconds (rounded)."""
    return round(seconds * 1000)


def grant(
    interval_ms: int, timeout_ms: int, min_ms: int, max_ms: int, requested_ms: int
) -> tuple[int, int]:
    """protocol.md T1, in integers: the (interval, timeout) granted to a request.

    0 asks for the configured interval; anything else is clamped to [min, max]. The
    timeout keeps the configured timeout/interval ratio, rounded up: as MQTT derives
    its limit from the keep-alive the client chose. Integer arithmetic, so that every
    implementation grants exactly the same.
    """
    granted = interval_ms if requested_ms == 0 else min(max(requested_ms, min_ms), max_ms)
    return granted, -(-granted * timeout_ms // interval_ms)  # ceil without floats


def drain_due(count: int, period_ms: int, elapsed_ms: int) -> int:
    """How many of ``count`` peers a drain over ``period_ms`` has closed by
    ``elapsed_ms`` after it began: peer i (from 0) is due at i x period / count,
    rounded down, so the first goes at once and the last a share of the period before
    its end. Integers only; a period of 0 closes every peer at once."""
    if elapsed_ms < 0:
        return 0
    if elapsed_ms >= period_ms:  # a period of 0 included
        return count
    # #{i < count : i * period // count <= elapsed} = ceil((elapsed + 1) * count / period)
    return min(count, -(-(elapsed_ms + 1) * count // period_ms))


def _s(ms: int) -> str:
    return f"{ms / 1000:g}s"


def grant_problems(interval_ms: int, timeout_ms: int, min_ms: int, max_ms: int) -> list[str]:
    """Why a timing configuration is invalid (protocol.md T2), or nothing if it is valid."""
    problems = []
    if min_ms < 1:
        problems.append("the minimum interval must be at least 1 ms")
    if min_ms > max_ms:
        problems.append(f"the minimum interval {_s(min_ms)} exceeds the maximum {_s(max_ms)}")
    elif not min_ms <= interval_ms <= max_ms:
        problems.append(f"interval {_s(interval_ms)} must lie within [{_s(min_ms)}, {_s(max_ms)}]")
    if timeout_ms < MIN_TIMEOUT_RATIO * interval_ms:
        problems.append(
            f"timeout {_s(timeout_ms)} must be at least {MIN_TIMEOUT_RATIO:g}x "
            f"the interval {_s(interval_ms)}"
        )
    if not problems and grant(interval_ms, timeout_ms, min_ms, max_ms, max_ms)[1] > U32_MAX:
        problems.append(
            f"the longest grant's timeout exceeds the protocol's {U32_MAX} ms: "
            "lower the maximum interval or the timeout/interval ratio"
        )
    return problems


@dataclass(frozen=True)
class TcpKeepalive:
    """Kernel keepalive probes: a supplement to heartbeats, never a replacement."""

    idle: int
    interval: int
    count: int

    def __post_init__(self) -> None:
        for what, value, most in (
            ("idle", self.idle, MAX_KEEPALIVE_IDLE),
            ("interval", self.interval, MAX_KEEPALIVE_INTERVAL),
            ("count", self.count, MAX_KEEPALIVE_COUNT),
        ):
            if not 1 <= value <= most:
                raise ValueError(f"keepalive {what} {value} is out of range 1-{most}")


@dataclass(frozen=True)
class ServerPolicy:
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    scheme: Scheme = Scheme.CLIENT
    min_interval: float = DEFAULT_MIN_INTERVAL
    max_interval: float = DEFAULT_MAX_INTERVAL
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    max_connections: int = 1000
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_pending: int = DEFAULT_MAX_PENDING
    ping_strikes: int = DEFAULT_PING_STRIKES
    max_peer_rate: int = DEFAULT_MAX_PEER_RATE
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    drain_period: float = DEFAULT_DRAIN_PERIOD
    linger: float = LINGER_SECONDS
    tcp_keepalive: TcpKeepalive | None = None
    tcp_user_timeout: float | None = None

    def __post_init__(self) -> None:
        problems = grant_problems(
            self.interval_ms, self.timeout_ms, self.min_interval_ms, self.max_interval_ms
        )
        if self.handshake_timeout <= 0:
            problems.append("the handshake timeout must be positive")
        if self.max_connections < 1:
            problems.append("max connections must be at least 1")
        if not MIN_MAX_PAYLOAD <= self.max_payload <= ABSOLUTE_MAX_PAYLOAD:
            problems.append("max frame payload must be between 1 KiB and 4 GiB")
        if self.max_pending < self.max_payload:
            problems.append("max pending output must hold at least one maximum-size frame")
        if self.ping_strikes < 1:
            problems.append("ping strikes must be at least 1")
        if self.max_peer_rate < 0:
            problems.append("the peer rate cannot be negative (0: no limit)")
        if self.max_handshakes < 1:
            problems.append("max handshakes must be at least 1")
        if self.shutdown_grace < 0 or self.linger < 0:
            problems.append("grace and linger periods cannot be negative")
        if not 0 <= self.drain_period_ms <= U32_MAX:
            problems.append(f"the drain period must be from 0 to {U32_MAX // 1000} s")
        if self.tcp_user_timeout is not None and not (
            0.001 <= self.tcp_user_timeout <= MAX_TCP_USER_TIMEOUT_MS / 1000
        ):
            problems.append(
                f"TCP user timeout must be from 0.001 to {MAX_TCP_USER_TIMEOUT_MS / 1000} s"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def interval_ms(self) -> int:
        return seconds_to_ms(self.interval)

    @property
    def timeout_ms(self) -> int:
        return seconds_to_ms(self.timeout)

    @property
    def drain_period_ms(self) -> int:
        """The drain period, which version 2's WELCOME states as RECONNECT_WINDOW."""
        return seconds_to_ms(self.drain_period)

    @property
    def min_interval_ms(self) -> int:
        return seconds_to_ms(self.min_interval)

    @property
    def max_interval_ms(self) -> int:
        return seconds_to_ms(self.max_interval)

    def grant(self, requested_ms: int) -> tuple[int, int]:
        """(interval_ms, timeout_ms) for a client that asked for ``requested_ms``."""
        return grant(
            self.interval_ms,
            self.timeout_ms,
            self.min_interval_ms,
            self.max_interval_ms,
            requested_ms,
        )


# --- conformance checkers -----------------------------------------------------------
# The defaults of ``hbloop check`` and ``hbloop check-client``, here rather than in the
# checkers so that the command line's settings know them without importing a checker.

# How long the peer under check may take over an answer it owes at once (WELCOME, PONG,
# ERROR, its FIN), and over reading what the checker sends: generous, as it may share
# a loaded machine with the checker. Every wait has such a deadline, however many
# heartbeats the peer sends meanwhile (--answer-timeout).
CHECK_ANSWER_TIMEOUT = 5.0

# The interval the liveness cases ask for by default: short so that a run takes
# seconds, yet well above the hbloop server's 0.1 s minimum.
CHECK_PROBE_INTERVAL = 0.5

# Time-based cases that would wait longer than this are skipped rather than run.
CHECK_MAX_WAIT = 20.0

# The duplicate-name policies a server may announce to the checker (protocol.md P1, P2).
CHECK_DUPLICATE_POLICIES = ("refuse", "replace")

# How long a client spawned for a case may take to connect (an interpreter starting on
# a loaded machine): generous, as it is not what is being judged.
CHECK_CLIENT_START_TIMEOUT = 30.0

# How long a client that must not reconnect (CLOSE TAKEN_OVER, H8) is watched.
CHECK_CLIENT_QUIET_WINDOW = 3.0

# The client's handshake deadline (H9) when not told otherwise: hbloop's clients' 10 s.
CHECK_CLIENT_HANDSHAKE_TIMEOUT = 10.0
