"""The counters the I/O shells bump on the hot path: plain integer attributes, read
by ``hbloop.ops.stats`` once a second."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hbloop.core.histogram import Buckets
from hbloop.core.session import HEARTBEAT_BUCKETS


class IoCounters:
    """Traffic totals, shared by every channel that reports into them."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "frames_in",
        "frames_out",
        "heartbeats",
        "heartbeat_intervals",
    )

    def __init__(self) -> None:
        self.bytes_in = self.bytes_out = self.frames_in = self.frames_out = 0
        # Counted by the sessions: PING and PONG frames received, and the silence
        # each of them ended.
        self.heartbeats = 0
        self.heartbeat_intervals = Buckets(HEARTBEAT_BUCKETS)



class ServerStats(IoCounters):
    __slots__ = (
        "accepted",
        "connections",
        "peak",
        "closed",
        "shed",
        "auth_refused",
        "tls_handshakes",
        "tls_handshakes_refused",
        "tls_handshakes_failed",
    )

    def __init__(self) -> None:
        super().__init__()
        self.accepted = 0  # sockets accepted, handshaken or not
        self.connections = 0  # peers past the handshake, now
        self.peak = 0
        self.closed: Counter[str] = Counter()  # by Reason value
        self.shed = 0  # accepted and refused at once: no descriptors, or handshakes full
        self.auth_refused: Counter[str] = Counter()  # HELLOs refused, by Refusal.check
        self.tls_handshakes = 0  # TLS handshakes completed
        self.tls_handshakes_refused = 0  # closed at accept: over the handshake rate
        self.tls_handshakes_failed = 0  # TLS errors and plain text before the handshake

    def snapshot(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "peak": self.peak,
            "accepted": self.accepted,
            "closed": dict(self.closed),
            "shed": self.shed,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "heartbeats": self.heartbeats,
            "auth_refused": dict(self.auth_refused),
            "tls_handshakes": self.tls_handshakes,
            "tls_handshakes_refused": self.tls_handshakes_refused,
            "tls_handshakes_failed": self.tls_handshakes_failed,
            "heartbeat_interval": self.heartbeat_intervals.to_json(),
        }
