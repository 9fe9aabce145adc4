"""``python -m bench --redis``: what cluster-wide presence costs, and its bounds.

Against a redis-server of its own (on a Unix socket), in one invocation:

1. **Heartbeat CPU**: the usual open-loop workload (``--clients``, ``--interval``,
   ``--duration``) against ``hbloop serve`` without presence, then with ``--redis``;
   presence must cost nothing per heartbeat (target: within 5 %).
2. **Connect/disconnect CPU and join-to-visible latency**: ``--churn`` connections made
   one after the other (HELLO, WELCOME, CLOSE, the server's FIN) against a server
   without presence and one with it; server CPU per connection. With presence, a
   separate process follows the event stream (``XREAD BLOCK``), and each join's
   latency runs from the HELLO's sending to the event's arrival (target: p99 < 50 ms).
3. **A killed node**: two nodes; ``--kill-clients`` connect to the second, which then
   gets SIGKILL; the time until Redis no longer lists any of its members (target:
   15 s; the bound is ``--node-ttl`` + ``--reap-interval`` x 1.2).
4. **A Redis outage**: ``--outage-clients`` heartbeat through ``--outage`` seconds of
   Redis being down (killed, then started empty, as after a crash without
   persistence); no heartbeat may be lost, and the time from Redis' return until it
   lists every member again is measured (target: 5 s).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from bench import report
from bench.config import BenchConfig
from bench.histograms import new_histogram, record_seconds, summary_ms
from bench.orchestrator import Run, run_and_stop
from bench.redis_server import RedisProcess
from bench.results import RunResult, Second
from bench.servers import ServerUnderTest, spawn_hbloop
from hbloop.core.wire import HEADER_SIZE, WELCOME_STRUCT, Code, encode_close, encode_hello
from hbloop.presence.node import JITTER
from hbloop.presence.redis_link import BlockingRedis, parse_url
from hbloop.presence.scripts import Keys
from hbloop.presence.tools import follow, last_id

# The servers of phases 2 and 3 grant a long interval: their clients never need to
# heartbeat while the phase runs.
IDLE_INTERVAL = 60.0
IDLE_TIMEOUT = 180.0

# Polling Redis for "all members gone" or "all members back": fine enough for figures
# given in seconds, cheap for Redis.
POLL_STEP = 0.02

# Phase deadlines: a phase that takes longer has failed.
SOCKET_TIMEOUT = 10.0
PHASE_TIMEOUT = 120.0

# The Redis outage begins this many seconds into the steady-state window, and the
# window lasts this much longer than the outage: the 5 s resync target and a second.
OUTAGE_START = 2
OUTAGE_TAIL = 6.0

TARGETS = {
    "hb_cpu_ratio": 1.05,
    "join_visible_p99_ms": 50.0,
    "stale_s": 15.0,
    "resync_s": 5.0,
}


@dataclass
class Figures:
    """Everything ``--redis`` measures."""

    hb_cpu_off_us: float | None = None
    hb_cpu_on_us: float | None = None
    churn: int = 0
    churn_cpu_off_us: float = 0.0
    churn_cpu_on_us: float = 0.0
    join_visible_ms: dict[str, float | None] | None = None
    kill_clients: int = 0
    stale_bound_s: float = 0.0
    stale_s: float | None = None
    outage_clients: int = 0
    outage_s: float = 0.0
    outage_dropped: int = 0
    outage_errors: int = 0
    outage_rtt_ms: dict[str, float | None] | None = None
    resync_s: float | None = None

    @property
    def hb_cpu_ratio(self) -> float | None:
        if self.hb_cpu_on_us is None or not self.hb_cpu_off_us:
            return None
        return self.hb_cpu_on_us / self.hb_cpu_off_us


def _presence_args(redis: RedisProcess, prefix: str, *extra: str) -> tuple[str, ...]:
    return ("--redis", redis.url, "--redis-prefix", prefix, *extra)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _node_of(redis: RedisProcess, keys: Keys, label: str) -> str:
    """The id of the node started with ``--node-id label``, once it has registered."""
    deadline = time.monotonic() + PHASE_TIMEOUT
    while time.monotonic() < deadline:
        members = redis.command("SMEMBERS", keys.nodes)
        assert isinstance(members, list)
        for node in members:
            if node.decode().startswith(f"{label}@"):
                return str(node.decode())
        time.sleep(POLL_STEP)
    raise RuntimeError(f"node {label} never registered")


def _wait(condition: Callable[[], bool], what: str) -> float:
    """Poll ``condition``; the time it took. RuntimeError past PHASE_TIMEOUT."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > PHASE_TIMEOUT:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(POLL_STEP)
    return time.monotonic() - start


def _handshake(address: tuple[str, int], name: str) -> socket.socket:
    """A connection that has said HELLO and read WELCOME."""
    sock = socket.create_connection(address, SOCKET_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(encode_hello(name, 0))
    welcome = b""
    while len(welcome) < HEADER_SIZE + WELCOME_STRUCT.size:
        data = sock.recv(HEADER_SIZE + WELCOME_STRUCT.size - len(welcome))
        if not data:
            raise RuntimeError(f"{name}: the server closed before WELCOME")
        welcome += data
    return sock


# --- phase 2: churn -------------------------------------------------------------------


def _watch_joins(url: str, prefix: str, count: int, pipe: Connection) -> None:
    """In a process of its own: the arrival time of each join event, and of the last
    leave, as ``({name: time}, last leave time)``."""
    keys = Keys(prefix)
    redis = BlockingRedis(parse_url(url), SOCKET_TIMEOUT, "bench-watch")
    after = last_id(redis, keys)
    pipe.send("ready")
    joins: dict[str, float] = {}
    leaves = 0
    for event in follow(redis, keys, after):
        now = time.monotonic()
        if event.fields["event"] == "join":
            joins[event.fields["name"]] = now
        else:
            leaves += 1
        if len(joins) >= count and leaves >= count:
            break
    pipe.send(joins)


def churn(
    server: ServerUnderTest, count: int, watch: tuple[str, str] | None
) -> tuple[float, dict[str, float | None] | None]:
    """Server CPU per connect+disconnect (us), and with ``watch`` (Redis URL, prefix) the
    join-to-visible latencies in ms."""
    assert server.process is not None
    process = psutil.Process(server.process.pid)
    watcher = None
    if watch is not None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        watcher = context.Process(target=_watch_joins, args=(*watch, count, child), daemon=True)
        watcher.start()
        if not parent.poll(PHASE_TIMEOUT) or parent.recv() != "ready":
            raise RuntimeError("the stream watcher did not start")
    sent: dict[str, float] = {}
    start = _cpu(process)
    for i in range(count):
        name = f"churn-{i}"
        sent[name] = time.monotonic()
        with contextlib.closing(_handshake(server.address, name)) as sock:
            sock.sendall(encode_close(Code.NORMAL))
            while sock.recv(4096):  # until the server's FIN: it has seen the CLOSE
                pass
    latency = None
    if watcher is not None:
        if not parent.poll(PHASE_TIMEOUT):
            raise RuntimeError("the stream watcher did not see every event")
        seen: dict[str, float] = parent.recv()
        watcher.join(SOCKET_TIMEOUT)
        histogram = new_histogram()
        for name, at in seen.items():
            record_seconds(histogram, at - sent[name])
        latency = summary_ms(histogram)
    return (_cpu(process) - start) * 1e6 / count, latency


# --- phase 3: a killed node -------------------------------------------------------------


def killed_node(redis: RedisProcess, clients: int, node_args: tuple[str, ...], host: str) -> float:
    """Seconds from a node's SIGKILL until Redis lists none of its ``clients``."""
    keys = Keys("bench-kill:")
    args = _presence_args(redis, keys.prefix, *node_args)
    survivor = spawn_hbloop(host, IDLE_INTERVAL, IDLE_TIMEOUT, (*args, "--node-id", "a"))
    victim = spawn_hbloop(host, IDLE_INTERVAL, IDLE_TIMEOUT, (*args, "--node-id", "b"))
    socks: list[socket.socket] = []
    try:
        node = _node_of(redis, keys, "b")
        socks = [_handshake(victim.address, f"kill-{i}") for i in range(clients)]
        _wait(lambda: redis.command("HLEN", keys.members(node)) == clients, "every member")
        assert victim.process is not None
        victim.process.kill()
        victim.process.wait()
        return _wait(lambda: not redis.command("EXISTS", keys.members(node)), "the reaper")
    finally:
        for sock in socks:
            sock.close()
        survivor.stop()
        victim.stop()


# --- phase 4: a Redis outage under load ---------------------------------------------------


class _Outage:
    """Stops Redis ``OUTAGE_START`` s into the window of ``run`` for ``seconds``, then
    starts it again (empty) and times the resync from a thread."""

    def __init__(
        self, redis: RedisProcess, keys: Keys, node: str, clients: int, seconds: float
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.node = node
        self.clients = clients
        self.seconds = seconds
        self.run: Run | None = None
        self.stopped_at: int | None = None
        self.resync_s: float | None = None
        self._thread: threading.Thread | None = None

    def on_second(self, result: RunResult, second: Second) -> None:
        print(report.progress_line(result, second), flush=True)
        assert self.run is not None
        first = self.run.window[0]
        if self.stopped_at is None and second.second >= first + OUTAGE_START:
            self.redis.stop()
            self.stopped_at = second.second
            print(f"[presence] Redis stopped for {self.seconds:g}s", flush=True)
        elif (
            self.stopped_at is not None
            and self._thread is None
            and second.second >= self.stopped_at + self.seconds
        ):
            self.redis.start()
            print("[presence] Redis is back (empty); timing the resync", flush=True)
            self._thread = threading.Thread(target=self._time_resync, daemon=True)
            self._thread.start()

    def _time_resync(self) -> None:
        members = self.keys.members(self.node)
        self.resync_s = _wait(lambda: self.redis.command("HLEN", members) == self.clients, "resync")
        print(f"[presence] every member is back {self.resync_s:.2f}s after Redis", flush=True)

    def finish(self) -> float | None:
        if self._thread is not None:
            self._thread.join(PHASE_TIMEOUT)
        return self.resync_s


def outage(
    redis: RedisProcess, config: BenchConfig, seconds: float, host: str
) -> tuple[RunResult, float | None]:
    keys = Keys("bench-outage:")
    duration = max(config.duration, OUTAGE_START + seconds + OUTAGE_TAIL)
    config = replace(config, duration=duration, zombies=0.0)
    args = (*config.server_args, *_presence_args(redis, keys.prefix, "--node-id", "o"))
    server = spawn_hbloop(host, config.interval, config.timeout, args)
    try:
        node = _node_of(redis, keys, "o")
        watcher = _Outage(redis, keys, node, config.clients, seconds)
        run = Run(config, server, watcher.on_second)
        watcher.run = run
        result = run.execute()
        return result, watcher.finish()
    finally:
        server.stop()


# --- the whole ----------------------------------------------------------------------------


def measure(
    config: BenchConfig,
    host: str,
    churn_count: int,
    kill_clients: int,
    outage_clients: int,
    outage_seconds: float,
    node_args: tuple[str, ...],
    stale_bound: float,
) -> tuple[Figures, list[RunResult]]:
    figures = Figures(churn=churn_count, kill_clients=kill_clients, stale_bound_s=stale_bound)
    figures.outage_clients, figures.outage_s = outage_clients, outage_seconds
    directory = Path(tempfile.mkdtemp(prefix="hbloop-bench-"))
    redis = RedisProcess(directory)
    runs: list[RunResult] = []
    try:
        print("[presence] 1. heartbeats without presence, then with it", flush=True)
        presence = _presence_args(redis, "bench-hb:", "--node-id", "hb", *node_args)
        for label, extra in (("off", ()), ("on", presence)):
            server = spawn_hbloop(
                host, config.interval, config.timeout, (*config.server_args, *extra)
            )
            result = run_and_stop(config, server)
            result.server = f"presence {label}"
            runs.append(result)
            cpu = result.figures.cpu_us_per_heartbeat if result.figures else None
            setattr(figures, f"hb_cpu_{label}_us", cpu)

        print(
            f"[presence] 2. {churn_count} connects and disconnects, without then with", flush=True
        )
        plain = spawn_hbloop(host, IDLE_INTERVAL, IDLE_TIMEOUT, config.server_args)
        try:
            figures.churn_cpu_off_us, _ = churn(plain, churn_count, None)
        finally:
            plain.stop()
        presence = _presence_args(redis, "bench-churn:", "--node-id", "churn", *node_args)
        present = spawn_hbloop(host, IDLE_INTERVAL, IDLE_TIMEOUT, (*config.server_args, *presence))
        try:
            _node_of(redis, Keys("bench-churn:"), "churn")
            figures.churn_cpu_on_us, figures.join_visible_ms = churn(
                present, churn_count, (redis.url, "bench-churn:")
            )
        finally:
            present.stop()

        print(f"[presence] 3. SIGKILL of a node with {kill_clients} members", flush=True)
        figures.stale_s = killed_node(redis, kill_clients, node_args, host)

        print(
            f"[presence] 4. Redis stopped {outage_seconds:g}s under {outage_clients} clients",
            flush=True,
        )
        result, figures.resync_s = outage(
            redis, replace(config, clients=outage_clients), outage_seconds, host
        )
        result.server = "outage"
        runs.append(result)
        figures.outage_dropped = result.counts.dropped
        figures.outage_errors = result.counts.errors
        figures.outage_rtt_ms = summary_ms(result.rtt)
    finally:
        redis.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return figures, runs


def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _against(value: float | None, key: str, unit: str) -> str:
    """``(target <= X: met)`` for ``value`` against ``TARGETS[key]``."""
    target = TARGETS[key]
    verdict = "?" if value is None else ("met" if value <= target else "MISSED")
    return f"(target {target:g}{unit}: {verdict})"


def summary(figures: Figures, config: BenchConfig) -> str:
    join = figures.join_visible_ms or {}
    rtt = figures.outage_rtt_ms or {}
    extra = figures.churn_cpu_on_us - figures.churn_cpu_off_us
    return "\n".join(
        [
            "",
            f"presence cost and bounds ({config.clients} heartbeating clients, interval "
            f"{config.interval:g}s, {config.duration:g}s window; {figures.churn} connects)",
            f"  CPU per heartbeat:          off {_num(figures.hb_cpu_off_us, ' us')}, on "
            f"{_num(figures.hb_cpu_on_us, ' us')}, ratio {_num(figures.hb_cpu_ratio, 'x', 3)} "
            + _against(figures.hb_cpu_ratio, "hb_cpu_ratio", "x"),
            f"  CPU per connect+disconnect: off {_num(figures.churn_cpu_off_us, ' us')}, on "
            f"{_num(figures.churn_cpu_on_us, ' us')} (+{_num(extra, ' us')} for presence)",
            f"  join visible in the stream: p50 {_num(join.get('p50'), ' ms', 2)}, p99 "
            f"{_num(join.get('p99'), ' ms', 2)}, max {_num(join.get('max'), ' ms', 2)} "
            + _against(join.get("p99"), "join_visible_p99_ms", " ms"),
            f"  SIGKILL of 1 of 2 nodes:    its {figures.kill_clients} members gone after "
            f"{_num(figures.stale_s, ' s', 2)} (bound {figures.stale_bound_s:.1f} s) "
            + _against(figures.stale_s, "stale_s", " s"),
            f"  Redis stopped {figures.outage_s:g} s under {figures.outage_clients} clients: "
            f"dropped {figures.outage_dropped}, errors {figures.outage_errors}, RTT p99 "
            f"{_num(rtt.get('p99'), ' ms', 2)}; whole again {_num(figures.resync_s, ' s', 2)} "
            "after its return " + _against(figures.resync_s, "resync_s", " s"),
        ]
    )


def main(args: Any, config: BenchConfig) -> int:
    node_args = ("--node-ttl", str(args.node_ttl), "--reap-interval", str(args.reap_interval))
    stale_bound = args.node_ttl + args.reap_interval * (1 + JITTER)
    figures, runs = measure(
        config,
        args.host,
        args.churn,
        args.kill_clients,
        args.outage_clients,
        args.outage,
        node_args,
        stale_bound,
    )
    off, on, under_outage = runs
    print(report.summary_table(on, [off]))
    print(report.summary_table(under_outage, []))
    print(summary(figures, config))
    if args.json is not None:
        document = {
            "config": asdict(config),
            "presence": {**asdict(figures), "hb_cpu_ratio": figures.hb_cpu_ratio},
            "runs": {run.server: run.to_json() for run in runs},
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    clean = all(r.counts.dropped == 0 and r.counts.errors == 0 for r in runs)
    if not clean:
        print("bench: a run dropped connections or had errors", file=sys.stderr)
    return 0 if clean else 1
