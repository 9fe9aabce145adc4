"""Server statistics: plain counters bumped on the hot path, read by reporters."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hbloop.channel import IoCounters


class ServerStats(IoCounters):
    __slots__ = ("accepted", "connections", "peak", "heartbeats", "closed", "shed")

    def __init__(self) -> None:
        super().__init__()
        self.accepted = 0  # sockets accepted, handshaken or not
        self.connections = 0  # peers past the handshake, now
        self.peak = 0
        self.heartbeats = 0  # PING and PONG frames received
        self.closed: Counter[str] = Counter()  # by Reason value
        self.shed = 0  # accepted and dropped at once for lack of descriptors

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
        }
