"""The benchmark's settings and their defaults."""

from __future__ import annotations

from dataclasses import dataclass

# Exit code for a usage error, a missing dependency, or a bench that could not run.
EXIT_ERROR = 2

DEFAULT_CLIENTS = 10_000

# One heartbeat a second per client, with hbloop's 3x timeout ratio: 10,000 clients
# then make 10,000 heartbeats a second, so that the default 30 s window holds 300,000,
# well past the 50,000 below which report.py calls CPU figures noise.
DEFAULT_INTERVAL = 1.0
DEFAULT_TIMEOUT = 3.0

# Seconds of steady state measured after the ramp.
DEFAULT_DURATION = 30.0

# Connects per second over all workers. Linux caps the accept queue at 4096
# (net.core.somaxconn); 2,000 a second keeps it short even if the server stalls.
DEFAULT_CONNECT_RATE = 2000.0

# Connects not yet answered by WELCOME, over all workers, for each server process the
# clients need (bench.sizing.max_in_flight): a quarter of one process's accept queue,
# so a slow server never sees its queue overflow (which would look like connect
# timeouts, not like the server's fault).
DEFAULT_MAX_IN_FLIGHT = 1024


# `--redis`: connects and disconnects timed with and without presence; members of the
# node killed with SIGKILL; seconds Redis is stopped, and clients heartbeating
# meanwhile (issue 11's targets: a 30 s outage under 10,000 clients).
DEFAULT_CHURN = 2000
DEFAULT_KILL_CLIENTS = 1000
DEFAULT_OUTAGE = 30.0
DEFAULT_OUTAGE_CLIENTS = 10_000

# --redis --faults (bench.faults): issue 17's Redis stop (15 s) and partition (20 s),
# and a takeover fight whose event rate is read after its first FIGHT_SETTLE seconds.
DEFAULT_FAULT_STOP = 15.0
DEFAULT_FAULT_PARTITION = 20.0
FIGHT_SETTLE = 10.0
DEFAULT_FAULT_FIGHT = FIGHT_SETTLE + 5.0


# With --stall, the server is stopped this many seconds into the window, so that the
# clients are all in their steady state first.
STALL_AFTER = 1.0


# --storm (bench.storm): what strikes the server (or, leave, its clients), which has
# this many workers (one of them is what kill-worker kills).
STORM_KINDS = ("kill-worker", "restart", "hup", "leave")
STORM_WORKERS = 2


@dataclass(frozen=True)
class BenchConfig:
    clients: int = DEFAULT_CLIENTS
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    duration: float = DEFAULT_DURATION
    connect_rate: float = DEFAULT_CONNECT_RATE
    zombies: float = 0.0  # fraction of the clients that go silent after the ramp
    workers: int | None = None  # None: as few as the descriptor limit allows
    max_in_flight: int | None = None  # None: DEFAULT_MAX_IN_FLIGHT per server process
    server_args: tuple[str, ...] = ()  # extra arguments for a spawned `hbloop serve`
    flooders: int = 0  # flooding connections beside the clients, during the window
    flood_kind: str = "pong"  # what they stream: unsolicited PONGs or empty DATA
    stall: float = 0.0  # seconds the spawned server is stopped (SIGSTOP) in the window
    storm: str | None = None  # STORM_KINDS: struck in the window, clients reconnect

    @property
    def zombie_count(self) -> int:
        return round(self.clients * self.zombies)
