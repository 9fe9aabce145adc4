"""A load-generator worker process: many open-loop heartbeat clients on one EventLoop.

Each client connects (bound to its loopback source address), sends HELLO asking for
the interval, and from WELCOME on sends a PING at every slot of a fixed schedule:
client ``g`` owns the slots ``epoch + phase(g) x I + k x I``, where ``phase(g)`` is the
fractional part of ``g`` times the golden ratio: the phases of any run of consecutive
clients (those connected so far in a ramp, which goes in index order) spread evenly
over the interval, so the load is smooth during the ramp as well as after it. A
PONG's round trip is timed from the slot's *scheduled* time, not from when the PING
left, so a stall anywhere (server, kernel or this worker) shows up in the
figures instead of silently delaying the next PING (coordinated omission). If the
worker falls whole intervals behind, the skipped slots are recorded as if their
PINGs had waited for the one sent late, as wrk2 does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import signal
import socket
import ssl
import time
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path

from hdrh.histogram import HdrHistogram

from bench.histograms import new_histogram, record_seconds
from bench.messages import Command, Counts, Final, Tick, WorkerPlan
from hbloop.core.backoff import Backoff
from hbloop.core.policy import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_PENDING,
    DEFAULT_PING_STRIKES,
    LINGER_SECONDS,
)
from hbloop.core.session import (
    NO_EVENTS,
    Closed,
    Disconnect,
    Events,
    Opened,
    PongReceived,
    Reason,
    Role,
    Session,
    SessionConfig,
    State,
)
from hbloop.core.wire import Code, encode_hello
from hbloop.net.channel import Channel, make_channel
from hbloop.net.counters import IoCounters
from hbloop.net.loop import EventLoop, Timer
from hbloop.net.sockets import raise_open_files_limit
from hbloop.net.tls import TlsLayer, client_context

# How often the ramp starts the connects that the rate allows: fine enough that
# connects are not bunched, coarse enough to cost nothing.
RAMP_STEP = 0.01

# A connect must be answered by WELCOME within this long, or it counts as failed:
# twice a client's usual deadline, since under a ramp of thousands of connects a
# second the accept queue is long.
WELCOME_DEADLINE = 2 * DEFAULT_HANDSHAKE_TIMEOUT

# Error messages kept verbatim for the report; the rest are only counted.
MAX_ERROR_SAMPLES = 5

# Linux lets a bound socket defer choosing its port to connect(), where the port
# only has to be unique per 4-tuple rather than per source address (Linux 4.2+).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

# With reconnect (--storm), a dropped client connects again at once, as the issue's
# fleet does; a connect that fails (refused while a server restarts, or shed) is
# retried with hbloop's capped exponential back-off and full jitter, from this base to
# this cap. With a fixed 0.2 to 0.4 s, 200,000 clients closed by --storm hup failed
# 143,640 connects in 9 s (shed at the handshake limit) and 4,500 got back in.
RETRY_DELAY = 0.2
RETRY_CAP = 5.0


# The golden ratio's fractional part: multiples of it modulo 1 fill [0, 1) more evenly
# than those of any other step (the three-distance theorem's best case), whatever
# prefix of them is taken.
GOLDEN = (5**0.5 - 1) / 2


def phase(index: int) -> float:
    """Client ``index``'s share of the interval, in [0, 1), at which it heartbeats."""
    return (index * GOLDEN) % 1.0


class BenchClient:
    """One heartbeat client: its channel runs a client session, the worker does the
    bookkeeping.

    The session answers the server's PINGs, judges WELCOME, CLOSE and ERROR; this
    class only replaces rule T3's PINGs (``auto_ping`` off) with the open-loop
    schedule and times each PONG (``report_pongs``). The session never judges the
    server dead (``enforce_timeout`` off): a stalled server or a zombie is closed by
    the server alone, which is what the bench measures.
    """

    __slots__ = (
        "worker",
        "channel",
        "index",
        "next_slot",
        "outstanding",
        "last_frame_at",
        "zombie",
        "schedule",
        "connect_at",
    )

    def __init__(
        self, worker: Worker, sock: socket.socket, index: int, tls: TlsLayer | None
    ) -> None:
        self.worker = worker
        session = Session.client(worker.session_config(index), worker.loop.now)
        self.channel: Channel[BenchClient] = make_channel(worker, self, sock, session, tls)
        self.index = index
        self.next_slot = 0.0
        self.outstanding: list[tuple[float, int]] = []  # (first slot, slots it stands for)
        self.last_frame_at = time.monotonic()
        self.zombie = False
        self.schedule: Timer | None = None
        self.connect_at = time.monotonic()

    @property
    def welcomed(self) -> bool:
        return self.channel.session.handshaken

    def handle(self, events: Events) -> None:
        now = time.monotonic()
        for event in events:
            if isinstance(event, PongReceived):
                self._on_pong(now)
            elif isinstance(event, Opened):
                self._on_welcome(now)
            elif isinstance(event, Closed):
                self._stop_schedule()
                self.worker.ended(self, event.disconnect)

    def _on_welcome(self, now: float) -> None:
        # This client's phase, then the first slot of the schedule not yet past.
        plan = self.worker.plan
        interval = self.channel.session.grant.interval
        first = plan.epoch + phase(self.index) * interval
        self.next_slot = first + max(0, -int((first - now) // interval)) * interval
        self.schedule = self.worker.loop.call_at(self.next_slot, self.on_slot)
        self.worker.welcomed(self)

    def on_slot(self) -> None:
        now = time.monotonic()
        slot = self.next_slot
        channel = self.channel
        interval = channel.session.grant.interval
        slots = 1 + int((now - slot) // interval)  # more than 1: the worker fell behind
        channel.apply((channel.session.ping(self.worker.loop.now), NO_EVENTS))
        if channel.released:
            return
        self.last_frame_at = now
        self.outstanding.append((slot, slots))
        self.next_slot = slot + slots * interval
        self.worker.skipped_slots += slots - 1
        self.schedule = self.worker.loop.call_at(self.next_slot, self.on_slot)

    def _on_pong(self, now: float) -> None:
        if not self.outstanding:
            return  # an unsolicited PONG is a legal one-way heartbeat
        slot, slots = self.outstanding.pop(0)
        interval = self.channel.session.grant.interval
        for k in range(slots):
            self.worker.record_rtt(now - (slot + k * interval))

    def _stop_schedule(self) -> None:
        if self.schedule is not None:
            self.schedule.cancel()
            self.schedule = None

    def silence(self) -> None:
        """Become a zombie: keep the socket open and reading, never send again."""
        self.zombie = True
        self._stop_schedule()


class Worker:
    """Runs one ``WorkerPlan`` and reports a ``Tick`` a second to the orchestrator."""

    def __init__(self, plan: WorkerPlan, pipe: Connection) -> None:
        self.plan = plan
        self.pipe = pipe
        self.loop = EventLoop()
        self.counters = IoCounters()
        self.max_pending = DEFAULT_MAX_PENDING
        # Each index's latest connection: a reconnect replaces the one it follows, so
        # that a storm's failed connects (510,680 in one restart of 200,000 clients) are freed
        # rather than kept, with their channels and sessions, for the cyclic GC to walk.
        self.clients: dict[int, BenchClient] = {}
        self.started = 0
        self.in_flight = 0
        self.counts = Counts()
        self.pongs = 0
        self.skipped_slots = 0
        self.rtt: HdrHistogram = new_histogram()
        self.zombie_late: list[float] = []
        self.zombies: list[BenchClient] = []
        self.error_samples: list[str] = []
        self.stopping = False
        self.done = False
        self._ramp_start = 0.0
        self.lost: dict[int, float] = {}  # reconnect: client index -> first drop not yet back
        self.retries: dict[int, Backoff] = {}  # reconnect: of the lost refused so far
        # Reconnects waiting for one of the ``max_in_flight`` connect slots.
        self.queued: deque[int] = deque()
        self.drops: list[tuple[int, float, bool]] = []
        self.returns: list[tuple[int, float]] = []
        self.handshakes: HdrHistogram = new_histogram()
        self.tls: ssl.SSLContext | None = None
        if plan.tls_ca is not None:
            self.tls = client_context(Path(plan.tls_ca))

    # --- running -----------------------------------------------------------------

    def run(self) -> None:
        self.loop.add_reader(self.pipe.fileno(), self.on_command)
        self._ramp_start = time.monotonic()
        self.ramp()
        second = int(time.monotonic() - self.plan.epoch) + 1
        self.loop.call_at(self.plan.epoch + second, self.tick, second)
        while not self.done:
            self.loop.run_once()
        self.loop.close()

    def on_command(self) -> None:
        try:
            command = self.pipe.recv()
        except EOFError:  # the orchestrator is gone
            command = Command.STOP
        if command is Command.ZOMBIFY:
            self.zombify()
        elif command is Command.STOP:
            self.stop()
        elif command is Command.LEAVE:
            self.leave()

    def ramp(self) -> None:
        indices = self.plan.indices
        elapsed = time.monotonic() - self._ramp_start
        allowed = min(len(indices), int(elapsed * self.plan.connect_rate) + 1)
        while self.started < allowed and self.in_flight < self.plan.max_in_flight:
            self.connect(indices[self.started])
            self.started += 1
        if self.started < len(indices):
            self.loop.call_later(RAMP_STEP, self.ramp)

    def connect(self, index: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sources = self.plan.sources
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if sources:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((sources[index % len(sources)], 0))
        except OSError as exc:
            sock.close()
            self.counts.connect_failures += 1
            self._sample_error(f"connect: {errno.errorcode.get(exc.errno or errno.EIO)}")
            return
        tls = None
        if self.tls is not None:
            tls = TlsLayer(self.tls, server_side=False, server_hostname=self.plan.target[0])
        client = BenchClient(self, sock, index, tls)
        self.clients[index] = client
        self.in_flight += 1
        client.channel.connect(self.plan.target)  # a failure ends it as connect_failures

    def reconnect(self, index: int) -> None:
        """Connect client ``index`` again (a storm's reconnect or retry): at once, or
        once a slot is free, so that the cap the ramp keeps on connects awaiting
        WELCOME holds for a storm too. Without it, 200,000 clients restarted at once
        each waited in the server's backlog with a WELCOME deadline running, gave up
        after it, and connected again, at about 50 us of generator CPU each."""
        if self.stopping:
            return
        if self.in_flight < self.plan.max_in_flight:
            self.connect(index)
        else:
            self.queued.append(index)

    def _free_slot(self) -> None:
        """A connect has been answered: the next reconnect waiting takes its slot
        (in the next iteration: a connect that fails at once ends in ``ended``)."""
        self.in_flight -= 1
        if self.queued:
            self.loop.call_soon(self.reconnect, self.queued.popleft())

    def tick(self, second: int) -> None:
        if self.done:  # STOP came in this iteration: the Final was the last report
            return
        self.pipe.send(
            Tick(
                worker=self.plan.worker,
                second=second,
                counts=dataclasses.replace(self.counts),
                pongs=self.pongs,
                rtt=self.rtt.encode() if self.pongs else b"",
                ramp_done=self.started == len(self.plan.indices) and not self.in_flight,
                late=time.monotonic() - (self.plan.epoch + second),
            )
        )
        self.pongs = 0
        self.rtt.reset()
        self.loop.call_at(self.plan.epoch + second + 1, self.tick, second + 1)

    def zombify(self) -> None:
        """Silence ``plan.zombies`` open clients, evenly spaced over the phases."""
        live = [c for c in self.clients.values() if c.channel.session.state is State.OPEN]
        count = min(self.plan.zombies, len(live))
        for k in range(count):
            client = live[k * len(live) // count]
            client.silence()
            self.zombies.append(client)

    def stop(self) -> None:
        unclosed = sum(1 for c in self.zombies if c.channel.session.state is State.OPEN)
        self.leave()
        final = Final(
            worker=self.plan.worker,
            counts=self.counts,
            zombies=len(self.zombies),
            zombie_late=self.zombie_late,
            zombies_unclosed=unclosed,
            skipped_slots=self.skipped_slots,
            error_samples=self.error_samples,
            drops=self.drops,
            returns=self.returns,
            handshakes=self.handshakes.encode() if self.returns else b"",
        )
        with contextlib.suppress(OSError):  # the orchestrator may be gone already
            self.pipe.send(final)
        self.done = True

    def leave(self) -> None:
        """Close every client with CLOSE NORMAL in this one iteration; none reconnects
        and, from now on, no close is classified (``ended``)."""
        self.stopping = True
        for client in self.clients.values():
            channel = client.channel
            if not channel.released:
                channel.close(Code.NORMAL)
                channel.drop(Reason.CLOSED_LOCALLY)
        self.counts.open = 0

    # --- called by clients -------------------------------------------------------------

    def session_config(self, index: int) -> SessionConfig:
        """Client ``index``'s: its own name, the plan's interval, PINGs on the bench's
        schedule rather than rule T3's, and every PONG reported for timing."""
        return SessionConfig(
            Role.CLIENT,
            handshake_timeout=WELCOME_DEADLINE,
            ping_strikes=DEFAULT_PING_STRIKES,
            linger=LINGER_SECONDS,
            hello=encode_hello(f"bench-{index}", round(self.plan.interval * 1000)),
            auto_ping=False,
            report_pongs=True,
            counters=self.counters,
            enforce_timeout=False,
        )

    def channel_events(self, channel: Channel[BenchClient], events: Events) -> None:
        channel.app.handle(events)

    def channel_released(self, channel: Channel[BenchClient]) -> None:
        """Nothing to do: the worker counts connections by their session's events."""

    def tls_handshake(self, done: bool) -> None:
        """Nothing to count: a failed handshake ends the client as a connect failure."""

    def record_rtt(self, seconds: float) -> None:
        self.pongs += 1
        record_seconds(self.rtt, seconds)

    def welcomed(self, client: BenchClient) -> None:
        self._free_slot()
        self.counts.established += 1
        self.counts.open += 1
        dropped_at = self.lost.pop(client.index, None)
        self.retries.pop(client.index, None)
        if dropped_at is not None:
            now = time.monotonic()
            self.returns.append((client.index, now))
            record_seconds(self.handshakes, now - client.connect_at)

    def ended(self, client: BenchClient, disconnect: Disconnect) -> None:
        """Classify a connection the server ended (ours, at STOP, are not reported)."""
        if self.stopping:
            return
        now = time.monotonic()
        counts = self.counts
        if client.welcomed:
            counts.open -= 1
        else:
            self._free_slot()
            if client.index in self.lost:  # a reconnect refused or shed: again, later
                backoff = self.retries.setdefault(client.index, Backoff(RETRY_DELAY, RETRY_CAP))
                delay = backoff.next_delay()
                self.loop.call_later(delay, self.reconnect, client.index)
        if disconnect.reason in (Reason.PEER_ERROR, Reason.PROTOCOL_ERROR):
            counts.protocol_errors += 1
            self._sample_error(f"protocol error: {disconnect}")
        elif not client.welcomed:
            counts.connect_failures += 1
            self._sample_error(f"connect failed: {disconnect}")
        elif client.zombie:
            timeout = client.channel.session.grant.timeout
            self.zombie_late.append(now - client.last_frame_at - timeout)
        else:
            counts.dropped += 1
            if disconnect.reason is Reason.PEER_CLOSED and disconnect.code == Code.TIMEOUT:
                counts.timeouts += 1
            self._sample_error(f"dropped: {disconnect}")
            if self.plan.reconnect:
                self.drops.append((client.index, now, disconnect.code is None))
                self.lost.setdefault(client.index, now)
                self.loop.call_soon(self.reconnect, client.index)  # once this close is done

    def _sample_error(self, text: str) -> None:
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(text)


def worker_main(plan: WorkerPlan, pipe: Connection) -> None:
    """Entry point of a worker process."""
    # Ctrl-C reaches the whole process group; the orchestrator decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_open_files_limit()
    Worker(plan, pipe).run()
