"""``hbloop serve --workers N``: a supervisor and N worker processes sharing one port.

Each worker is a whole single-threaded server, with its own EventLoop and a listener
that sets SO_REUSEPORT on the common port, so that the kernel spreads new connections
across the workers. The supervisor does nothing on the data path. It

* reserves the port: it binds a socket, never listening (so never given a
  connection), which turns ``--port 0`` into a real port. It sets SO_REUSEADDR but
  *not* SO_REUSEPORT: the kernel lets any SO_REUSEPORT socket of the same user join a
  port's group, so a reservation with it would let a second ``--workers`` server
  start and split the clients with the first. Without it, binding fails with
  EADDRINUSE whenever anything listens on the port, while this supervisor's own
  workers (SO_REUSEPORT, bound after it) may still share the port, because a bound
  socket that does not listen only conflicts with listeners. Given a listening socket
  instead (``fd``: systemd's socket activation, ``--fd``), it reserves nothing: it
  keeps the socket open and passes it to every worker, which accepts from it beside
  the others, woken one at a time (``EventLoop.add_shared_reader``); the socket then
  outlives the server, and connections made while none runs (a full restart) wait in
  its backlog instead of being refused;
* starts the workers, each as ``python -m hbloop.ops.supervisor`` reading its target
  function, its settings and its ``WorkerLink`` (pickled) from a pipe on stdin, and
  calling ``target(settings, link)``, as uvicorn's ``Multiprocess(config, target,
  sockets)`` does: a fresh interpreter inherits no loop, socket or signal state from
  the supervisor, which a bare ``fork()`` would. The settings are a frozen object of
  the caller's (``hbloop.cli.settings.ServeSettings``) that this module reads only
  through ``SupervisorSettings``;
* puts each worker in its own process group, so that a terminal's Ctrl-C reaches the
  supervisor only, and forwards SIGTERM and SIGINT (a second one too, which makes the
  workers stop at once), each followed by SIGCONT so that a stopped worker acts on it.
  The first is forwarded as a rolling restart retires workers (below): every worker
  stops accepting first, and only once all have said so do they close their peers,
  so that no client one worker closes reconnects to another about to close it again.
  A worker still running STOP_MARGIN after its ``--shutdown-grace`` is killed; the
  supervisor exits 0 once every worker is gone, as the stop was requested;
* restarts a worker that dies, after min(cap, base x 2^n) seconds for the n-th quick
  death in a row;
* on SIGHUP, asks its ``reload`` for new settings (the command line and its
  ``--config`` file read again, its own SUPERVISOR_SETTINGS kept). If
  ``restart_needed`` says none of the changes needs new processes (the log level, the
  limits and rates), every worker is sent SIGHUP and applies them in place: no client
  notices. Otherwise it restarts the workers as one generation: a new process is
  started beside each old one and, once all of them listen, every old one is told to
  stop accepting (STOP_ACCEPTING_SIGNAL: each closes its listener, which takes it out
  of the port's SO_REUSEPORT group, and reports it at once); only once every old one
  has reported it (or RETIRE_TIMEOUT has passed) are they sent SIGTERM, to close their
  peers with GOING_AWAY spread over their ``--drain-period``. So no reconnect can land
  on an old worker about to close it again: each client is closed once per restart.
  Sending SIGTERM at once instead left a race: a worker that acted on its signal
  first closed clients that could reconnect to another old worker not yet stopped
  accepting, and be closed again. The port never stops accepting. New
  processes also pick up a newly installed hbloop. The supervisor's own settings
  (host, port, workers, metrics, stats interval) need a full restart;
* reads the snapshot each worker writes to its report pipe once a second, and serves
  the totals and per-worker figures in its own stats line and on ``/metrics``. A
  worker whose pipe breaks has lost its supervisor and shuts down;
* kills (and so restarts) a stuck worker, which would keep its share of new
  connections unanswered (see STALL_TIMEOUT). Silence alone is no proof: a worker
  starved of CPU (a load average of 20) is silent too, and killing it turns overload
  into mass disconnection. The ``Watchdog`` calls a worker stuck only on evidence read
  from /proc: stopped (SIGSTOP, a debugger), or given CPU time without a loop
  iteration, or asleep outside its loop, which always wakes at least once a second;
  it kills at most one worker per KILL_PERIOD, and its log line names the evidence.
* with presence (``--redis``), removes a worker's presence node and its members the
  moment the worker exits (``NodeRemover``), so that a crash does not leave its names
  held for a node TTL. It chooses each worker's node id (``WorkerLink.started``) for
  that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Generic, Protocol, TypeVar

from hbloop.net.loop import EventLoop, Timer
from hbloop.net.sockets import adopt_listener, bind_socket
from hbloop.ops.metrics import MetricsEndpoint, Report, StartError, serve_metrics
from hbloop.ops.stats import SAMPLE_PERIOD, Snapshot, Ticker, combine, retired, summary
from hbloop.presence.node import NodeRemover, node_id
from hbloop.presence.redis_link import RedisAddress

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

# After forwarding SIGTERM or SIGINT, a worker still running this long past its own
# --drain-period and --shutdown-grace is killed (SIGKILL). Once its grace is over, a
# worker that can run only drops its connections and exits, in milliseconds; one still
# there seconds later is stopped or wedged, and would hold the supervisor forever.
STOP_MARGIN = 3.0

# A worker reports every SAMPLE_PERIOD (1 s); one silent for this long is stopped
# (SIGSTOP, a debugger) or wedged. The kernel keeps hashing its share of new
# connections to its SO_REUSEPORT listener, where they wait unanswered, so it is
# killed: the kernel resets the connections queued on its listener (their clients
# reconnect; with the sysctl net.ipv4.tcp_migrate_req=1 it hands them to another
# worker instead) and the restart logic starts a worker that serves its share again.
# Steering the hashing away instead would take a BPF program that knows which workers
# are alive (SO_ATTACH_REUSEPORT_EBPF), and the supervisor cannot close a worker's
# listener for it: killing is the one lever that needs nothing from the stuck worker.
# Five missed reports: far longer than a healthy loop ever stalls, yet short next to a
# client's connect timeout. Silence is only what makes the Watchdog look: it kills on
# the evidence below, never on silence alone.
STALL_TIMEOUT = 5.0

# CPU seconds a silent worker must have used without one loop iteration to be called
# stuck (spinning). One iteration handles at most a batch of events per descriptor,
# milliseconds of work even under a connect storm; three whole seconds of CPU without
# coming round is a loop that will not come round. A starved worker gets far less
# (a few ms a second at a load average of 20), so it is never mistaken for one.
STUCK_CPU = 3.0

# A silent worker asleep (state S) at every sample, using under STUCK_CPU, for this
# long is blocked outside its loop (a blocking call that never returns): its loop
# would have woken for its once-a-second report. A starved worker is runnable (R),
# never asleep, so it is not mistaken for one; the margin over STALL_TIMEOUT covers a
# worker briefly descheduled between samples.
BLOCKED_TIMEOUT = 30.0

# At most one worker killed per this period, whatever the evidence: each kill drops a
# worker's clients, who reconnect to the others; if the evidence is wrong about every
# worker at once (the whole machine frozen and thawed), this keeps it to one worker's
# share per period rather than all of them. Long enough for the restart (0.5 s) and
# for its clients to come back, short enough that two stuck workers are both replaced
# within seconds.
KILL_PERIOD = 5.0

# Sent to each worker a rolling restart retires: stop accepting (close the listener),
# report it at once, keep serving the peers. SIGUSR1 and SIGUSR2 are the signals
# left for an application's own use; hbloop's workers use SIGUSR2 for this alone.
STOP_ACCEPTING_SIGNAL = signal.SIGUSR2

# How long a rolling restart waits for the retiring workers to report that they have
# stopped accepting before it has them close their peers anyway. A worker answers in
# one loop iteration; one silent this long is stuck or starved (the Watchdog's
# business, STALL_TIMEOUT), and waiting on it would hold every other worker's drain.
RETIRE_TIMEOUT = STALL_TIMEOUT

# Clock ticks per second, the unit of /proc/PID/stat's CPU times.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Settings that belong to the supervisor itself (its port reservation, its worker
# count, its /metrics and stats line): a SIGHUP reload keeps their old values.
SUPERVISOR_SETTINGS = (
    "host",
    "port",
    "fd",
    "workers",
    "metrics_host",
    "metrics_port",
    "stats_interval",
)


class SupervisorSettings(Protocol):
    """What the supervisor reads of its settings; the workers get them whole."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def fd(self) -> int | None: ...
    @property
    def workers(self) -> int: ...
    @property
    def metrics_host(self) -> str: ...
    @property
    def metrics_port(self) -> int | None: ...
    @property
    def stats_interval(self) -> float: ...
    @property
    def shutdown_grace(self) -> float: ...
    @property
    def drain_period(self) -> float: ...
    @property
    def redis(self) -> RedisAddress | None: ...
    @property
    def redis_prefix(self) -> str: ...
    @property
    def node_id(self) -> str | None: ...
    @property
    def node_ttl(self) -> float: ...


S = TypeVar("S", bound=SupervisorSettings)


@dataclass(frozen=True)
class WorkerLink:
    """A worker's end of its supervisor: its number, the shared port, the write end
    of its report pipe, and the start time in its presence node's id (``node_id``)."""

    index: int
    port: int
    fd: int
    started: float

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
            line = snapshot.encode()
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


@dataclass(frozen=True)
class ProcessSample:
    """What /proc says of a process: its state letter (R running or runnable, S asleep,
    D in uninterruptible I/O, T stopped, t stopped by a tracer, Z exited) and the CPU
    seconds (user and system) it has used."""

    state: str
    cpu: float


def sample_process(pid: int) -> ProcessSample | None:
    """``pid``'s state and CPU time from /proc/PID/stat, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    fields = text[text.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return ProcessSample(fields[0].decode(), (utime + stime) / CLOCK_TICKS)


STOPPED_STATES = frozenset("Tt")


@dataclass
class _Progress:
    """A worker's last observed loop progress, and what it did since."""

    iterations: int
    at: float  # when that iteration count was first observed
    cpu: float  # its CPU time then
    runnable: bool = False  # seen running or runnable (R, D) since
    noted: bool = False  # its starvation already logged, this silence


@dataclass(frozen=True)
class Verdict:
    """A silent worker's diagnosis: ``stuck`` (to kill) or starved (to leave alone),
    with the evidence in words for the log line."""

    key: int
    silent: float
    stuck: bool
    evidence: str


class Watchdog:
    """Tells a stuck worker from a starved one, sans-IO: ``observe`` each worker's loop
    iterations and /proc sample once per SAMPLE_PERIOD, then ``verdicts`` lists the
    silent workers (silent for STALL_TIMEOUT), at most one of them stuck per
    KILL_PERIOD, and each starvation once per silence."""

    def __init__(self) -> None:
        self._progress: dict[int, _Progress] = {}
        self._last_kill = float("-inf")

    def observe(self, key: int, now: float, iterations: int, sample: ProcessSample) -> None:
        known = self._progress.get(key)
        if known is None or iterations != known.iterations:
            self._progress[key] = _Progress(iterations, now, sample.cpu)
        elif sample.state != "S":
            known.runnable = True

    def forget(self, key: int) -> None:
        self._progress.pop(key, None)

    def verdicts(self, now: float, samples: dict[int, ProcessSample]) -> list[Verdict]:
        found: list[Verdict] = []
        stuck: list[Verdict] = []
        for key, sample in samples.items():
            progress = self._progress.get(key)
            if progress is None or now - progress.at < STALL_TIMEOUT:
                continue
            verdict = self._diagnose(
                key, now - progress.at, sample.cpu - progress.cpu, sample, progress
            )
            if verdict.stuck:
                stuck.append(verdict)
            elif not progress.noted:
                progress.noted = True
                found.append(verdict)
        if stuck and now - self._last_kill >= KILL_PERIOD:
            self._last_kill = now
            found.append(max(stuck, key=lambda v: v.silent))
        return found

    @staticmethod
    def _diagnose(
        key: int, silent: float, cpu: float, sample: ProcessSample, progress: _Progress
    ) -> Verdict:
        state = sample.state
        if state in STOPPED_STATES:
            return Verdict(key, silent, True, f"stopped (state {state})")
        if cpu >= STUCK_CPU:
            return Verdict(
                key,
                silent,
                True,
                f"used {cpu:.2f}s of CPU without a loop iteration (state {state})",
            )
        if silent >= BLOCKED_TIMEOUT and not progress.runnable:
            return Verdict(
                key, silent, True, f"asleep outside its loop, {cpu:.2f}s of CPU (state {state})"
            )
        return Verdict(
            key, silent, False, f"only {cpu:.2f}s of CPU (state {state}): starved of CPU, not stuck"
        )


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
        self.node = ""  # its presence node's id


def _resume(worker: _Worker) -> None:
    """SIGCONT to a worker's process group: a stopped worker (SIGSTOP, a debugger)
    keeps a signal pending until it is continued."""
    if worker.process is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.process.pid, signal.SIGCONT)


class Supervisor(Generic[S]):
    """Runs ``settings.workers`` processes, each calling ``target(settings, link)``,
    until signalled. On SIGHUP, ``reload(settings)`` gives the settings of the new
    workers (their SUPERVISOR_SETTINGS unchanged), or None to keep things as they are;
    ``restart_needed(old, new)`` whether they need new workers (else each worker is
    sent SIGHUP to apply them itself). ``target`` must be a module-level function,
    which pickle sends by name."""

    def __init__(
        self,
        settings: S,
        target: Callable[[S, WorkerLink], int],
        reload: Callable[[S], S | None],
        restart_needed: Callable[[S, S], bool] = lambda old, new: True,
    ) -> None:
        self.settings = settings
        self.target = target
        self.reload = reload
        self.restart_needed = restart_needed
        self.loop = EventLoop()
        self.workers = [_Worker(index) for index in range(1, settings.workers + 1)]
        self.host = settings.host  # an inherited listener's, once started
        self.port = settings.port
        self.restarts = 0
        self.stopping = False
        self.stop_signal = ""  # the first stop signal's name, once stopping
        self.starting = True  # until every worker has listened once
        self.failed = False
        self._stragglers: Timer | None = None  # the kill of workers past their stop time
        self._retired = combine([])  # counters of workers that have exited
        self._peak = 0
        self._reservation: socket.socket | None = None
        self._endpoint: MetricsEndpoint | None = None
        self._remover: NodeRemover | None = None
        # The rolling restart: the new generation starting (all of it listening, it
        # takes the old one's places), and replaced workers still closing their peers.
        self._incoming: list[_Worker] = []
        self._retiring: list[_Worker] = []
        # Workers told to stop accepting (retiring, or all of them at a stop), not yet
        # to close their peers; what to do once they have all said so, and the deadline
        # after which it is done anyway (RETIRE_TIMEOUT).
        self._quiescing: list[_Worker] = []
        self._after_quiesce: Callable[[list[_Worker]], None] = self._drain_retiring
        self._quiesce_deadline: Timer | None = None
        self.watchdog = Watchdog()

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Reserve the port and open /metrics; raises StartError if either fails."""
        host, port = self.settings.host, self.settings.port
        if self.settings.fd is not None:
            try:  # the workers' listener: held open here, so that it outlives them
                self._reservation = adopt_listener(self.settings.fd)
            except ValueError as exc:
                raise StartError(f"--fd: {exc}") from None
            self.host = self._reservation.getsockname()[0]
        else:
            try:
                # Bound, never listening: the kernel queues no connection on it. Without
                # SO_REUSEPORT, so that it fails on a port in use (see the module's doc).
                self._reservation = bind_socket(host, port)
            except OSError as exc:
                raise StartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.port = self._reservation.getsockname()[1]
        if self.settings.metrics_port is not None:
            self._endpoint = serve_metrics(
                self.loop, self.settings.metrics_host, self.settings.metrics_port, self.report
            )
        s = self.settings
        if s.redis is not None:
            client = node_id(s.node_id, os.getpid(), time.time())
            self._remover = NodeRemover(self.loop, s.redis, s.redis_prefix, s.node_ttl, client)
            self._remover.start()

    def run(self) -> int:
        """Start the workers and supervise them until they have all stopped."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, partial(self.stop, signum))
        self.loop.add_signal_handler(signal.SIGHUP, self._rolling_restart)
        self.loop.add_signal_handler(signal.SIGCHLD, self._reap)
        if self.settings.stats_interval:
            Ticker(self.loop, self.settings.stats_interval, self._log_stats)
        Ticker(self.loop, SAMPLE_PERIOD, self._kill_stalled)
        for worker in self.workers:
            self._spawn(worker)
        try:
            self.loop.run_forever()
        finally:
            if self._endpoint is not None:
                self._endpoint.close()
            if self._remover is not None:
                self._remover.close()
            self.loop.close()
            if self._reservation is not None:
                self._reservation.close()
        if self.failed:
            return 1
        log.info("stopped")
        return 0

    def stop(self, signum: int) -> None:
        """Stop every worker with ``signum``; stop once they are all gone.

        The first time, the workers that report are first told to stop accepting
        (``_quiesce``), and get ``signum`` once all of them have said so: with it each
        closes its peers over its drain period, and a client closed by one can no
        longer reconnect to another that closes it again (in a restart of 200,000
        clients over 13 workers, 89 were closed twice when SIGTERM went to all at once).
        A worker yet to report gets it at once (it may not yet handle
        STOP_ACCEPTING_SIGNAL, whose default action kills). Workers retiring after a
        rolling restart are stopping already: only a second signal, which stops every
        worker at once, reaches them. A second signal is forwarded to every worker at
        once; one that the first had not yet reached takes it as its first, and
        drains."""
        name = signal.Signals(signum).name
        first = not self.stopping
        log.info("%s: stopping %d workers", name, len(self._running()))
        for worker in self.workers:
            if worker.restart is not None:
                worker.restart.cancel()
                worker.restart = None
        quiescing = self._quiescing  # retiring, but not yet told to stop
        self._stop_quiescing()
        targets = [
            w for w in self._running() if not (first and w in self._retiring and w not in quiescing)
        ]
        if not first:
            self._forward(signum, targets)
            return
        self.stopping = True
        self.stop_signal = name
        reported = [w for w in targets if w.snapshot is not None]
        self._forward(signum, [w for w in targets if w.snapshot is None])
        self._quiesce(reported, partial(self._forward, signum))
        for worker in reported:
            _resume(worker)

    def _forward(self, signum: int, workers: list[_Worker]) -> None:
        """Send ``signum`` to ``workers`` still running, each followed by SIGCONT; the
        first time, arm the kill of workers that outlive their grace (STOP_MARGIN)."""
        if self._stragglers is None:
            self._stragglers = self.loop.call_later(self._stop_time(), self._kill_stragglers)
        for worker in workers:
            if worker.process is not None:
                worker.process.send_signal(signum)
                _resume(worker)
        self._stop_if_done()

    def _stop_time(self) -> float:
        """How long a worker may take to stop: its drain, its grace, STOP_MARGIN."""
        return self.settings.drain_period + self.settings.shutdown_grace + STOP_MARGIN

    def _kill_stragglers(self) -> None:
        for worker in self._running():
            assert worker.process is not None
            log.warning(
                "worker %d (pid %d) still running %.1fs after %s; killing it",
                worker.index,
                worker.process.pid,
                self._stop_time(),
                self.stop_signal,
            )
            worker.process.kill()

    def _running(self) -> list[_Worker]:
        """Every worker process alive: in place, starting as a replacement, retiring."""
        everyone = [*self.workers, *self._incoming, *self._retiring]
        return [w for w in everyone if w.process is not None]

    def _stop_if_done(self) -> None:
        if self.stopping and not self._running():
            self.loop.stop()

    # --- workers -------------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        worker.restart = None
        read_fd, write_fd = os.pipe()
        started = time.time()
        link = WorkerLink(worker.index, self.port, write_fd, started)
        worker.process = subprocess.Popen(
            [sys.executable, "-m", "hbloop.ops.supervisor"],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,) if self.settings.fd is None else (write_fd, self.settings.fd),
            process_group=0,
        )
        os.close(write_fd)
        worker.node = node_id(self.settings.node_id, worker.process.pid, started, worker.index)
        assert worker.process.stdin is not None
        with worker.process.stdin as stdin:
            stdin.write(pickle.dumps((self.target, self.settings, link)))
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
                worker.snapshot = Snapshot.decode(lines[-1])
                self._note_peak()
                if self._quiescing and worker.snapshot.server.draining:
                    self._check_quiesced()

    def _listening(self, worker: _Worker) -> None:
        assert worker.process is not None
        if worker in self._incoming:
            if all(w.snapshot is not None for w in self._incoming if w is not worker):
                self._replace_generation()
            return
        if not self.starting:
            log.info("worker %d (pid %d) is back", worker.index, worker.process.pid)
            return
        if all(w.snapshot is not None for w in self.workers if w is not worker):
            self.starting = False
            pids = " ".join(str(w.process.pid) for w in self.workers if w.process)
            log.info(
                "listening on %s:%d workers=%d pids=%s",
                self.host,
                self.port,
                len(self.workers),
                pids,
            )

    def _kill_stalled(self) -> None:
        """Sample every listening worker's progress and /proc figures; kill the one the
        Watchdog finds stuck (it is then restarted like any worker that dies), and note
        the starved ones, which are left alone."""
        if self.stopping:
            return
        now = time.monotonic()
        samples: dict[int, ProcessSample] = {}
        for worker in self._running():
            assert worker.process is not None
            pid = worker.process.pid
            if worker.snapshot is None or worker.pipe < 0:
                self.watchdog.forget(pid)
                continue  # not listening yet, or exiting
            self._read_reports(worker)  # first what it wrote while this loop was busy
            sample = sample_process(pid)
            if sample is None or worker.snapshot is None or worker.pipe < 0:
                self.watchdog.forget(pid)
                continue
            self.watchdog.observe(pid, now, worker.snapshot.loop.iterations, sample)
            samples[pid] = sample
        by_pid = {w.process.pid: w for w in self._running() if w.process is not None}
        for verdict in self.watchdog.verdicts(now, samples):
            worker = by_pid[verdict.key]
            if not verdict.stuck:
                log.warning(
                    "worker %d (pid %d) sent no report for %.1fs with %s; not killing it",
                    worker.index,
                    verdict.key,
                    verdict.silent,
                    verdict.evidence,
                )
                continue
            log.warning(
                "worker %d (pid %d) sent no report for %.1fs: stuck, %s; its share of new "
                "connections unanswered; killing it",
                worker.index,
                verdict.key,
                verdict.silent,
                verdict.evidence,
            )
            self.watchdog.forget(verdict.key)
            assert worker.process is not None
            worker.process.kill()

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
        if self._remover is not None:
            self._remover.remove(worker.node)
        how = f"signal {-status}" if status < 0 else f"code {status}"
        if worker in self._retiring:
            self._retiring.remove(worker)
            log.info("worker %d (pid %d) retired: exited with %s", worker.index, pid, how)
            if self._quiescing:
                self._check_quiesced()
            return
        if worker in self._incoming:
            self._incoming.remove(worker)
            if not self.stopping:
                log.error(
                    "worker %d's replacement (pid %d) exited with %s before listening; "
                    "rolling restart abandoned, the old workers keep serving",
                    worker.index,
                    pid,
                    how,
                )
                self._abandon_generation()
            return
        if self.stopping:
            log.info("worker %d (pid %d) exited with %s", worker.index, pid, how)
            if self._quiescing:
                self._check_quiesced()
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

    # --- SIGHUP: the rolling restart ----------------------------------------------------

    def _rolling_restart(self) -> None:
        if self.stopping:
            return
        if self.starting or self._incoming or self._quiescing:
            state = "starting" if self.starting else "already being restarted"
            log.warning("SIGHUP: the workers are %s; ignored", state)
            return
        new = self.reload(self.settings)
        if new is None:
            return
        old, self.settings = self.settings, new
        live = [w for w in self.workers if w.process is not None]
        if not self.restart_needed(old, new):
            log.info("SIGHUP: nothing needs a restart; %d workers apply it in place", len(live))
            for worker in live:
                assert worker.process is not None
                worker.process.send_signal(signal.SIGHUP)
            return
        # A dead position is left out: its restart, already due, takes the new settings.
        self._incoming = [_Worker(w.index) for w in live]
        log.info("SIGHUP: restarting %d workers: new ones first, then the old retire", len(live))
        for worker in self._incoming:
            self._spawn(worker)
        if not self._incoming:
            log.info("rolling restart done")

    def _replace_generation(self) -> None:
        """Every replacement listens: each takes its position, and the old workers all
        retire: first they stop accepting, then (``_drain_retiring``) they close their
        peers."""
        incoming, self._incoming = self._incoming, []
        retiring = []
        for new in incoming:
            assert new.process is not None
            old = self.workers[new.index - 1]
            self.workers[new.index - 1] = new
            if old.restart is not None:  # it died meanwhile: no need to restart it now
                old.restart.cancel()
            if old.process is not None:
                log.info(
                    "worker %d: pid %d replaces pid %d, which now closes its peers",
                    new.index,
                    new.process.pid,
                    old.process.pid,
                )
                retiring.append(old)
        self._retiring += retiring
        self._quiesce(retiring, self._drain_retiring)

    def _quiesce(self, workers: list[_Worker], then: Callable[[list[_Worker]], None]) -> None:
        """Tell ``workers`` to stop accepting; ``then(workers)`` once each has reported
        it or is gone (``_check_quiesced``), or RETIRE_TIMEOUT has passed."""
        self._quiescing = workers
        self._after_quiesce = then
        for worker in workers:
            assert worker.process is not None
            worker.process.send_signal(STOP_ACCEPTING_SIGNAL)
        self._quiesce_deadline = self.loop.call_later(RETIRE_TIMEOUT, self._quiesced)
        self._check_quiesced()

    def _check_quiesced(self) -> None:
        """Once none of the workers told to stop accepting accepts any more (each
        reported it, or is gone), they may close their peers: a client they close can
        only reconnect elsewhere."""
        if all(
            w.process is None or (w.snapshot is not None and w.snapshot.server.draining)
            for w in self._quiescing
        ):
            self._quiesced()

    def _quiesced(self) -> None:
        workers, then = self._quiescing, self._after_quiesce
        self._stop_quiescing()
        then(workers)

    def _drain_retiring(self, quiescing: list[_Worker]) -> None:
        """SIGTERM to the retiring workers told to stop accepting: each closes its
        peers spread over its drain period, then exits."""
        for old in quiescing:
            if old.process is None:
                continue
            if old.snapshot is None or not old.snapshot.server.draining:
                log.warning(
                    "worker %d (pid %d) has not reported that it stopped accepting after "
                    "%.1fs; it closes its peers anyway, some of which may return to it",
                    old.index,
                    old.process.pid,
                    RETIRE_TIMEOUT,
                )
            old.process.send_signal(signal.SIGTERM)
        log.info("rolling restart done")

    def _stop_quiescing(self) -> None:
        self._quiescing = []
        if self._quiesce_deadline is not None:
            self._quiesce_deadline.cancel()
            self._quiesce_deadline = None

    def _abandon_generation(self) -> None:
        """A replacement failed: the others retire before serving anyone, and the old
        workers stay."""
        incoming, self._incoming = self._incoming, []
        for new in incoming:
            assert new.process is not None
            self._retiring.append(new)
            new.process.send_signal(signal.SIGTERM)

    # --- statistics ----------------------------------------------------------------

    def _note_peak(self) -> None:
        """The total peak is the most connections seen at once over all workers: the
        workers' own peaks happened at different times, so it is tracked here, at
        each snapshot, rather than derived from theirs."""
        now = sum(w.snapshot.server.connections for w in self.workers if w.snapshot is not None)
        self._peak = max(self._peak, now)

    def report(self) -> Report:
        live = {str(w.index): w.snapshot for w in self.workers if w.snapshot is not None}
        retiring = [w.snapshot for w in self._retiring if w.snapshot is not None]
        total = combine([self._retired, *live.values(), *retiring])
        peak = max(self._peak, total.server.peak, total.server.connections)
        self._peak = total.server.peak = peak
        pids = {str(w.index): w.process.pid for w in self.workers if w.process is not None}
        serving = not self.stopping and bool(live)
        return Report(total, live, self.restarts, serving, pids)

    def _log_stats(self) -> None:
        report = self.report()
        log.info("stats total workers=%d %s", len(report.workers), summary(report.total))


def _worker_main() -> int:
    """A worker process: read ``(target, settings, link)`` from stdin and call the
    target."""
    target, settings, link = pickle.load(sys.stdin.buffer)
    return int(target(settings, link))


if __name__ == "__main__":
    sys.exit(_worker_main())
