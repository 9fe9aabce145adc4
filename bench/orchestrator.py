"""One workload against one server: start the workers, follow the run, gather figures.

Timeline, on the ``time.monotonic()`` clock every process shares (the epoch is when
the run starts; worker ticks fall on whole seconds after it)::

    ramp: connects at --connect-rate until every client has connected or failed
          (server CPU is sampled at both ends: the cost of setting connections up)
    ZOMBIFY: the zombies go silent
    settle: one interval, so the last clients have started their schedule
    window: --duration seconds; server CPU and memory are sampled at its two ends
    (run on until the zombies' timeouts have passed), then STOP
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

import psutil

from bench import flood, report, storm
from bench.config import STALL_AFTER, BenchConfig
from bench.histograms import merge_encoded, new_histogram, record_seconds, summary_ms
from bench.loadgen import WELCOME_DEADLINE, worker_main
from bench.messages import Command, Counts, Final, Tick, WorkerPlan
from bench.results import RunResult, Second, ServerFigures
from bench.servers import STOP_TIMEOUT, ServerUnderTest
from bench.sizing import max_in_flight, source_addresses, split, worker_count

# The ramp may take this much longer than clients / rate, and then as long again
# while clients still connect or fail, before the run goes on without the stragglers
# (which then count as connect failures or never connect).
RAMP_SLACK = WELCOME_DEADLINE + 10.0

# The settle period between the ramp and the window is at least this long.
MIN_SETTLE = 1.0

# After their timeout, zombies get this long for the server to close them before
# the run stops; later ones are reported as unclosed.
ZOMBIE_GRACE = 2.0

# A zombie closed this much before its timeout (measured from its last frame) was
# closed early: the server's clock starts when the frame arrives, a little later.
EARLY_TOLERANCE = 0.005

# The flooders end with the window; they get this long to report.
FLOOD_STOP_TIMEOUT = 15.0

# How long workers get to close their clients and report at the end.
WORKER_STOP_TIMEOUT = 60.0

KB = 1024.0


class BenchError(RuntimeError):
    pass


class _Worker:
    def __init__(self, process: BaseProcess, pipe: Connection, plan: WorkerPlan) -> None:
        self.process = process
        self.pipe = pipe
        self.plan = plan
        self.ramp_done = False
        self.final: Final | None = None


class Sampler:
    """CPU time and resident memory of a spawned server (psutil), summed over its
    process and its children: with --workers, the supervisor and every worker.
    ``root`` gives the server's process now (--storm restart starts a new one). A
    process that exits keeps the CPU time it had when last sampled in the sum. With
    ``pids``, of that process and those (the bench and its load generators) instead."""

    def __init__(
        self, root: Callable[[], psutil.Process | None], pids: list[int] | None = None
    ) -> None:
        self.root = root
        self.pids = pids
        self.times: dict[tuple[int, float], tuple[float, float]] = {}  # by pid, start
        self.rss_before_kb = self.rss_kb()
        self.cpu_before = sum(self.cpu())
        self.cpu_ramp = 0.0
        self.cpu_start = (0.0, 0.0)

    def processes(self) -> list[psutil.Process]:
        try:
            process = self.root()
            if process is None:
                return []
            if self.pids is not None:
                return [process, *map(psutil.Process, self.pids)]
            return [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def end_ramp(self) -> None:
        self.cpu_ramp = sum(self.cpu()) - self.cpu_before

    def cpu(self) -> tuple[float, float]:
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                self.times[process.pid, process.create_time()] = (times.user, times.system)
        values = self.times.values()
        return sum(user for user, _ in values), sum(system for _, system in values)

    def rss_kb(self) -> float:
        total = 0
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total / KB

    def start_window(self) -> None:
        self.cpu_start = self.cpu()

    def end_window(self) -> tuple[float, float, float]:
        """User and system CPU seconds over the window, and resident KB now."""
        (user, system), (user0, system0) = self.cpu(), self.cpu_start
        return user - user0, system - system0, self.rss_kb()


class Run:
    """Runs ``config``'s workload against ``server``; ``on_second`` sees each second."""

    def __init__(
        self,
        config: BenchConfig,
        server: ServerUnderTest,
        on_second: Callable[[RunResult, Second], None],
        scratch: Path | None = None,
    ) -> None:
        self.config = config
        self.scratch = scratch  # where --storm hup's config file is
        self.server = server
        self.on_second = on_second
        self.result = RunResult(server.name, config.clients)
        self.workers: list[_Worker] = []
        self.ticks: dict[int, list[Tick]] = {}  # seconds some workers have reported
        self.completed: set[int] = set()  # seconds every worker has reported
        self.counts = Counts()
        self.window = (math.inf, math.inf)  # (first, last] second of the steady state
        self.epoch = 0.0

    # --- the run -------------------------------------------------------------------

    def execute(self) -> RunResult:
        config = self.config
        server = self.server
        sampler = Sampler(lambda: server.psutil_process) if server.process is not None else None
        self.epoch = time.monotonic()
        self._start_workers()
        pids = [w.process.pid for w in self.workers if w.process.pid is not None]
        generator = Sampler(psutil.Process, pids)
        try:
            ramp_budget = config.clients / config.connect_rate + RAMP_SLACK
            self._follow_until(self.epoch + ramp_budget, self._ramp_done)
            self._follow_while_ramping()
            ramp_end = time.monotonic()
            if sampler is not None:
                sampler.end_ramp()
            generator.end_ramp()
            self.result.generator_processes = len(self.workers)
            self.result.generator_cpu_ramp_s = generator.cpu_ramp
            self.result.ramp_s = ramp_end - self.epoch
            self._send(Command.ZOMBIFY)

            settle = max(MIN_SETTLE, config.interval)
            first = math.ceil(ramp_end + settle - self.epoch)
            last = first + max(1, math.ceil(config.duration))
            self.window = (first, last)
            self.result.window_s = last - first
            self._follow_until(self.epoch + first)
            if sampler is not None:
                sampler.start_window()
            generator.start_window()
            flooder = None
            if config.flooders:
                self.result.flooders = config.flooders
                address = self.server.address
                flooder = flood.start(address, config.flooders, config.flood_kind, last - first)
            if config.stall:
                self._follow_until(self.epoch + first + STALL_AFTER)
                self._stall(config.stall)
            hit = None
            end = self.epoch + last
            if config.storm is not None:
                self._follow_until(self.epoch + first + STALL_AFTER)
                hit = self._strike(config.storm)
                if hit.kind == "leave":
                    end = max(end, hit.at + storm.LEAVE_WATCH)
            self._follow_until(end)
            snapshot = sampler.end_window() if sampler is not None else None
            self.result.generator_cpu_window_s = sum(generator.end_window()[:2])
            if sampler is not None:
                self.result.server_processes = len(sampler.processes())
            if flooder is not None:
                self.result.flood_frames = flood.frames_sent(flooder, FLOOD_STOP_TIMEOUT)
            self._follow_until(self.epoch + last + 1, lambda: last in self.completed)
            if sampler is not None and snapshot is not None:
                user, system, rss_kb = snapshot
                self.result.figures = ServerFigures(
                    cpu_user_s=user,
                    cpu_system_s=system,
                    rss_before_kb=sampler.rss_before_kb,
                    rss_steady_kb=rss_kb,
                    connections=self.counts.open,
                    heartbeats=self.result.heartbeats,
                    cpu_ramp_s=sampler.cpu_ramp,
                    connects=self.counts.established,
                )
            if config.zombie_count:
                self._follow_until(ramp_end + config.timeout + ZOMBIE_GRACE)
            self._send(Command.STOP)
            self._collect_finals()
            if hit is not None:
                finals = [w.final for w in self.workers if w.final is not None]
                self.result.storm = storm.figures(hit, finals, self.epoch + last)
        finally:
            self._reap_workers()
        return self.result

    def _stall(self, seconds: float) -> None:
        """Stop the spawned server for ``seconds`` (SIGSTOP) while the clients go on,
        then continue it (SIGCONT): a live peer must not be closed for the server's own
        delay."""
        process = self.server.psutil_process
        if process is None:
            raise BenchError("--stall needs a server the bench starts")
        process.suspend()
        try:
            self._follow_until(time.monotonic() + seconds)
        finally:
            process.resume()
        self.result.stalled_s = seconds

    def _strike(self, kind: str) -> storm.Strike:
        """Strike the spawned server (``bench.storm``). A restart's server is waited for
        (asked again to stop, then killed, if it takes longer than ``STOP_TIMEOUT``),
        started again, and waited for until it listens, all while the workers' reports
        are read: the restarted server's start, up to ``storm.RESTART_TIMEOUT``, once went
        by with no report read, and a generator blocked on a full pipe stops its clients."""
        process = self.server.process
        if self.scratch is None or process is None:
            raise BenchError("--storm needs a server the bench starts")
        if kind == "leave":
            hit = storm.Strike(kind, time.monotonic(), self.counts.open)
            self._send(Command.LEAVE)
            return hit
        hit = storm.strike(kind, self.server, self.scratch)
        if kind == "restart":

            def exited() -> bool:
                return process.poll() is not None

            for stop in (process.terminate, process.kill):
                self._follow_until(time.monotonic() + STOP_TIMEOUT, exited)
                if not exited():
                    stop()
            process.wait()
            storm.start_again(self.server)
            started = time.monotonic() + storm.RESTART_TIMEOUT
            self._follow_until(started, lambda: storm.restarted(self.server))
            if not storm.restarted(self.server):
                raise BenchError("the restarted hbloop serve did not listen in time")
        return hit

    def _start_workers(self) -> None:
        config = self.config
        host, port = self.server.address
        count = worker_count(config.clients, config.workers, config.interval)
        sources = source_addresses(config.clients, host)
        context = multiprocessing.get_context("spawn")
        in_flight = config.max_in_flight or max_in_flight(config.clients)
        self.result.generator_max_in_flight = in_flight
        for share in split(config.clients, count, config.zombie_count):
            plan = WorkerPlan(
                worker=share.worker,
                target=(host, port),
                indices=share.indices,
                interval=config.interval,
                connect_rate=config.connect_rate / count,
                max_in_flight=max(1, in_flight // count),
                sources=sources,
                epoch=self.epoch,
                zombies=share.zombies,
                tls_ca=None if self.server.tls_ca is None else str(self.server.tls_ca),
                reconnect=config.storm is not None,
            )
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=worker_main, args=(plan, child_end), name=f"bench-worker-{share.worker}"
            )
            process.daemon = True
            process.start()
            child_end.close()
            self.workers.append(_Worker(process, parent_end, plan))

    def _ramp_done(self) -> bool:
        return all(worker.ramp_done for worker in self.workers)

    def _follow_while_ramping(self) -> None:
        """Past its budget, the ramp goes on while clients still connect or fail: many
        generator processes take seconds to start on a small machine, and a slow ramp
        is a figure (the summary says who fell behind), not a reason to stop short."""
        while not self._ramp_done():
            ended = self.counts.established + self.counts.errors
            self._follow_until(time.monotonic() + RAMP_SLACK, self._ramp_done)
            if self.counts.established + self.counts.errors == ended:
                return

    def _follow_until(self, deadline: float, condition: Callable[[], bool] | None = None) -> None:
        """Handle worker messages until ``deadline`` or until ``condition()`` holds."""
        while not (condition is not None and condition()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # A worker that sent its Final may exit at once: its EOF is no failure.
            pipes = {worker.pipe: worker for worker in self.workers if worker.final is None}
            for pipe in wait(list(pipes), remaining):
                assert isinstance(pipe, Connection)
                self._receive(pipes[pipe])

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.pipe.recv()
        except EOFError:
            raise BenchError(
                f"load worker {worker.plan.worker} died (exit code {worker.process.exitcode})"
            ) from None
        if isinstance(message, Tick):
            worker.ramp_done = message.ramp_done
            self._add_tick(message)
        elif isinstance(message, Final):
            worker.final = message

    def _add_tick(self, tick: Tick) -> None:
        ticks = self.ticks.setdefault(tick.second, [])
        ticks.append(tick)
        if len(ticks) < len(self.workers):
            return
        del self.ticks[tick.second]
        self.completed.add(tick.second)
        counts = sum((t.counts for t in ticks), Counts())
        histogram = new_histogram()
        for t in ticks:
            merge_encoded(histogram, t.rtt)
        pongs = sum(t.pongs for t in ticks)
        first, last = self.window
        if first < tick.second <= last:
            self.result.rtt.add(histogram)
            self.result.heartbeats += pongs
        self.counts = counts
        self.result.counts = counts
        second = Second(
            second=tick.second,
            open=counts.open,
            heartbeats=pongs,
            rtt_ms=summary_ms(histogram, ("p50", "p99")),
            dropped=counts.dropped,
            errors=counts.errors,
            established=counts.established,
            generator_late=max(t.late for t in ticks),
            bench_late=time.monotonic() - (self.epoch + tick.second),
        )
        self.result.seconds.append(second)
        self.on_second(self.result, second)

    def _send(self, command: Command) -> None:
        for worker in self.workers:
            worker.pipe.send(command)

    def _collect_finals(self) -> None:
        self._follow_until(
            time.monotonic() + WORKER_STOP_TIMEOUT,
            lambda: all(worker.final is not None for worker in self.workers),
        )
        result = self.result
        counts = Counts()
        for worker in self.workers:
            final = worker.final
            if final is None:
                raise BenchError(f"load worker {worker.plan.worker} did not report at the end")
            counts = counts + final.counts
            result.zombies += final.zombies
            result.zombies_unclosed += final.zombies_unclosed
            result.skipped_slots += final.skipped_slots
            result.error_samples.extend(final.error_samples)
            for late in final.zombie_late:
                record_seconds(result.zombie_late, late)
                result.zombies_early += late < -EARLY_TOLERANCE
        result.counts = counts

    def _reap_workers(self) -> None:
        for worker in self.workers:
            worker.pipe.close()  # a worker still running takes the EOF as STOP
        for worker in self.workers:
            worker.process.join(WORKER_STOP_TIMEOUT)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()


def run_and_stop(
    config: BenchConfig, server: ServerUnderTest, scratch: Path | None = None
) -> RunResult:
    """Run ``config``'s workload against ``server`` with a progress line a second, then
    stop the server (``scratch``: a directory for ``--storm``'s files)."""

    def show(result: RunResult, second: Second) -> None:
        print(report.progress_line(result, second), flush=True)

    try:
        return Run(config, server, show, scratch).execute()
    finally:
        server.stop()
