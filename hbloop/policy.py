"""Server policy: every interval, limit and consequence the operator can tune.

The loop knows nothing of heartbeats and the protocol knows nothing of time; this
module is where "how often", "how long" and "how much" are decided, and checked once
at start-up so that a bad combination is a clear error rather than odd behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hbloop.wire import DEFAULT_MAX_PAYLOAD, Scheme

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
# never speaks (or trickles bytes) would otherwise be held forever.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

# Per-connection cap on output the peer has not read yet. A peer behind it by more
# is a slow consumer and is closed; this bounds the server's memory per peer.
DEFAULT_MAX_PENDING = 256 * 1024

# A PING arriving less than this fraction of the granted interval after the previous
# one is a strike; MAX_PING_STRIKES strikes in a row close the connection
# (gRPC's "too_many_pings"). Half an interval leaves room for jittered clients.
MIN_PING_SPACING = 0.5
DEFAULT_PING_STRIKES = 3

# After sending CLOSE or ERROR the server half-closes and waits this long for the
# peer's FIN before releasing the socket, so the frame is read rather than lost to an
# RST triggered by unread input.
LINGER_SECONDS = 2.0

# On SIGTERM, how long pending output (CLOSE frames included) may take to drain.
DEFAULT_SHUTDOWN_GRACE = 5.0

# Descriptors kept back from the connection limit for the listener, epoll, the
# signal socketpair, the spare EMFILE descriptor, logs, metrics and handshakes in
# flight.
RESERVED_FDS = 64

# Linux caps the accept queue at net.core.somaxconn (4096 here).
DEFAULT_BACKLOG = 4096


def seconds_to_ms(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass(frozen=True)
class TcpKeepalive:
    """Kernel keepalive probes: a supplement to heartbeats, never a replacement."""

    idle: int
    interval: int
    count: int


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
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    linger: float = LINGER_SECONDS
    tcp_keepalive: TcpKeepalive | None = None
    tcp_user_timeout: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.min_interval > self.max_interval:
            problems.append(
                f"the minimum interval {self.min_interval:g}s is above the maximum "
                f"{self.max_interval:g}s"
            )
        elif not self.min_interval <= self.interval <= self.max_interval:
            problems.append(
                f"interval {self.interval:g}s must lie within "
                f"[{self.min_interval:g}s, {self.max_interval:g}s]"
            )
        if self.min_interval <= 0:
            problems.append("the minimum interval must be positive")
        if self.timeout < MIN_TIMEOUT_RATIO * self.interval:
            problems.append(
                f"timeout {self.timeout:g}s must be at least {MIN_TIMEOUT_RATIO:g}x "
                f"the interval {self.interval:g}s"
            )
        if self.handshake_timeout <= 0:
            problems.append("the handshake timeout must be positive")
        if self.max_connections < 1:
            problems.append("max connections must be at least 1")
        if not 1024 <= self.max_payload <= 0xFFFFFFFF:
            problems.append("max frame payload must be between 1 KiB and 4 GiB")
        if self.max_pending < self.max_payload:
            problems.append("max pending output must hold at least one maximum-size frame")
        if self.ping_strikes < 1:
            problems.append("ping strikes must be at least 1")
        if self.shutdown_grace < 0 or self.linger < 0:
            problems.append("grace and linger periods cannot be negative")
        if self.tcp_user_timeout is not None and self.tcp_user_timeout <= 0:
            problems.append("TCP user timeout must be positive")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def timeout_ratio(self) -> float:
        return self.timeout / self.interval

    def grant(self, requested_ms: int) -> tuple[int, int]:
        """Return (interval_ms, timeout_ms) for a client that asked for ``requested_ms``.

        0 asks for the default. The interval is clamped to the configured bounds and
        the timeout keeps the configured timeout/interval ratio, as MQTT derives its
        limit from the keep-alive the client chose.
        """
        interval = self.interval if requested_ms == 0 else requested_ms / 1000
        interval = min(max(interval, self.min_interval), self.max_interval)
        interval_ms = max(1, seconds_to_ms(interval))
        timeout_ms = math.ceil(interval_ms * self.timeout_ratio)
        return interval_ms, timeout_ms

    def ping_floor(self, interval: float) -> float:
        """PINGs arriving sooner than this after the previous one are strikes."""
        return MIN_PING_SPACING * interval


def next_ping_at(last_sent: float, last_recv: float, last_ping: float, interval: float) -> float:
    """When the pinging side sends its next PING (protocol.md, rule T3).

    A PING is due once either direction has been quiet for an interval, and never
    sooner than an interval after the previous PING; traffic in both directions
    therefore postpones it.
    """
    return max(min(last_sent, last_recv), last_ping) + interval
