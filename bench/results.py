"""The figures of one run against one server, as the report and the JSON see them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hdrh.histogram import HdrHistogram

from bench.histograms import new_histogram, summary_ms
from bench.messages import Counts

if TYPE_CHECKING:
    from bench.storm import StormFigures


@dataclass
class Second:
    """The whole run's figures for one second of the timeline."""

    second: int  # since the run's epoch
    open: int
    heartbeats: int
    rtt_ms: dict[str, float | None]  # p50, p99, max of this second's round trips
    dropped: int
    errors: int
    established: int = 0  # handshakes completed since the start
    # How long after the second's end its last load generator's report was sent, and
    # the bench had read them all: the generator's delay, and the bench's on top of it.
    generator_late: float = 0.0
    bench_late: float = 0.0


@dataclass
class ServerFigures:
    """psutil's view of a spawned server over the steady-state window."""

    cpu_user_s: float
    cpu_system_s: float  # the kernel's share: syscalls, and on loopback the TCP path
    rss_before_kb: float  # before any connection
    rss_steady_kb: float  # at the end of the window
    connections: int  # open at the end of the window
    heartbeats: int  # PONGs received by the clients in the window
    cpu_ramp_s: float  # user + system over the ramp: accepts, handshakes (TLS's too)
    connects: int  # handshakes completed (by the end of the window)

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_user_s + self.cpu_system_s

    @property
    def cpu_us_per_heartbeat(self) -> float | None:
        return self.cpu_seconds * 1e6 / self.heartbeats if self.heartbeats else None

    @property
    def cpu_ms_per_connect(self) -> float | None:
        """Server CPU per connection set up, heartbeats during the ramp included."""
        return self.cpu_ramp_s * 1000 / self.connects if self.connects else None

    @property
    def rss_kb_per_conn(self) -> float | None:
        if not self.connections:
            return None
        return (self.rss_steady_kb - self.rss_before_kb) / self.connections


@dataclass
class RunResult:
    server: str
    clients: int
    counts: Counts = field(default_factory=Counts)
    ramp_s: float = 0.0
    window_s: float = 0.0
    heartbeats: int = 0  # answered in the steady-state window
    rtt: HdrHistogram = field(default_factory=new_histogram)  # steady state, microseconds
    figures: ServerFigures | None = None  # None for a server the bench did not start
    zombies: int = 0
    zombies_unclosed: int = 0
    zombie_late: HdrHistogram = field(default_factory=new_histogram)  # microseconds
    zombies_early: int = 0  # closed before their timeout had passed
    skipped_slots: int = 0
    error_samples: list[str] = field(default_factory=list)
    seconds: list[Second] = field(default_factory=list)
    flooders: int = 0  # flooding connections beside the clients (--flooders)
    flood_frames: int = 0  # frames they sent
    stalled_s: float = 0.0  # the server was stopped this long (--stall)
    generator_processes: int = 0  # load-generator processes, besides the bench's own
    generator_cpu_ramp_s: float = 0.0  # their CPU (and the bench's) over the ramp
    generator_max_in_flight: int = 0  # connects awaiting WELCOME at once, all processes
    generator_cpu_window_s: float = 0.0  # and over the steady-state window
    server_processes: int = 0  # a spawned server's, at the end of the window
    storm: StormFigures | None = None  # --storm

    @property
    def heartbeats_per_s(self) -> float:
        return self.heartbeats / self.window_s if self.window_s else 0.0

    @property
    def rtt_p99_ms(self) -> float | None:
        return summary_ms(self.rtt)["p99"]

    def to_json(self) -> dict[str, Any]:
        figures = self.figures
        return {
            "server_name": self.server,
            "clients": self.clients,
            "connected": self.counts.established,
            "dropped": self.counts.dropped,
            "errors": self.counts.errors,
            "connect_failures": self.counts.connect_failures,
            "protocol_errors": self.counts.protocol_errors,
            "ramp_s": self.ramp_s,
            "window_s": self.window_s,
            "heartbeats": self.heartbeats,
            "heartbeats_per_s": self.heartbeats_per_s,
            "skipped_slots": self.skipped_slots,
            "generator": {
                "processes": self.generator_processes,
                "cpu_ramp_s": self.generator_cpu_ramp_s,
                "cpu_window_s": self.generator_cpu_window_s,
                "max_in_flight": self.generator_max_in_flight,
            },
            "rtt_ms": summary_ms(self.rtt),
            "server": {
                "cpu_us_per_heartbeat": figures and figures.cpu_us_per_heartbeat,
                "cpu_ms_per_connect": figures and figures.cpu_ms_per_connect,
                "cpu_ramp_s": figures and figures.cpu_ramp_s,
                "rss_kb_per_conn": figures and figures.rss_kb_per_conn,
                "cpu_user_s": figures and figures.cpu_user_s,
                "cpu_system_s": figures and figures.cpu_system_s,
                "rss_before_kb": figures and figures.rss_before_kb,
                "rss_steady_kb": figures and figures.rss_steady_kb,
                "connections_at_rss": figures and figures.connections,
                "processes": self.server_processes,
            },
            "zombies": {
                "count": self.zombies,
                "closed": self.zombies - self.zombies_unclosed,
                "unclosed": self.zombies_unclosed,
                "early": self.zombies_early,
                "late_ms": summary_ms(self.zombie_late, ("p50", "p99")),
            },
            "error_samples": self.error_samples,
            "timeline": [vars(second) for second in self.seconds],
            # Every client is a bystander of the flood, or a live peer through the stall:
            # the server must drop none of them, and judge none silent.
            "flood": (
                self.flooders
                and {
                    "flooders": self.flooders,
                    "frames_sent": self.flood_frames,
                    "bystanders_dropped": self.counts.dropped,
                    "false_timeouts": self.counts.timeouts,
                    "bystander_rtt_ms": summary_ms(self.rtt),
                }
            )
            or None,
            "stall": (
                self.stalled_s
                and {
                    "seconds": self.stalled_s,
                    "live_peers_closed": self.counts.dropped,
                    "false_timeouts": self.counts.timeouts,
                }
            )
            or None,
            "storm": None if self.storm is None else self.storm.to_json(),
        }
