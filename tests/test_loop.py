"""The event loop: timer heap ordering, re-arming, lazy cancellation, I/O, signals."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from hbloop.net.loop import COALESCE_BELOW, MIN_CANCELLED_FOR_PURGE, EventLoop


@pytest.fixture
def loop():
    ev = EventLoop()
    yield ev
    ev.close()


def test_timers_fire_in_deadline_order(loop: EventLoop) -> None:
    fired: list[int] = []
    base = loop.time()
    for i in (5, 1, 4, 2, 3):
        loop.call_at(base + i * 0.01, fired.append, i)
    assert loop.run_until(lambda: len(fired) == 5, timeout=5)
    assert fired == [1, 2, 3, 4, 5]


def test_equal_deadlines_all_fire_in_one_iteration(loop: EventLoop) -> None:
    fired: list[str] = []
    when = loop.time()
    for name in "abcde":
        loop.call_at(when, fired.append, name)
    loop.run_once()
    assert sorted(fired) == list("abcde")  # like asyncio, no order among equals


def test_a_timer_never_fires_early(loop: EventLoop) -> None:
    fired: list[float] = []
    due = loop.time() + 0.05
    loop.call_at(due, lambda: fired.append(loop.time()))
    assert loop.run_until(lambda: fired, timeout=5)
    assert fired[0] >= due


def test_cancelled_timers_do_not_fire(loop: EventLoop) -> None:
    fired: list[int] = []
    keep = loop.call_later(0.01, fired.append, 1)
    drop = loop.call_later(0.005, fired.append, 2)
    drop.cancel()
    drop.cancel()  # idempotent
    assert loop.timer_count == 1
    assert loop.run_until(lambda: fired, timeout=5)
    assert fired == [1]
    keep.cancel()  # cancelling a fired timer is a no-op
    assert loop.timer_count == 0


def test_rearming_from_the_callback_reschedules(loop: EventLoop) -> None:
    """The server's pattern: a timer that checks a timestamp and re-arms itself."""
    state = {"last_seen": loop.time(), "checks": 0, "expired": False}
    timeout = 0.03

    def check() -> None:
        state["checks"] += 1
        due = state["last_seen"] + timeout
        if loop.now >= due:
            state["expired"] = True
        else:
            loop.call_at(due, check)

    loop.call_at(loop.time() + timeout, check)
    # Activity postpones expiry without touching the heap.
    loop.call_later(0.02, lambda: state.update(last_seen=loop.time()))
    assert loop.run_until(lambda: state["expired"], timeout=5)
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
    now = loop.time()
    doomed = [
        loop.call_at(now + 0.001 * i, lambda: None) for i in range(3 * MIN_CANCELLED_FOR_PURGE)
    ]
    fired: list[bool] = []
    loop.call_later(0.05, fired.append, True)
    for timer in doomed:
        timer.cancel()
    assert loop.run_until(lambda: fired, timeout=5)
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


def test_lag_is_measured_and_reset(loop: EventLoop) -> None:
    loop.call_at(loop.time() - 0.5, lambda: None)  # already half a second late
    loop.run_once()
    assert loop.take_max_lag() >= 0.5
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
    loop.call_later(0.05, lambda: None)
    loop.run_once()
    assert got == [b"ping"]  # no reader any more
    loop.forget_fd(a.fileno())
    a.close()
    b.close()


def test_poll_sleeps_until_the_next_deadline(loop: EventLoop) -> None:
    start = loop.time()
    loop.call_later(0.1, lambda: None)
    loop.run_once()  # nothing but the timer: one iteration sleeps, then runs it
    elapsed = loop.time() - start
    assert 0.1 <= elapsed < 2.0
    assert loop.iterations == 1


def test_signals_become_callbacks(loop: EventLoop) -> None:
    seen: list[str] = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: seen.append("usr1"))
    os.kill(os.getpid(), signal.SIGUSR1)
    assert loop.run_until(lambda: seen, timeout=5)
    assert seen == ["usr1"]


def test_stop_ends_run_forever(loop: EventLoop) -> None:
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert loop.iterations >= 1


def test_a_raising_callback_is_logged_and_the_loop_goes_on(loop: EventLoop, caplog) -> None:
    fired: list[str] = []

    def broken() -> None:
        raise RuntimeError("bug in one handler")

    loop.call_later(0, broken)
    loop.call_later(0.01, fired.append, "after")
    a, b = socket.socketpair()
    loop.add_reader(b.fileno(), broken)
    a.send(b"x")
    assert loop.run_until(lambda: fired, timeout=5)
    assert fired == ["after"]
    raised = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert len(raised) >= 2 and all(isinstance(e, RuntimeError) for e in raised)
    loop.forget_fd(b.fileno())
    a.close()
    b.close()


def test_coalescing_waits_after_a_quiet_wake_up_but_not_past_a_deadline() -> None:
    loop = EventLoop(coalesce=0.2)
    try:
        a, b = socket.socketpair()
        loop.add_reader(b.fileno(), lambda: b.recv(100))
        a.send(b"x")
        start = loop.time()
        loop.run_once()  # one event: a quiet wake-up, so it lingers
        assert loop.time() - start >= 0.2
        loop.call_later(0.02, lambda: None)
        a.send(b"y")
        start = loop.time()
        loop.run_once()  # lingers only until the timer is due
        assert loop.time() - start < 0.15
        loop.forget_fd(b.fileno())
        a.close()
        b.close()
    finally:
        loop.close()


def test_a_busy_wake_up_polls_again_at_once() -> None:
    loop = EventLoop(coalesce=5.0)
    pairs = [socket.socketpair() for _ in range(COALESCE_BELOW)]
    try:
        for a, b in pairs:
            loop.add_reader(b.fileno(), lambda b=b: b.recv(100))
            a.send(b"x")
        start = loop.time()
        loop.run_once()
        assert loop.time() - start < 1.0
    finally:
        for a, b in pairs:
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


def test_a_deadline_past_epolls_range_does_not_overflow_the_poll(loop: EventLoop) -> None:
    # A timer 2^32 ms away is the heap's head: epoll_wait's timeout used to overflow
    # (OverflowError). A readable socket makes the poll return at once.
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
