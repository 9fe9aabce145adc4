"""A supervisor whose workers a test can make stuck or slow on purpose, for the
watchdog's tests: run ``python -c "import watchdog_worker; watchdog_worker.main()"``
with this folder on PYTHONPATH (so that the workers unpickle ``target`` by name).

Each worker is a real ``WorkerLink`` target: an EventLoop publishing its snapshots up
the pipe, as ``hbloop serve`` workers do, and two hooks on signals:

* SIGUSR1: spin forever in a callback, the loop never coming round (stuck with CPU);
* SIGUSR2: burn BURN_CPU seconds of CPU in one callback, then carry on: a worker
  deprived of CPU takes far longer than that (starved, not stuck).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass

from hbloop.net.counters import ServerStats
from hbloop.net.loop import EventLoop
from hbloop.ops import logs
from hbloop.ops.stats import StatsReporter
from hbloop.ops.supervisor import Supervisor, WorkerLink

# CPU seconds of the SIGUSR2 hook: a fraction of a second on a core, but at the few
# milliseconds a second a niced worker gets against busy loops on its core, tens of
# seconds, far past the supervisor's STALL_TIMEOUT.
BURN_CPU = 0.3


@dataclass(frozen=True)
class Settings:
    """What ``Supervisor`` reads of its settings."""

    host: str = "127.0.0.1"
    port: int = 0
    fd: int | None = None  # no inherited listener
    workers: int = 2
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    stats_interval: float = 0.0
    shutdown_grace: float = 1.0
    drain_period: float = 0.0
    redis: None = None  # no presence
    redis_prefix: str = ""
    node_id: str | None = None
    node_ttl: float = 0.0


def spin() -> None:
    while True:
        pass


def burn() -> None:
    end = time.process_time() + BURN_CPU
    while time.process_time() < end:
        pass
    print(f"worker {os.getpid()} burnt {BURN_CPU}s of CPU", file=sys.stderr, flush=True)


def target(settings: Settings, link: WorkerLink) -> int:
    logs.configure("info", "text")
    loop = EventLoop()
    reporter = StatsReporter(loop, ServerStats(), 0, link.publisher(orphaned=loop.stop))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGUSR1, spin)
    loop.add_signal_handler(signal.SIGUSR2, burn)
    # The tests signal a worker only after this line: before it, SIGUSR1 would kill it.
    print(f"worker {os.getpid()} ready", file=sys.stderr, flush=True)
    loop.run_forever()
    reporter.close()
    return 0


def main() -> None:
    logs.configure("info", "text")
    supervisor = Supervisor(Settings(), target, lambda settings: None)
    supervisor.start()
    sys.exit(supervisor.run())
