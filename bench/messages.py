"""What the orchestrator and the load-generator workers say to each other over a pipe."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs to run its share of the clients."""

    worker: int
    target: tuple[str, int]
    indices: range  # global client indices (their phases: bench.loadgen.phase)
    interval: float  # requested in HELLO; PINGs follow the granted one
    connect_rate: float  # this worker's connects per second
    max_in_flight: int  # connects not yet answered by WELCOME
    sources: list[str]  # loopback source addresses, empty to let the kernel choose
    epoch: float  # time.monotonic() origin shared by every process (CLOCK_MONOTONIC)
    zombies: int
    tls_ca: str | None = None  # connect with TLS, trusting this certificate file
    reconnect: bool = False  # --storm: a dropped client connects again at once


class Command(enum.Enum):
    ZOMBIFY = "zombify"  # the ramp is over: silence the zombies now
    STOP = "stop"  # close every client and send the Final report
    LEAVE = "leave"  # --storm leave: close every client at once, then go on reporting


@dataclass
class Counts:
    """Connection counters, totals since the start."""

    open: int = 0  # open now, zombies included until the server closes them
    established: int = 0  # handshakes completed
    connect_failures: int = 0  # refused, timed out, or closed before WELCOME
    protocol_errors: int = 0  # ERROR frames and malformed or unexpected frames
    dropped: int = 0  # non-zombies the server closed without being asked
    timeouts: int = 0  # of those, closed with CLOSE TIMEOUT: live peers judged silent

    @property
    def errors(self) -> int:
        return self.connect_failures + self.protocol_errors

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass
class Tick:
    """One worker's figures for the second ``[epoch + second - 1, epoch + second)``."""

    worker: int
    second: int
    counts: Counts
    pongs: int  # in this second
    rtt: bytes  # encoded HdrHistogram of this second's round trips, microseconds
    ramp_done: bool  # every client has connected or failed
    late: float = 0.0  # how long after the second's end the worker sent this, s


@dataclass
class Final:
    """Sent once, after STOP."""

    worker: int
    counts: Counts
    zombies: int
    zombie_late: list[float] = field(default_factory=list)  # seconds past the timeout
    zombies_unclosed: int = 0
    skipped_slots: int = 0  # PING slots the worker fell an interval behind on
    error_samples: list[str] = field(default_factory=list)  # the first few, for humans
    # With reconnect (--storm): each drop as (client index, time, ended without a CLOSE
    # frame, as a killed process's peers are), each return as (client index, time
    # welcomed again), and the returns' handshakes (connect to WELCOME), encoded.
    drops: list[tuple[int, float, bool]] = field(default_factory=list)
    returns: list[tuple[int, float]] = field(default_factory=list)
    handshakes: bytes = b""
