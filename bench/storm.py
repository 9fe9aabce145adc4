"""``python -m bench --storm KIND``: a fault under load, and the reconnect storm after it.

The bench starts ``hbloop serve --workers 2`` (or ``--workers auto`` when one process
cannot hold the clients: ``bench.sizing``); its clients reconnect at once when
dropped (``WorkerPlan.reconnect``). ``STALL_AFTER`` seconds into the window it strikes:

* ``kill-worker``: SIGKILL to the worker with the most connections. Its clients see
  their connection end without a CLOSE frame; a client closed *with* one was on the
  other worker, and counts as a drop elsewhere (target: 0).
* ``restart``: SIGTERM to the whole server (its graceful shutdown), then the same
  command line once it has exited; every client is affected. The bench holds the
  listening socket and passes it with ``--fd``, as systemd's socket activation does,
  so the reconnects made while no server runs wait in its backlog (and, past it, in
  their SYN retries) rather than being refused.
* ``hup``: the server's ``--config`` file is changed in a setting that needs new
  processes, then SIGHUP: the supervisor's rolling restart; every client is affected,
  and none may be closed twice.
* ``leave``: every client closes (CLOSE NORMAL) in the same moment and none comes back:
  a mass disconnect. The bench then watches for LEAVE_WATCH (the window ends no
  sooner), long enough for any node whose lease the leaves starved to be reaped; with
  ``--redis``, its figure is the presence flaps (target: 0).

Figures, from the load generators' drop and return times on the shared monotonic clock:
seconds from the strike until 50, 99 and 100% of the affected clients were welcomed
again, the peak accept rate (handshakes completed in one second), the returns'
handshake p99, drops elsewhere, false timeouts (CLOSE TIMEOUT to a live client) and
clients closed more than once.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.histograms import merge_encoded, new_histogram, summary_ms
from bench.messages import Final
from bench.redis_server import RedisProcess
from bench.results import RunResult
from bench.servers import START_TIMEOUT, ServerUnderTest, hold_port, listening
from hbloop.core.policy import DEFAULT_BACKLOG
from hbloop.presence.node import DEFAULT_NODE_TTL, DEFAULT_REAP_INTERVAL, JITTER

# The reason of a leave event for a member reaped with its node (hbloop.presence).
NODE_LOST = "node_lost"

# The hup storm's config file toggles this setting between these values: one that
# needs new processes (not applied in place), and harmless to a running fleet.
HUP_KEY = "handshake-timeout"
HUP_VALUES = (10.0, 11.0)

# How long the restart storm's server may take to listen again: its workers (26 at
# 400,000 clients) start while every client's reconnects load the machine.
RESTART_TIMEOUT = 4 * START_TIMEOUT

# After --storm leave, how long the bench watches: a presence node's lease (hbloop
# serve's default --node-ttl) and the longest reap interval that follows it, so that a
# lease the leaves starved shows as members reaped (node_lost) within the run.
LEAVE_WATCH = DEFAULT_NODE_TTL + DEFAULT_REAP_INTERVAL * (1 + JITTER)

# The storms' redis-server runs at this nice value: in production Redis has cores of
# its own, and on the two cores the bench shares with the server's and the generator's
# two dozen processes, a fair share left it behind a 200,000-client restart's joins
# (leases unconfirmed for 12 s against their 10 s TTL, 89,034 presence flaps; 0 at -10).
REDIS_NICE = -10

# Shares of the affected clients whose return is timed (50, 99 and 100%).
RETURN_SHARES = (0.5, 0.99, 1.0)


def redis_priority(redis: RedisProcess) -> str:
    """The line that says at which priority the storm's redis-server runs."""
    if redis.niced:
        return f"redis-server at nice {redis.nice}, a stand-in for Redis on cores of its own"
    return (
        f"redis-server at the default priority: nice {redis.nice} takes root; on a machine "
        "this busy, presence may then measure Redis' share of the CPU"
    )


@dataclass
class Strike:
    kind: str
    at: float  # time.monotonic() of the signal
    victims: int | None  # kill-worker: the killed worker's descriptors; leave: the clients


@dataclass
class StormFigures:
    kind: str
    affected: int  # distinct clients dropped (kill-worker: without a CLOSE frame; leave: left)
    victims_counted: int | None  # kill-worker: the killed worker's descriptors
    returned: int  # of the affected, welcomed again by the end of the window
    return_s: dict[str, float | None]  # "p50"/"p99"/"p100": from the strike, seconds
    peak_accept_rate: int  # returns welcomed in the busiest second after the strike
    handshake_ms: dict[str, float | None]  # the returns' connect to WELCOME
    dropped_elsewhere: int  # kill-worker: clients closed with a CLOSE frame
    false_timeouts: int  # live clients closed with CLOSE TIMEOUT
    closed_twice: int  # clients dropped more than once after the strike
    presence_flaps: int | None = None  # with --redis: members of live nodes reaped

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Setup:
    """A storm's server arguments, run after run; with ``redis``, each run's server is
    a presence node pool of its own key prefix there, and ``flaps`` reads its events."""

    def __init__(self, kind: str, scratch: Path, redis: RedisProcess | None) -> None:
        self.kind = kind
        self.scratch = scratch
        self.redis = redis
        self.prefix = ""

    def held(self, host: str) -> socket.socket | None:
        """The listener the bench holds for the spawned server, with ``--fd``: a
        restart's, so that the port listens while no server runs, as under systemd's
        socket activation (deploy/systemd/hbloop.socket); None for the other storms."""
        return hold_port(host, DEFAULT_BACKLOG) if self.kind == "restart" else None

    def server_args(self) -> tuple[str, ...]:
        """What the storm adds to the next spawned ``hbloop serve``, besides its
        workers (at least ``STORM_WORKERS``: ``bench.sizing.server_args``)."""
        args: tuple[str, ...] = ()
        if self.kind == "hup":
            _hup_config(self.scratch).write_text(_hup_line(0))
            args += ("--config", str(_hup_config(self.scratch)))
        if self.redis is not None:
            self.prefix = f"storm-{uuid.uuid4().hex[:8]}:"
            args += ("--redis", self.redis.url, "--redis-prefix", self.prefix)
        return args

    def count_flaps(self, result: RunResult) -> None:
        """Presence flaps of the last run: its members reaped as ``node_lost`` although
        their node lived; with ``kill-worker``, the killed node's (the node with the
        most such leaves) are its due and not counted."""
        if self.redis is None or result.storm is None:
            return
        raw = self.redis.command("XRANGE", f"{self.prefix}events", "-", "+")
        lost: Counter[str] = Counter()
        for _, flat in raw:
            event = {k.decode(): v.decode() for k, v in zip(flat[::2], flat[1::2], strict=True)}
            if event.get("event") == "leave" and event.get("reason") == NODE_LOST:
                lost[event["node"]] += 1
        counts = sorted(lost.values(), reverse=True)
        result.storm.presence_flaps = sum(counts[1:] if self.kind == "kill-worker" else counts)


def _hup_line(which: int) -> str:
    return f"{HUP_KEY} = {HUP_VALUES[which]}\n"


def _hup_config(scratch: Path) -> Path:
    return scratch / "storm.toml"


def strike(kind: str, server: ServerUnderTest, scratch: Path) -> Strike:
    process = server.process
    if process is None or server.argv is None:
        raise RuntimeError("--storm strikes a server the bench starts")
    if kind == "kill-worker":
        victim, count = _busiest_worker(psutil.Process(process.pid))
        at = time.monotonic()
        victim.kill()
        return Strike(kind, at, count)
    if kind == "hup":
        config = _hup_config(scratch)  # toggled: a second run strikes its server too
        config.write_text(_hup_line(1 if config.read_text() == _hup_line(0) else 0))
        at = time.monotonic()
        process.send_signal(signal.SIGHUP)
        return Strike(kind, at, None)
    at = time.monotonic()
    process.terminate()  # its graceful shutdown; start_again once it has exited
    return Strike(kind, at, None)


def _busiest_worker(supervisor: psutil.Process) -> tuple[psutil.Process, int]:
    """The worker with the most descriptors, and how many: its connections and the few
    of its own (listener, epoll, signal pair). Counted with one listing of
    /proc/PID/fd each: psutil's net_connections parses every socket of the machine per
    process, and reading each descriptor's link took 56 s for 400,000 connections on a
    loaded machine, while the load generators waited for the bench to read them."""

    def descriptors(worker: psutil.Process) -> int:
        with contextlib.suppress(psutil.NoSuchProcess):
            return worker.num_fds()
        return 0

    counted = [(descriptors(w), w) for w in supervisor.children()]
    count, worker = max(counted, key=lambda pair: pair[0])
    return worker, count


def start_again(server: ServerUnderTest) -> None:
    """The restart storm's second half: the exited server's command line again, on its
    port. It returns at once: ``restarted`` says when the new server listens, while the
    caller reads the load generators' reports (none may block on a full pipe)."""
    assert server.argv is not None
    argv = server.argv
    port = str(server.address[1])
    again = [port if i and argv[i - 1] == "--port" else arg for i, arg in enumerate(argv)]
    server.start(again)


def restarted(server: ServerUnderTest) -> bool:
    """Whether the server ``start_again`` started listens yet (ServerStartError if it
    exited). With the listener held by the bench, the port listens throughout: the
    connects of the clients wait in its backlog, and the bench goes on at once."""
    assert server.process is not None
    return listening(server.process, server.address[1])


def figures(hit: Strike, finals: list[Final], end: float) -> StormFigures:
    """The storm's figures from the load generators' reports up to ``end``. The peak
    accept rate counts the returns by the second of their WELCOME, from the strike:
    not the differences of the seconds' reports, which a generator running late
    bunches (one, 20 s late through a restart, gave 14,917 a second at a 4,000 cap)."""
    drops = [d for f in finals for d in f.drops if d[1] >= hit.at]
    if hit.kind == "kill-worker":
        affected = {index for index, _, abrupt in drops if abrupt}
        elsewhere = {index for index, _, abrupt in drops if not abrupt}
    else:
        affected, elsewhere = {index for index, _, _ in drops}, set()
    back: dict[int, float] = {}
    per_second: Counter[int] = Counter()
    for final in finals:
        for index, when in final.returns:
            if index in affected and hit.at <= when <= end:
                back[index] = max(back.get(index, when), when)
                per_second[int(when - hit.at)] += 1
    times = sorted(when - hit.at for when in back.values())
    return_s: dict[str, float | None] = {}
    for share in RETURN_SHARES:
        needed = max(1, round(share * len(affected)))
        key = f"p{share * 100:g}"
        return_s[key] = times[needed - 1] if len(times) >= needed else None
    handshakes = new_histogram()
    for final in finals:
        if final.handshakes:
            merge_encoded(handshakes, final.handshakes)
    closed = Counter(index for index, _, _ in drops)
    left = hit.victims if hit.kind == "leave" else None
    return StormFigures(
        kind=hit.kind,
        affected=len(affected) if left is None else left,
        victims_counted=hit.victims,
        returned=len(back),
        return_s=return_s,
        peak_accept_rate=max(per_second.values(), default=0),
        handshake_ms=summary_ms(handshakes, ("p50", "p99")),
        dropped_elsewhere=len(elsewhere),
        false_timeouts=sum(f.counts.timeouts for f in finals),
        closed_twice=sum(1 for n in closed.values() if n > 1),
    )
