"""The event loop: timer heap ordering, re-arming, lazy cancellation, I/O, signals.

Timing runs on a ``MockClock`` that jumps to the next deadline whenever the loop
would wait for it (autojump at once: the only I/O here is on socketpairs, written
before the loop runs), so every time is exact and nothing sleeps. A few tests keep
the kernel's clock, to check what only it can show: the real poll's sleep.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from hbloop.net.clock import MockClock
from hbloop.net.gather import (
    COALESCE_BELOW,
    COALESCE_MIN_GATHER,
    NATURAL_BATCH_RATE,
    RATE_REVIEW_PERIOD,
    default_limit,
)
from hbloop.net.loop import MIN_CANCELLED_FOR_PURGE, EventLoop

# How long a loop of the shared-listener test waits at most: long enough that both of
# its threads are asleep in epoll before the connection on a loaded machine.
WAKE_BOUND = 3.0


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0)


@pytest.fixture
def loop(clock: MockClock) -> Iterator[EventLoop]:
    ev = EventLoop(clock=clock)
    yield ev
    ev.close()


def test_timers_fire_in_deadline_order_each_at_its_deadline(loop: EventLoop) -> None:
    fired: list[tuple[int, float]] = []
    for i in (5, 1, 4, 2, 3):
        loop.call_at(i * 10.0, lambda i=i: fired.append((i, loop.now)))
    assert loop.run_until(lambda: len(fired) == 5, timeout=60)
    assert fired == [(i, i * 10.0) for i in (1, 2, 3, 4, 5)]
    assert loop.iterations == 5  # one wait, one jump, one timer each


def test_equal_deadlines_all_fire_in_one_iteration(loop: EventLoop) -> None:
    fired: list[str] = []
    when = loop.time()
    for name in "abcde":
        loop.call_at(when, fired.append, name)
    loop.run_once()
    assert sorted(fired) == list("abcde")  # like asyncio, no order among equals


def test_a_timer_does_not_fire_before_its_deadline(loop: EventLoop, clock: MockClock) -> None:
    fired: list[float] = []
    loop.call_at(5.0, lambda: fired.append(loop.now))
    clock.autojump_threshold = math.inf  # time moves by jumps only
    clock.jump(4.75)
    loop.call_soon(lambda: None)  # an iteration that does not wait
    loop.run_once()
    assert not fired
    clock.jump(0.25)
    loop.run_once()
    assert fired == [5.0]


def test_with_the_kernels_clock_one_poll_sleeps_until_the_deadline() -> None:
    loop = EventLoop()
    try:
        fired: list[float] = []
        due = loop.time() + 0.05
        loop.call_at(due, lambda: fired.append(loop.time()))
        loop.run_once()  # nothing but the timer: one iteration sleeps, then runs it
        assert fired and fired[0] >= due  # epoll rounds up: never early
        assert loop.iterations == 1
    finally:
        loop.close()


def test_cancelled_timers_do_not_fire(loop: EventLoop) -> None:
    fired: list[int] = []
    keep = loop.call_later(10, fired.append, 1)
    drop = loop.call_later(5, fired.append, 2)
    drop.cancel()
    drop.cancel()  # idempotent
    assert loop.timer_count == 1
    assert loop.run_until(lambda: fired, timeout=60)
    assert fired == [1]
    assert loop.now == 10.0  # the cancelled head was skipped, not waited for
    keep.cancel()  # cancelling a fired timer is a no-op
    assert loop.timer_count == 0


def test_rearming_from_the_callback_reschedules(loop: EventLoop) -> None:
    """The server's pattern: a timer that checks a timestamp and re-arms itself."""
    state: dict[str, float] = {"last_seen": loop.time(), "checks": 0}
    expired: list[float] = []
    timeout = 30.0

    def check() -> None:
        state["checks"] += 1
        due = state["last_seen"] + timeout
        if loop.now >= due:
            expired.append(loop.now)
        else:
            loop.call_at(due, check)

    loop.call_at(loop.time() + timeout, check)
    # Activity postpones expiry without touching the heap.
    loop.call_later(20.0, lambda: state.update(last_seen=loop.time()))
    assert loop.run_until(lambda: expired, timeout=600)
    assert expired == [50.0]  # the activity at 20 s, plus the timeout
    assert state["checks"] == 2


def test_heap_is_purged_when_cancelled_entries_dominate(loop: EventLoop) -> None:
    timers = [loop.call_later(100, lambda: None) for _ in range(3 * MIN_CANCELLED_FOR_PURGE)]
    for timer in timers[: 2 * MIN_CANCELLED_FOR_PURGE + 10]:
        timer.cancel()
    loop.call_later(0, lambda: None)
    loop.run_once()
    assert len(loop._timers) == loop.timer_count == MIN_CANCELLED_FOR_PURGE - 10


def test_purging_with_a_cancelled_head_keeps_the_books_straight(loop: EventLoop) -> None:
    # The earliest timers are the cancelled ones, so the purge happens in the same
    # iteration that would otherwise pop them one by one.
    doomed = [loop.call_at(0.001 * i, lambda: None) for i in range(3 * MIN_CANCELLED_FOR_PURGE)]
    fired: list[float] = []
    loop.call_at(1.0, lambda: fired.append(loop.now))
    for timer in doomed:
        timer.cancel()
    assert loop.run_until(lambda: fired, timeout=60)
    assert fired == [1.0]
    # What is left is run_until's own guard timer, cancelled; the count must agree.
    assert loop._cancelled_count == len(loop._timers) == 1
    assert loop.timer_count == 0


def test_timer_scheduled_for_now_by_a_timer_waits_for_the_next_iteration(loop: EventLoop) -> None:
    fired: list[str] = []

    def first() -> None:
        fired.append("first")
        loop.call_at(loop.now, fired.append, "second")

    loop.call_at(loop.time(), first)
    loop.run_once()
    assert fired == ["first"]
    loop.run_once()
    assert fired == ["first", "second"]


def test_lag_is_measured_and_reset(loop: EventLoop, clock: MockClock) -> None:
    loop.call_at(1.0, lambda: None)
    clock.jump(1.5)  # the loop was busy elsewhere: the timer runs half a second late
    loop.run_once()
    assert loop.take_max_lag() == 0.5
    assert loop.take_max_lag() == 0.0


def test_reader_and_writer_callbacks(loop: EventLoop) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    got: list[bytes] = []
    writable: list[bool] = []
    loop.add_reader(b.fileno(), lambda: got.append(b.recv(100)))
    loop.add_writer(a.fileno(), lambda: writable.append(True))
    assert loop.run_until(lambda: writable, timeout=5)
    loop.remove_writer(a.fileno())
    a.send(b"ping")
    assert loop.run_until(lambda: got, timeout=5)
    assert got == [b"ping"]
    loop.remove_reader(b.fileno())
    a.send(b"again")
    loop.call_later(1, lambda: None)
    loop.run_once()
    assert got == [b"ping"]  # no reader any more
    loop.forget_fd(a.fileno())
    a.close()
    b.close()


def test_poll_sleeps_until_the_next_deadline(loop: EventLoop) -> None:
    fired: list[float] = []
    loop.call_later(100.0, lambda: fired.append(loop.now))
    loop.run_once()  # nothing but the timer: one iteration waits, then runs it
    assert fired == [100.0]
    assert loop.iterations == 1


def test_signals_become_callbacks(loop: EventLoop) -> None:
    seen: list[str] = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: seen.append("usr1"))
    os.kill(os.getpid(), signal.SIGUSR1)
    assert loop.run_until(lambda: seen, timeout=5)
    assert seen == ["usr1"]


def test_stop_ends_run_forever(loop: EventLoop) -> None:
    loop.call_later(10, loop.stop)
    loop.run_forever()
    assert loop.now == 10.0


def test_a_raising_callback_is_logged_and_the_loop_goes_on(loop: EventLoop, caplog) -> None:
    fired: list[str] = []

    def broken() -> None:
        raise RuntimeError("bug in one handler")

    a, b = socket.socketpair()

    def broken_reader() -> None:
        b.recv(16)  # else the socket stays readable: the loop is never idle, time stands
        broken()

    loop.call_later(0, broken)
    loop.call_later(1, fired.append, "after")
    loop.add_reader(b.fileno(), broken_reader)
    a.send(b"x")
    assert loop.run_until(lambda: fired, timeout=60)
    assert fired == ["after"]
    raised = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert len(raised) == 2 and all(isinstance(e, RuntimeError) for e in raised)
    loop.forget_fd(b.fileno())
    a.close()
    b.close()


def test_coalescing_waits_after_a_quiet_wake_up_but_not_past_a_deadline() -> None:
    loop = EventLoop(coalesce=0.2, clock=MockClock())
    # Enough events in one linger for the rate to be worth gathering.
    pairs = [socket.socketpair() for _ in range(math.ceil(COALESCE_MIN_GATHER))]
    try:
        for _, b in pairs:
            loop.add_reader(b.fileno(), lambda b=b: b.recv(100))
        pairs[0][0].send(b"x")
        loop.run_once()  # one event: a quiet wake-up, so it lingers
        assert loop.time() == 0.2
        loop.call_later(0.05, lambda: None)
        for a, _ in pairs:  # a linger of 0.2 s would gather as many again
            a.send(b"y")
        loop.run_once()  # lingers only until the timer is due
        assert loop.time() == pytest.approx(0.25, abs=1e-12)
    finally:
        for a, b in pairs:
            loop.forget_fd(b.fileno())
            a.close()
            b.close()
        loop.close()


def test_a_busy_wake_up_polls_again_at_once() -> None:
    loop = EventLoop(coalesce=5.0, clock=MockClock())
    pairs = [socket.socketpair() for _ in range(COALESCE_BELOW)]
    try:
        for a, b in pairs:
            loop.add_reader(b.fileno(), lambda b=b: b.recv(100))
            a.send(b"x")
        loop.run_once()
        assert loop.time() == 0.0  # no linger
    finally:
        for a, b in pairs:
            loop.forget_fd(b.fileno())
            a.close()
            b.close()
        loop.close()


def test_coalescing_stays_off_for_a_trickle_and_comes_back_with_the_load() -> None:
    """The linger adapts: events a second apart would make a 10 ms linger gather
    nothing, so there is none; events a millisecond apart bring it back once the loop
    measures the rate again, a review period (RATE_REVIEW_PERIOD) later."""
    clock = MockClock()
    loop = EventLoop(coalesce=0.01, clock=clock)
    a, b = socket.socketpair()
    try:
        loop.add_reader(b.fileno(), lambda: b.recv(100))
        for _ in range(3):  # one event a second: 1/s x 10 ms is far below one event
            clock.jump(1.0)
            a.send(b"x")
            woke = loop.time()
            loop.run_once()
            assert loop.time() == woke  # no linger
        assert loop.arrival_rate == pytest.approx(1.0)
        lingered = 0
        # One event a millisecond, for two review periods: a linger gathers ten.
        for _ in range(round(2 * RATE_REVIEW_PERIOD / 0.001)):
            clock.jump(0.001)
            a.send(b"x")
            woke = loop.time()
            loop.run_once()
            lingered += loop.time() > woke
        assert lingered  # from the review that measured a millisecond's events
    finally:
        loop.forget_fd(b.fileno())
        a.close()
        b.close()
        loop.close()


def test_a_loop_too_busy_to_gather_measures_the_rate_once_per_review_period() -> None:
    """Above its max rate a loop never gathers, so it only counts events until the
    review period has passed, then measures the rate over the whole period."""
    clock = MockClock()
    loop = EventLoop(coalesce=0.0005, clock=clock, coalesce_max_rate=NATURAL_BATCH_RATE)
    a, b = socket.socketpair()
    gap = 0.0001  # 10,000 events a second
    try:
        loop.add_reader(b.fileno(), lambda: b.recv(100))
        clock.jump(gap)
        a.send(b"x")
        loop.run_once()  # the first measure: above the max rate, so the next is deferred
        first = loop.arrival_rate
        assert first > NATURAL_BATCH_RATE
        for _ in range(round(RATE_REVIEW_PERIOD / gap) - 2):
            clock.jump(gap)
            a.send(b"x")
            loop.run_once()
            assert loop.arrival_rate == first  # counted, not measured
        for _ in range(2):  # past the period: measured over it
            clock.jump(gap)
            a.send(b"x")
            loop.run_once()
        assert loop.arrival_rate == pytest.approx(1 / gap, rel=0.05)
    finally:
        loop.forget_fd(b.fileno())
        a.close()
        b.close()
        loop.close()


@pytest.mark.parametrize(("gap", "lingers"), [(0.003, True), (0.0002, False)])
def test_the_default_bound_lingers_for_slow_heartbeats_only(gap: float, lingers: bool) -> None:
    """hbloop serve's default at a 30 s interval (a 60 ms bound, no gather above
    NATURAL_BATCH_RATE): events 3 ms apart (10,000 peers) make it linger the whole
    bound; events 0.2 ms apart (5,000 a second) never. (Here the events come only
    between iterations, so a linger gathers none and the measured rate then falls:
    test_gather's simulation follows a steady stream.)"""
    clock = MockClock()
    loop = EventLoop(
        coalesce=default_limit(30.0), clock=clock, coalesce_max_rate=NATURAL_BATCH_RATE
    )
    a, b = socket.socketpair()
    try:
        loop.add_reader(b.fileno(), lambda: b.recv(100))
        lingered = []
        for _ in range(30):
            clock.jump(gap)
            a.send(b"x")
            woke = loop.time()
            loop.run_once()
            lingered.append(loop.time() - woke)
        if lingers:
            assert max(lingered) == pytest.approx(default_limit(30.0))
        else:
            assert not any(lingered)
    finally:
        loop.forget_fd(b.fileno())
        a.close()
        b.close()
        loop.close()


def test_negative_coalescing_is_refused() -> None:
    with pytest.raises(ValueError):
        EventLoop(coalesce=-1)


def test_call_soon_runs_after_io_and_timers_in_order(loop: EventLoop) -> None:
    order: list[str] = []
    loop.call_soon(order.append, "first")
    loop.call_soon(lambda: loop.call_soon(order.append, "queued by a callback"))
    loop.call_at(loop.time(), order.append, "timer")
    loop.call_soon(order.append, "second")
    loop.run_once()
    assert order == ["timer", "first", "second"]
    loop.run_once()  # the poll does not sleep while callbacks are queued
    assert order[-1] == "queued by a callback"


def test_the_clock_is_injectable() -> None:
    fake = [1000.0]
    loop = EventLoop(clock=lambda: fake[0])
    try:
        fired: list[float] = []
        loop.call_later(5.0, lambda: fired.append(loop.now))
        assert loop.time() == 1000.0
        fake[0] = 1005.0
        loop.run_once()
        assert fired == [1005.0]
    finally:
        loop.close()


def test_a_deadline_past_epolls_range_does_not_overflow_the_poll() -> None:
    # A timer 2^32 ms away is the heap's head: epoll_wait's timeout used to overflow
    # (OverflowError). A readable socket makes the poll return at once.
    loop = EventLoop()
    timer = loop.call_later(2**32 / 1000, lambda: None)
    a, b = socket.socketpair()
    seen: list[bytes] = []
    loop.add_reader(a.fileno(), lambda: seen.append(a.recv(16)))
    b.send(b"x")
    try:
        loop.run_once()
        assert seen == [b"x"]
    finally:
        loop.remove_reader(a.fileno())
        timer.cancel()
        a.close()
        b.close()
        loop.close()


def test_a_refused_registration_leaves_no_trace(loop: EventLoop) -> None:
    """The kernel refuses a closed fd (EBADF). The loop's table used to keep the
    callback anyway, so that the next socket given that fd number was never
    registered with epoll (its old and new interest looked equal) and never read."""
    a, b = socket.socketpair()
    fd = b.fileno()
    b.close()
    with pytest.raises(OSError):
        loop.add_reader(fd, lambda: None)
    with pytest.raises(OSError):
        loop.add_writer(fd, lambda: None)
    c, d = socket.socketpair()
    try:
        assert fd in (c.fileno(), d.fileno())  # the lowest free number: the same one
        reused, other = (c, d) if c.fileno() == fd else (d, c)
        got: list[bytes] = []
        loop.add_reader(fd, lambda: got.append(reused.recv(16)))
        other.send(b"x")
        assert loop.run_until(lambda: got, timeout=60)
        assert got == [b"x"]
        loop.remove_reader(fd)
    finally:
        for sock in (a, c, d):
            sock.close()


def test_a_refused_change_keeps_the_callback_it_had(loop: EventLoop) -> None:
    """Adding a writer to a reader's fd that was closed behind the loop's back fails;
    the reader's registration is left as the loop knew it."""
    a, b = socket.socketpair()
    reader = lambda: None  # noqa: E731
    loop.add_reader(b.fileno(), reader)
    fd = b.fileno()
    b.close()  # without forget_fd: the kernel drops it from epoll, the loop cannot know
    with pytest.raises(OSError):
        loop.add_writer(fd, lambda: None)
    assert loop._readers == {fd: reader} and not loop._writers
    loop.forget_fd(fd)
    a.close()


# --- the mock clock ----------------------------------------------------------------------


def test_the_mock_clock_moves_only_when_told() -> None:
    clock = MockClock()
    assert clock() == 0.0
    time.sleep(0.001)  # real time passes; the clock's does not
    assert clock() == 0.0
    clock.jump(2.5)
    assert clock() == 2.5
    with pytest.raises(ValueError):
        clock.jump(-1)
    with pytest.raises(ValueError):
        MockClock(rate=-1)
    with pytest.raises(ValueError):
        MockClock(autojump_threshold=-1)


def test_the_mock_clock_runs_at_its_rate() -> None:
    clock = MockClock(rate=1000)
    real_start = time.monotonic()
    start = clock()
    while clock() - start < 1.0:  # a clock second: a millisecond of real time
        pass
    assert time.monotonic() - real_start < 1.0
    clock.rate = 0  # stopped where it was
    stopped = clock()
    assert clock() == stopped >= start + 1.0


def test_at_a_rate_a_wait_lasts_its_share_of_real_time() -> None:
    loop = EventLoop(clock=MockClock(rate=100))
    try:
        fired: list[float] = []
        loop.call_later(5.0, lambda: fired.append(loop.now))
        start = time.monotonic()
        loop.run_once()  # 5 clock seconds: 50 ms of real time
        assert fired and fired[0] >= 5.0
        assert time.monotonic() - start < 5.0
        assert loop.iterations == 1
    finally:
        loop.close()


def test_without_autojump_the_loop_waits_for_io_not_for_time(clock: MockClock) -> None:
    clock.autojump_threshold = math.inf
    loop = EventLoop(clock=clock)
    a, b = socket.socketpair()
    try:
        fired: list[float] = []
        got: list[bytes] = []
        loop.call_later(1.0, lambda: fired.append(loop.now))
        loop.add_reader(b.fileno(), lambda: got.append(b.recv(16)))
        a.send(b"x")
        loop.run_once()  # the poll returns for the byte; no time has passed
        assert got == [b"x"] and not fired and loop.now == 0.0
        clock.jump(1.0)
        loop.run_once()
        assert fired == [1.0]
    finally:
        loop.forget_fd(b.fileno())
        a.close()
        b.close()
        loop.close()


def test_autojump_waits_for_ready_io_first(loop: EventLoop) -> None:
    a, b = socket.socketpair()
    try:
        got: list[bytes] = []
        loop.call_later(1.0, lambda: None)
        loop.add_reader(b.fileno(), lambda: got.append(b.recv(16)))
        a.send(b"x")
        loop.run_once()
        assert got == [b"x"] and loop.now == 0.0  # I/O was ready: no jump
        loop.run_once()
        assert loop.now == 1.0  # nothing was: the clock jumped to the deadline
    finally:
        loop.forget_fd(b.fileno())
        a.close()
        b.close()


def test_run_until_gives_up_at_its_timeout_on_the_loops_clock(loop: EventLoop) -> None:
    start = time.monotonic()
    assert not loop.run_until(lambda: False, timeout=86400)
    assert loop.now == 86400.0
    assert time.monotonic() - start < 1.0  # a day of clock time, without waiting


def _in_epoll_wait(thread_id: int) -> bool:
    """Whether the thread sleeps in epoll_wait (its wchan in /proc): not merely asleep,
    which it also is while it waits for the GIL on its way there."""
    with open(f"/proc/self/task/{thread_id}/wchan") as wchan:
        return wchan.read() == "do_epoll_wait"


def test_a_shared_listener_wakes_one_of_the_loops_waiting_on_it() -> None:
    """Two loops (as two workers would) watch one listening socket: a connection wakes
    one of them, and the other sleeps on until its own timer. Neither accepts, so the
    listener stays readable: a loop woken as well would see it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    loops = [EventLoop(), EventLoop()]
    woken: list[int] = []
    for index, each in enumerate(loops):
        each.add_shared_reader(listener.fileno(), functools.partial(woken.append, index))
        each.call_later(WAKE_BOUND, lambda: None)  # each run_once ends by then
    ids: list[int] = []

    def run(each: EventLoop) -> None:
        ids.append(threading.get_native_id())
        each.run_once()

    threads = [threading.Thread(target=run, args=(each,)) for each in loops]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + WAKE_BOUND / 2
    while not (len(ids) == 2 and all(_in_epoll_wait(i) for i in ids)):
        assert time.monotonic() < deadline, "the loops did not both wait"
        time.sleep(0.01)
    with socket.create_connection(listener.getsockname()):
        for thread in threads:
            thread.join()
    assert len(woken) == 1, woken
    with pytest.raises(ValueError, match="watched already"):
        loops[0].add_shared_reader(listener.fileno(), lambda: None)
    for each in loops:
        each.remove_reader(listener.fileno())
        each.close()
    listener.close()
