"""bench --storm restart: the bench reads its load generators' reports all through the
restart, a slow one included, and every client comes back; on the listener the bench
holds, no reconnect is refused; the storms' redis-server runs at a higher priority."""

from __future__ import annotations

import itertools
import os
import sys
import time

from bench import storm
from bench.config import BenchConfig
from bench.orchestrator import Run
from bench.redis_server import RedisProcess
from bench.results import RunResult, Second
from bench.servers import hold_port, spawn_hbloop
from hbloop.core.policy import DEFAULT_BACKLOG

# The restarted server takes this long before it starts: a slow start (26 workers on a
# loaded machine) that the bench used to wait out without reading any report.
SLOW_START = 4.0

# A new server's command line: sleep, then the real one (``sys.argv[1:]``, from "-m").
SLOW_START_CODE = (
    "import os, sys, time\n"
    f"time.sleep({SLOW_START})\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)

CLIENTS = 60


def test_a_slow_restart_does_not_stop_the_bench_reading_its_generators(tmp_path):
    held = hold_port("127.0.0.1", DEFAULT_BACKLOG)
    server = spawn_hbloop(
        "127.0.0.1", 0.5, 1.5, ("--workers", "2", "--drain-period", "1"), held=held
    )
    assert server.argv is not None
    server.argv = [sys.executable, "-c", SLOW_START_CODE, *server.argv[1:]]
    # Long enough for the strike (1 s in), the drain, the slow start and the clients'
    # back-off (at most 5 s a retry).
    config = BenchConfig(clients=CLIENTS, interval=0.5, timeout=1.5, duration=20, storm="restart")
    seen: list[float] = []

    def on_second(result: RunResult, second: Second) -> None:
        seen.append(time.monotonic())

    try:
        result = Run(config, server, on_second, tmp_path).execute()
    finally:
        server.stop()
    assert result.storm is not None
    assert result.storm.affected == result.storm.returned == CLIENTS
    # The reconnects made while no server ran waited in the held listener's backlog.
    assert result.counts.connect_failures == 0
    # Reports were read as they came, a second apart, while the new server slept (a
    # bench waiting for it read none for longer than its sleep).
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert max(gaps) < SLOW_START


def test_the_storms_redis_runs_at_a_higher_priority_where_it_may(tmp_path, redis_installed):
    """The storms' redis-server stands in for one on cores of its own: it runs at
    REDIS_NICE, which takes root (CI's user); elsewhere the bench says it could not."""
    redis = RedisProcess(tmp_path, nice=storm.REDIS_NICE)
    try:
        assert redis.process is not None
        priority = os.getpriority(os.PRIO_PROCESS, redis.process.pid)
        if os.geteuid() == 0:
            assert redis.niced and priority == storm.REDIS_NICE
            assert storm.redis_priority(redis).startswith(f"redis-server at nice {priority},")
        else:
            assert not redis.niced and priority == os.getpriority(os.PRIO_PROCESS, 0)
            assert "takes root" in storm.redis_priority(redis)
    finally:
        redis.stop()
