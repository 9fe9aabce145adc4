"""``hbloop serve --workers N``: a supervisor and N worker processes sharing one port.

Each worker is a whole single-threaded server, with its own EventLoop and a listener
that sets SO_REUSEPORT on the common port, so that the kernel spreads new connections
across the workers. The supervisor does nothing on the data path. It

* reserves the port: it binds a socket (SO_REUSEPORT, never listening, so never given
  a connection) which turns ``--port 0`` into a real port and keeps that port for
  workers restarted later;
* starts the workers, each as ``python -m hbloop.supervisor`` reading its parsed
  arguments from a pipe on stdin: a fresh interpreter inherits no loop, socket or
  signal state from the supervisor, which a bare ``fork()`` would;
* puts each worker in its own process group, so that a terminal's Ctrl-C reaches the
  supervisor only, and forwards SIGTERM and SIGINT (a second one too, which makes the
  workers stop at once); it exits 0 once every worker has stopped;
* restarts a worker that dies, after min(cap, base x 2^n) seconds for the n-th quick
  death in a row;
* reads the snapshot each worker writes to its report pipe once a second, and serves
  the totals and per-worker figures in its own stats line and on ``/metrics``. A
  worker whose pipe breaks has lost its supervisor and shuts down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from hbloop.loop import EventLoop, Timer
from hbloop.metrics import MetricsEndpoint, Report
from hbloop.netutil import bind_socket
from hbloop.stats import Snapshot, Ticker, combine, retired, summary

log = logging.getLogger("hbloop.supervisor")

# Restart back-off: the n-th quick death in a row waits min(cap, base x 2^n) before
# the restart. Half a second is unnoticeable to clients that reconnect with back-off
# themselves; the cap keeps a worker that cannot start from spinning the CPU.
RESTART_BASE = 0.5
RESTART_CAP = 30.0

# A worker that ran this long before dying was healthy, so its death does not count
# towards the back-off: a bug hit once a day restarts at the base delay.
STABLE_AFTER = 10.0

# Bytes read from a report pipe at a time; a snapshot line is a few hundred.
REPORT_CHUNK = 65536


@dataclass(frozen=True)
class WorkerLink:
    """A worker's end of its supervisor: its number, the shared port, and the write
    end of its report pipe."""

    index: int
    port: int
    fd: int

    def publisher(self, orphaned: Callable[[], None]) -> Callable[[Snapshot], None]:
        """A function that sends a snapshot up the pipe; it calls ``orphaned()`` (once)
        when it finds that the supervisor is gone."""
        os.set_blocking(self.fd, False)
        pipe = self.fd

        def publish(snapshot: Snapshot) -> None:
            nonlocal pipe
            if pipe < 0:
                return
            # A line is far below PIPE_BUF, so a non-blocking write is all or nothing.
            line = json.dumps(snapshot, separators=(",", ":")).encode() + b"\n"
            try:
                os.write(pipe, line)
            except BlockingIOError:
                pass  # the supervisor is behind; the next snapshot supersedes this one
            except BrokenPipeError:
                os.close(pipe)
                pipe = -1
                log.warning("worker %d: the supervisor is gone; shutting down", self.index)
                orphaned()

        return publish


class _Worker:
    """One worker position; its process changes when it is restarted."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.pipe = -1
        self.partial = b""
        self.snapshot: Snapshot | None = None  # None until the worker is listening
        self.quick_deaths = 0
        self.restart: Timer | None = None


class Supervisor:
    """Runs ``count`` workers of ``args`` (``hbloop serve`` arguments) until signalled."""

    def __init__(self, args: argparse.Namespace, count: int) -> None:
        self.args = args
        self.loop = EventLoop()
        self.workers = [_Worker(index) for index in range(1, count + 1)]
        self.port = args.port
        self.restarts = 0
        self.stopping = False
        self.starting = True  # until every worker has listened once
        self.failed = False
        self._retired = combine([])  # counters of workers that have exited
        self._peak = 0

    # --- lifecycle ---------------------------------------------------------------

    def run(self) -> int:
        try:
            # Bound, never listening: the kernel queues no connection on it.
            reservation = bind_socket(self.args.host, self.args.port, reuse_port=True)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", self.args.host, self.args.port, exc.strerror)
            return 1
        self.port = reservation.getsockname()[1]
        endpoint = None
        if self.args.metrics_port is not None:
            try:
                endpoint = MetricsEndpoint(
                    self.loop, self.args.metrics_host, self.args.metrics_port, self.report
                )
            except OSError as exc:
                log.error("cannot serve metrics: %s", exc.strerror)
                return 1
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, partial(self.stop, signum))
        self.loop.add_signal_handler(signal.SIGCHLD, self._reap)
        if self.args.stats_interval:
            Ticker(self.loop, self.args.stats_interval, self._log_stats)
        for worker in self.workers:
            self._spawn(worker)
        try:
            self.loop.run_forever()
        finally:
            if endpoint is not None:
                endpoint.close()
            self.loop.close()
            reservation.close()
        if self.failed:
            return 1
        log.info("stopped")
        return 0

    def stop(self, signum: int) -> None:
        """Forward ``signum`` to every worker; stop once they are all gone."""
        self.stopping = True
        log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self._running()))
        for worker in self.workers:
            if worker.restart is not None:
                worker.restart.cancel()
                worker.restart = None
        for worker in self._running():
            assert worker.process is not None
            worker.process.send_signal(signum)
        self._stop_if_done()

    def _running(self) -> list[_Worker]:
        return [w for w in self.workers if w.process is not None]

    def _stop_if_done(self) -> None:
        if self.stopping and not self._running():
            self.loop.stop()

    # --- workers -------------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        worker.restart = None
        read_fd, write_fd = os.pipe()
        link = WorkerLink(worker.index, self.port, write_fd)
        worker.process = subprocess.Popen(
            [sys.executable, "-m", "hbloop.supervisor"],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            process_group=0,
        )
        os.close(write_fd)
        assert worker.process.stdin is not None
        with worker.process.stdin as stdin:
            stdin.write(pickle.dumps((self.args, link)))
        worker.started = time.monotonic()
        worker.pipe = read_fd
        worker.partial = b""
        worker.snapshot = None
        os.set_blocking(read_fd, False)
        self.loop.add_reader(read_fd, partial(self._read_reports, worker))

    def _read_reports(self, worker: _Worker) -> None:
        """Keep the worker's latest snapshot; at EOF, close the pipe."""
        while True:
            try:
                data = os.read(worker.pipe, REPORT_CHUNK)
            except BlockingIOError:
                return
            if not data:
                self.loop.forget_fd(worker.pipe)
                os.close(worker.pipe)
                worker.pipe = -1
                return
            *lines, worker.partial = (worker.partial + data).split(b"\n")
            if lines:
                if worker.snapshot is None:
                    self._listening(worker)
                worker.snapshot = json.loads(lines[-1])
                self._note_peak()

    def _listening(self, worker: _Worker) -> None:
        assert worker.process is not None
        if not self.starting:
            log.info("worker %d (pid %d) is back", worker.index, worker.process.pid)
            return
        if all(w.snapshot is not None for w in self.workers if w is not worker):
            self.starting = False
            pids = " ".join(str(w.process.pid) for w in self.workers if w.process)
            log.info(
                "listening on %s:%d workers=%d pids=%s",
                self.args.host,
                self.port,
                len(self.workers),
                pids,
            )

    def _reap(self) -> None:
        for worker in self._running():
            assert worker.process is not None
            status = worker.process.poll()
            if status is not None:
                self._exited(worker, status)
        self._stop_if_done()

    def _exited(self, worker: _Worker, status: int) -> None:
        if worker.pipe >= 0:
            self._read_reports(worker)  # the last snapshots, then EOF
        if worker.snapshot is not None:
            self._retired = combine([self._retired, retired(worker.snapshot)])
        listened = worker.snapshot is not None
        worker.snapshot = None
        pid = worker.process.pid if worker.process else 0
        worker.process = None
        how = f"signal {-status}" if status < 0 else f"code {status}"
        if self.stopping:
            log.info("worker %d (pid %d) exited with %s", worker.index, pid, how)
            return
        if self.starting and not listened:
            log.error("worker %d failed to start (%s); stopping", worker.index, how)
            self.failed = True
            self.stop(signal.SIGTERM)
            return
        lived = time.monotonic() - worker.started
        worker.quick_deaths = 0 if lived >= STABLE_AFTER else worker.quick_deaths + 1
        delay = min(RESTART_CAP, RESTART_BASE * 2 ** max(0, worker.quick_deaths - 1))
        log.warning(
            "worker %d (pid %d) exited with %s after %.1fs; restarting in %.1fs",
            worker.index,
            pid,
            how,
            lived,
            delay,
        )
        self.restarts += 1
        worker.restart = self.loop.call_later(delay, self._spawn, worker)

    # --- statistics ----------------------------------------------------------------

    def _note_peak(self) -> None:
        """The total peak is the most connections seen at once over all workers: the
        workers' own peaks happened at different times, so it is tracked here, at
        each snapshot, rather than derived from theirs."""
        now = sum(w.snapshot["connections"] for w in self.workers if w.snapshot is not None)
        self._peak = max(self._peak, now)

    def report(self) -> Report:
        live = {str(w.index): w.snapshot for w in self.workers if w.snapshot is not None}
        total = combine([self._retired, *live.values()])
        self._peak = total["peak"] = max(self._peak, total["peak"], total["connections"])
        return Report(total, live, self.restarts)

    def _log_stats(self) -> None:
        report = self.report()
        log.info("stats total workers=%d %s", len(report.workers), summary(report.total))


def _worker_main() -> int:
    """A worker process: read ``(args, link)`` from stdin and serve."""
    args, link = pickle.load(sys.stdin.buffer)
    return int(args.run(args, link))


if __name__ == "__main__":
    sys.exit(_worker_main())
