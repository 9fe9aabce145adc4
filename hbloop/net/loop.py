"""A single-threaded event loop: epoll for sockets, a min-heap for deadlines.

Why hand-roll this instead of using asyncio?
--------------------------------------------
A heartbeat server spends nearly all its time doing something trivial many times:
a 6-byte PING arrives, a 6-byte PONG goes back, a timestamp is written. asyncio
wraps each of those in Handles, futures, transports and protocol callbacks; every
layer costs Python function calls, and with tens of thousands of peers those calls
*are* the CPU bill. This loop offers exactly what the server needs and nothing more:

* **Readiness, not completion.** ``add_reader(fd, cb)`` / ``add_writer(fd, cb)``, as
  in Redis' ``ae.c``. The callback does the recv or send itself, so the hot path is
  one dict lookup and one call per ready socket.
* **Level-triggered epoll.** A callback may read once and return; if more bytes are
  waiting, epoll reports the socket again. That keeps one chatty peer from starving
  the others, at the price of one extra wake-up when a read drains a socket exactly.
* **Writers only while needed.** Callers send at once and register for writability
  only while output is pending (asyncio's selector transport does the same), so an
  idle connection costs no epoll traffic at all.
* **Deadlines in a heap with lazy cancellation.** ``cancel()`` only marks a timer;
  the heap is rebuilt when cancelled entries dominate it (asyncio's rule). Users of
  the loop are expected to *re-arm lazily*: record the time of an event and check it
  when the deadline comes due, so that a heartbeat costs no heap operation at all.
* **Deadline groups for deadlines a fixed period after a touch.** A peer's silence
  deadline is its last frame plus its timeout; every frame moves it. A
  ``DeadlineGroup`` keeps such members in the order of their touches (an
  ``OrderedDict``), so that moving a member's deadline is one C-level
  ``move_to_end``, and one heap timer at the head's deadline serves the whole group.
  Deadlines stay exact: the head is always the earliest.
* **Sleep exactly until the next deadline.** The poll timeout is the time to the
  heap's head; epoll rounds it up to the millisecond, never down, so a timer is never
  run early. How late one runs is measured (``max_lag``) and reported.
* **Time is injectable.** The loop reads its clock (``time.monotonic`` by default)
  and never the kernel's time directly; a ``VirtualClock`` such as
  ``hbloop.net.clock.MockClock`` also decides how long each wait really lasts and
  how far its time moves, so tests of deadlines run without sleeping.
* **Signals become events.** ``signal.set_wakeup_fd`` writes the signal number to a
  socketpair that the loop watches, so handlers run as ordinary callbacks between
  iterations, never in the middle of a send.

* **A failing callback is not a failing server.** An exception from a callback is
  logged with its traceback and the loop goes on, as asyncio's does: one bug in the
  handling of one peer must not drop tens of thousands of others.

What it gives up: portability (epoll is Linux-only, and isolated in ``_Epoll``, as
Redis isolates it in ae_epoll.c, so that another backend is a small class), and
fairness guarantees beyond one read per socket per iteration.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import logging
import math
import select
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from hbloop.net.gather import (
    NATURAL_BATCH_RATE,
    RATE_REVIEW_PERIOD,
    arrival_rate,
    default_limit,
    gather_delay,
    rate_gathers,
)

# The heap is rebuilt when it holds more than this many timers and more than half of
# them are cancelled: below it, skipping dead entries is cheaper than rebuilding.
# Same figures as asyncio's base_events.
MIN_CANCELLED_FOR_PURGE = 100
CANCELLED_FRACTION_FOR_PURGE = 0.5

# Upper bound on events fetched per epoll_wait: the most work one iteration does
# before its due timers run; the kernel hands out the rest on the next call. At 4,096,
# 15,000 peers of one worker closing at once on a starved 2-core machine made
# iterations of up to 6.9 s, and the lease renewal of its presence node (a timer, and
# a reply on the loop) lapsed. 512 heartbeats are about 15 ms of work (30 us each);
# the epoll_wait and timer check a wake-up adds are a few microseconds.
MAX_EVENTS_PER_POLL = 512

# The longest the loop sleeps in one poll for a deadline, s. epoll_wait takes a C int
# of milliseconds, so a deadline 2^31 ms away (a peer granted a huge interval) would
# overflow it; waking once an hour to find nothing due costs nothing.
MAX_POLL_TIMEOUT = 3600.0

# The poll timeout that means "no deadline": wait for I/O (or a signal) only.
NO_DEADLINE = -1.0

Callback = Callable[..., Any]
Clock = Callable[[], float]
#: The backend's poll: ``poll(timeout_s, maxevents)`` returns ``[(fd, mask), ...]``.
Poll = Callable[[float, int], list[tuple[int, int]]]


@runtime_checkable
class VirtualClock(Protocol):
    """A clock whose time is not the kernel's (``hbloop.net.clock.MockClock``). The
    loop's waits go through it, so that it decides how long they really last and how
    far its time moves meanwhile."""

    def __call__(self) -> float:
        """The time now, s."""
        ...

    def wait(self, poll: Poll, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        """Poll for I/O until ``timeout`` clock seconds have passed (``NO_DEADLINE``:
        until I/O comes); return the events."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of clock time pass with nothing happening."""
        ...


log = logging.getLogger("hbloop.loop")


class Timer(float):
    """A scheduled callback; ``cancel()`` is O(1) and leaves the entry in the heap.

    A Timer *is* its deadline: it subclasses ``float``, so the heap orders timers
    with C float comparisons and needs no ``(when, seq, timer)`` tuple around each.
    With one timer per connection and a push per timeout period, a Python ``__lt__``
    cost about half a microsecond per heartbeat, and the tuple about 90 bytes per
    connection. Timers due at the same instant run in no guaranteed order, as in
    asyncio.
    """

    __slots__ = ("callback", "args", "cancelled", "_loop")

    callback: Callback
    args: tuple[Any, ...]
    cancelled: bool
    _loop: EventLoop

    def __new__(
        cls, loop: EventLoop, when: float, callback: Callback, args: tuple[Any, ...]
    ) -> Timer:
        timer = super().__new__(cls, when)
        timer._loop = loop
        timer.callback = callback
        timer.args = args
        timer.cancelled = False
        return timer

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._loop._cancelled_count += 1


class DeadlineGroup(OrderedDict[Any, None]):
    """Members whose deadline is ``period`` after their touch time ``touched(member)``,
    kept in the order of their touches: one loop timer, at the head's deadline, serves
    them all, and moving a member's deadline is ``move_to_end(member)``, one C call and
    no heap operation (see the module's essay).

    The order is the caller's to keep, which it does by two rules: a member joins
    (``join``) only with a touch time no earlier than the tail's (``admits``), and is
    moved to the end each time its touch time moves on to the loop's ``now``. When the
    head's deadline comes, each due member is taken out and ``expire(member)`` runs;
    the timer then re-arms at the new head's deadline. A member touched meanwhile only
    makes that firing find nothing due, once per ``period`` at most.
    """

    def __init__(
        self, loop: EventLoop, period: float, touched: Callable[[Any], float], expire: Callback
    ) -> None:
        super().__init__()
        self.loop = loop
        self.period = period
        self.touched = touched
        self.expire = expire
        self.timer: Timer | None = None

    def admits(self, touched: float) -> bool:
        """True if a member touched at ``touched`` may join without breaking the order."""
        if not self:
            return True
        return touched >= self.touched(next(reversed(self)))

    def join(self, member: Any) -> None:
        """Add ``member`` at the end (``admits`` said yes)."""
        self[member] = None
        if self.timer is None:
            self._arm()

    def leave(self, member: Any) -> None:
        """Take ``member`` out; the group timer, if it was the head, finds out lazily,
        and goes with the last member (a loop whose peers are gone holds no timer)."""
        self.pop(member, None)
        if not self and self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _arm(self) -> None:
        if self:
            due = self.touched(next(iter(self))) + self.period
            self.timer = self.loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self.timer = None
        now = self.loop.now
        touched = self.touched
        period = self.period
        while self:
            member = next(iter(self))
            if touched(member) + period > now:
                break
            del self[member]
            try:
                self.expire(member)
            except Exception:
                log.exception("deadline of %r raised; the loop carries on", member)
        if self.timer is None:  # else a member that rejoined armed it
            self._arm()


class _Epoll:
    """The OS backend: the only code that knows about epoll. The loop tells it the
    old and new interest of an fd, so it keeps no table of its own.

    Interest and readiness are masks the loop builds and tests with ``READABLE`` and
    ``WRITABLE`` alone, as ae.c does with AE_READABLE and AE_WRITABLE. Here they are
    the epoll bits that wake a reader and a writer, so that an event's mask needs no
    translation on its way from the kernel to the loop.
    """

    READABLE = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP
    WRITABLE = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
    # A reader that other processes' epolls watch too: the kernel wakes one of the
    # waiting ones (EPOLLEXCLUSIVE, Linux 4.5), which takes no EPOLLRDHUP (EINVAL).
    SHARED_READABLE = select.EPOLLIN | select.EPOLLEXCLUSIVE

    def __init__(self) -> None:
        self._ep = select.epoll()
        #: ``wait(timeout_s, maxevents)``: epoll_wait, bound straight to the C method
        #: because it is called once per loop iteration; a timeout of -1 blocks.
        self.wait = self._ep.poll

    def fileno(self) -> int:
        return self._ep.fileno()

    def set_interest(self, fd: int, old: int, new: int) -> None:
        """Tell the kernel; raises OSError (EBADF, ENOENT, ...) if it refuses."""
        if new == old:
            return
        if not new:
            self._ep.unregister(fd)
        elif not old:
            self._ep.register(fd, new)
        else:
            self._ep.modify(fd, new)

    def forget(self, fd: int) -> None:
        """Drop an fd that is about to be closed (closing it unregisters it anyway)."""
        with contextlib.suppress(OSError):
            self._ep.unregister(fd)

    def close(self) -> None:
        self._ep.close()


class EventLoop:
    """Readiness callbacks on file descriptors, timers, and signal callbacks.

    ``coalesce`` (seconds, default 0: off) trades latency for CPU: after a quiet
    wake-up, the loop waits up to that long (never past the next deadline) before
    polling again, so that the next wake-up serves the events that arrived meanwhile
    in one batch. Each event then waits up to ``coalesce`` longer, and each heartbeat
    costs a fraction of an ``epoll_wait`` and of one loop iteration instead of a whole
    one. It adapts (``hbloop.net.gather``): the loop measures the rate events arrive
    at (``arrival_rate``, a moving average over wake-ups), and waits only while a
    wait would gather events, and no longer than a batch takes to come, so a trickle
    pays no latency for a batch that never comes. ``coalesce_max_rate`` (events a
    second, default infinity) turns it off above that rate, where wake-ups bring
    batches of their own (``hbloop.net.gather.NATURAL_BATCH_RATE``).

    ``clock`` is where the loop's time comes from, ``time.monotonic`` by default. Any
    callable returning seconds will do for the loop's time, with waits still measured
    by the kernel; a ``VirtualClock`` (``hbloop.net.clock.MockClock``) runs the waits
    too, so that a test decides when time passes.
    """

    def __init__(
        self,
        coalesce: float = 0.0,
        clock: Clock = time.monotonic,
        coalesce_max_rate: float = math.inf,
    ) -> None:
        if coalesce < 0:
            raise ValueError("coalesce cannot be negative")
        self.coalesce = coalesce
        self.coalesce_max_rate = coalesce_max_rate
        #: The loop's clock: ``time.monotonic`` unless a test injects another.
        self.clock = clock
        self._backend = backend = _Epoll()
        self._readable = backend.READABLE
        self._writable = backend.WRITABLE
        self._wait: Poll = backend.wait
        self._sleep: Callable[[float], None] = time.sleep
        if isinstance(clock, VirtualClock):
            self._wait = functools.partial(clock.wait, backend.wait)
            self._sleep = clock.sleep
        self._groups: dict[tuple[float, Callback], DeadlineGroup] = {}
        self._readers: dict[int, Callback] = {}
        self._writers: dict[int, Callback] = {}
        self._timers: list[Timer] = []
        self._cancelled_count = 0
        # Callbacks to run at the end of this iteration (call_soon), in order.
        self._ready: list[tuple[Callback, tuple[Any, ...]]] = []
        self._running = False
        self._signal_handlers: dict[int, Callback] = {}
        self._previous_handlers: dict[int, object] = {}
        self._signal_socks: tuple[socket.socket, socket.socket] | None = None
        self._old_wakeup_fd = -1
        #: The loop's clock, read once per iteration, again before due timers run, and by
        #: ``refresh_now``.
        self.now = clock()
        #: Iterations run so far.
        self.iterations = 0
        #: Worst lateness of a timer since the last ``take_max_lag()``.
        self.max_lag = 0.0
        #: Events per second, measured over wake-ups while coalescing is on (infinity
        #: until a wake-up has taken time: a loop that has measured nothing lingers).
        self.arrival_rate = math.inf
        self._woke = self.now
        # While the rate is not worth gathering (``rate_gathers``: a trickle, or above
        # ``coalesce_max_rate``) the loop measures it once per ``RATE_REVIEW_PERIOD``
        # instead of at each wake-up: until ``_review_at`` it only adds up the events
        # it found in ``_unmeasured``.
        self._review_at = self.now
        self._unmeasured = 0

    # --- file events ------------------------------------------------------------

    def _interest(self, fd: int) -> int:
        return (self._readable if fd in self._readers else 0) | (
            self._writable if fd in self._writers else 0
        )

    def _change(self, fd: int, table: dict[int, Callback], callback: Callback | None) -> None:
        """Set (or, with None, remove) ``fd``'s callback in ``table`` and tell the
        kernel. If the kernel refuses (a closed fd: EBADF), the table is put back as it
        was before the OSError propagates: a stale entry would make the kernel and
        the loop disagree, and the next registration of that fd number a no-op."""
        old = self._interest(fd)
        previous = table.get(fd)
        if callback is None:
            if previous is None:
                return
            del table[fd]
        else:
            table[fd] = callback
        try:
            self._backend.set_interest(fd, old, self._interest(fd))
        except OSError:
            if previous is None:
                del table[fd]
            else:
                table[fd] = previous
            raise

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._change(fd, self._readers, callback)

    def remove_reader(self, fd: int) -> None:
        self._change(fd, self._readers, None)

    def add_shared_reader(self, fd: int, callback: Callback) -> None:
        """``add_reader`` for a listening socket that other processes watch as well (one
        inherited from systemd or a supervisor): a connection wakes one of their loops
        that waits, not all of them only for all but one to find accept() empty.
        ``remove_reader`` and ``forget_fd`` undo it; the fd takes no writer meanwhile."""
        if self._interest(fd):
            raise ValueError(f"fd {fd} is watched already")
        self._readers[fd] = callback
        try:
            self._backend.set_interest(fd, 0, self._backend.SHARED_READABLE)
        except OSError:
            del self._readers[fd]
            raise

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._change(fd, self._writers, callback)

    def remove_writer(self, fd: int) -> None:
        self._change(fd, self._writers, None)

    def forget_fd(self, fd: int) -> None:
        """Remove every callback of an fd the caller is about to close."""
        if self._interest(fd):
            self._readers.pop(fd, None)
            self._writers.pop(fd, None)
            self._backend.forget(fd)

    # --- timers -----------------------------------------------------------------

    def time(self) -> float:
        """The loop's clock now (``now`` is its value when the iteration woke up, or
        when ``refresh_now`` last read it)."""
        return self.clock()

    def refresh_now(self) -> float:
        """Read the clock into ``now`` again and return it, for a callback that must not
        judge by a time read before a stall: a process stopped (SIGSTOP, a paused VM) or
        starved right after the wake-up finds, on resuming, input that waited out the
        whole stall. ``now`` only moves forward, so what the iteration ordered by it
        stays in order."""
        now = self.now = self.clock()
        return now

    def call_at(self, when: float, callback: Callback, *args: Any) -> Timer:
        timer = Timer(self, when, callback, args)
        heapq.heappush(self._timers, timer)
        return timer

    def call_later(self, delay: float, callback: Callback, *args: Any) -> Timer:
        return self.call_at(self.clock() + delay, callback, *args)

    def deadline_group(
        self, period: float, touched: Callable[[Any], float], expire: Callback
    ) -> DeadlineGroup:
        """The loop's ``DeadlineGroup`` for ``period`` and ``expire``, made on first use:
        every caller that asks for the same pair shares its one timer."""
        group = self._groups.get((period, expire))
        if group is None:
            group = self._groups[period, expire] = DeadlineGroup(self, period, touched, expire)
        return group

    def call_soon(self, callback: Callback, *args: Any) -> None:
        """Run ``callback(*args)`` at the end of the current iteration (or of the next,
        if called between iterations), after I/O and due timers: the place for work
        that batches what this iteration produced, such as one flush of a pipeline.
        While any is queued the poll does not sleep."""
        self._ready.append((callback, args))

    @property
    def timer_count(self) -> int:
        """Live (not cancelled) timers."""
        return len(self._timers) - self._cancelled_count

    def take_max_lag(self) -> float:
        """Return the worst timer lateness since the previous call, and reset it."""
        lag, self.max_lag = self.max_lag, 0.0
        return lag

    def _purge_cancelled(self) -> None:
        # In place: run_once holds the list in a local across this call.
        self._timers[:] = [timer for timer in self._timers if not timer.cancelled]
        heapq.heapify(self._timers)
        self._cancelled_count = 0

    # --- signals ----------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callback) -> None:
        """Run ``callback()`` from the loop when ``signum`` arrives."""
        if self._signal_socks is None:
            rsock, wsock = socket.socketpair()
            rsock.setblocking(False)
            wsock.setblocking(False)
            self._signal_socks = (rsock, wsock)
            self._old_wakeup_fd = signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
            self.add_reader(rsock.fileno(), self._read_signals)
        self._signal_handlers[signum] = callback
        # A Python-level handler must exist for the C handler to write the wakeup byte;
        # it does nothing itself because the work happens in _read_signals.
        previous = signal.signal(signum, _ignore_signal)
        self._previous_handlers.setdefault(signum, previous)

    def remove_signal_handler(self, signum: int) -> None:
        """Undo ``add_signal_handler``: the handler the signal had before is back."""
        if self._signal_handlers.pop(signum, None) is not None:
            signal.signal(signum, self._previous_handlers.pop(signum))  # type: ignore[arg-type]

    def _read_signals(self) -> None:
        assert self._signal_socks is not None
        try:
            data = self._signal_socks[0].recv(4096)
        except BlockingIOError:
            return
        for signum in data:
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                handler()

    # --- running ----------------------------------------------------------------

    def stop(self) -> None:
        """Make ``run_forever`` return after the current iteration."""
        self._running = False

    def run_forever(self) -> None:
        self._running = True
        while self._running:
            self.run_once()

    def run_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Iterate until ``condition()`` is true or ``timeout`` seconds pass."""
        deadline = self.clock() + timeout
        guard = self.call_at(deadline, _nothing)  # bounds the poll's sleep
        try:
            while not condition():
                if self.clock() >= deadline:
                    return False
                self.run_once()
            return True
        finally:
            guard.cancel()

    def run_once(self) -> None:
        # This runs once per wake-up, often for a single heartbeat: locals over
        # attribute and global look-ups, and no call that can be avoided.
        timers = self._timers
        clock = self.clock
        cancelled = self._cancelled_count
        if cancelled > MIN_CANCELLED_FOR_PURGE and cancelled > CANCELLED_FRACTION_FOR_PURGE * len(
            timers
        ):
            self._purge_cancelled()
        while timers and timers[0].cancelled:
            heapq.heappop(timers)
            self._cancelled_count -= 1
        if self._ready:
            timeout = 0.0
        elif timers:
            timeout = timers[0] - clock()
            if timeout < 0.0:
                timeout = 0.0
            elif timeout > MAX_POLL_TIMEOUT:
                timeout = MAX_POLL_TIMEOUT
        else:
            timeout = NO_DEADLINE

        events = self._wait(timeout, MAX_EVENTS_PER_POLL)
        now = self.now = clock()
        self.iterations += 1

        readers = self._readers
        writers = self._writers
        read_events = self._readable
        write_events = self._writable
        for fd, mask in events:
            try:  # free in CPython 3.11 unless something raises
                if mask & read_events:
                    callback = readers.get(fd)
                    if callback is not None:
                        callback()
                if mask & write_events:
                    callback = writers.get(fd)
                    if callback is not None:
                        callback()
            except Exception:
                log.exception("callback for fd %d raised; the loop carries on", fd)

        if timers and timers[0] <= now:
            self._run_due_timers()
        if self._ready:
            self._run_ready()
        if self.coalesce:
            if now < self._review_at:
                self._unmeasured += len(events)  # too busy to gather: see _linger
            else:
                self._linger(timers, len(events), now)

    def _linger(self, timers: list[Timer], count: int, woke: float) -> None:
        """After a wake-up that found ``count`` events at ``woke``, let events gather
        for as long as ``hbloop.net.gather.gather_delay`` says. While the rate is not
        worth gathering (``rate_gathers``) the loop stops asking (three calls a
        wake-up, a sixth of a heartbeat's cost) until ``RATE_REVIEW_PERIOD`` has
        passed, and then measures the rate over the whole period."""
        count += self._unmeasured
        self._unmeasured = 0
        elapsed = woke - self._woke
        # A measure over a whole review period is an average already: it stands alone.
        previous = self.arrival_rate if elapsed < RATE_REVIEW_PERIOD else math.inf
        self.arrival_rate = arrival_rate(previous, count, elapsed)
        self._woke = woke
        if not rate_gathers(self.arrival_rate, self.coalesce, self.coalesce_max_rate):
            self._review_at = woke + RATE_REVIEW_PERIOD
            return
        until_due = timers[0] - self.clock() if timers else math.inf
        delay = gather_delay(
            count, self.arrival_rate, self.coalesce, until_due, self.coalesce_max_rate
        )
        if delay:
            self._sleep(delay)

    def _run_due_timers(self) -> None:
        # Take the due timers out first so that a callback scheduling another timer
        # for "now" waits for the next iteration instead of starving I/O.
        now = self.now = self.clock()
        timers = self._timers
        due: list[Timer] = []
        while timers and timers[0] <= now:
            timer = heapq.heappop(timers)
            if timer.cancelled:
                self._cancelled_count -= 1
            else:
                due.append(timer)
        for timer in due:
            if timer.cancelled:  # cancelled by an earlier callback in this batch
                self._cancelled_count -= 1
                continue
            lag = now - timer
            if lag > self.max_lag:
                self.max_lag = lag
            timer.cancelled = True  # a fired timer is spent; cancel() becomes a no-op
            try:
                timer.callback(*timer.args)
            except Exception:
                log.exception("timer callback %r raised; the loop carries on", timer.callback)

    def _run_ready(self) -> None:
        # Only what was queued so far: a callback queueing another runs it next time.
        ready, self._ready = self._ready, []
        for callback, args in ready:
            try:
                callback(*args)
            except Exception:
                log.exception("callback %r raised; the loop carries on", callback)

    def close(self) -> None:
        if self._signal_socks is not None:
            for signum, previous in self._previous_handlers.items():
                signal.signal(signum, previous)  # type: ignore[arg-type]
            signal.set_wakeup_fd(self._old_wakeup_fd)
            for sock in self._signal_socks:
                sock.close()
            self._signal_socks = None
        self._backend.close()


def paced_loop(
    period: float, coalesce: float | None = None, clock: Clock = time.monotonic
) -> EventLoop:
    """A loop for sources that each send about once per ``period`` seconds (a server's
    heartbeat interval): it gathers up to ``coalesce`` seconds (0: never), or by
    default ``hbloop.net.gather.default_limit(period)``, and then only below
    ``NATURAL_BATCH_RATE`` events a second, where wake-ups bring no batch of their
    own. ``hbloop serve`` and the cost gate (``bench.cost_workload``) both make theirs
    here, so that the gate measures the loop the server runs."""
    if coalesce is None:
        return EventLoop(
            coalesce=default_limit(period), clock=clock, coalesce_max_rate=NATURAL_BATCH_RATE
        )
    return EventLoop(coalesce=coalesce, clock=clock)


def _ignore_signal(signum: int, frame: object) -> None:
    """Placeholder Python handler; see ``EventLoop.add_signal_handler``."""


def _nothing() -> None:
    """Timer body used only to bound a poll's sleep."""


def call_guarded(logger: logging.Logger, what: str, callback: Callback, *args: Any) -> None:
    """Run an application callback; log what it raises instead of letting it unwind
    the caller, so that one bug stops neither the loop nor the code around the call."""
    try:
        callback(*args)
    except Exception:
        logger.exception("application callback %s raised; carrying on", what)
