"""A clock for tests: an ``EventLoop`` whose time moves only when the test says so.

``MockClock`` is trio's MockClock (trio/_core/_mock_clock.py) for ``EventLoop``.
Timing rules (deadlines, timeouts, lingers, the order of timers) are then tested
without sleeping, and exactly: a peer silent for a 30 s timeout is closed at 30.0 s
of clock time, in a fraction of a second of real time::

    from hbloop import EventLoop, Server, ServerPolicy
    from hbloop.net.clock import MockClock

    clock = MockClock(autojump_threshold=0.05)
    loop = EventLoop(clock=clock)
    server = Server("127.0.0.1", 0, ServerPolicy(), loop=loop)
    ...
    clock.jump(5.0)  # five seconds pass, at once
    loop.run_until(lambda: done, timeout=60)  # 60 s of clock time at most

Time moves in three ways:

* ``jump(seconds)``, called by the test;
* at ``rate`` clock seconds per real second (default 0: not at all by itself);
* **autojump**: when the loop has found nothing to do for ``autojump_threshold``
  real seconds while a timer is pending, the clock jumps to that timer's deadline,
  so the loop never waits for time to pass. The default, infinity, never jumps.

The threshold is what real I/O needs: 0 is right when nothing is in flight outside
the loop (the loop's own timers, a socketpair written before the loop runs). Bytes
on a TCP loopback connection may still be in the kernel when the loop polls, if the
machine is busy; a threshold of some tens of milliseconds lets them land before the
clock jumps over the deadline they would have met, and costs that much real time per
jump, only when the loop is really idle. A loop that always has I/O ready is never
idle: its clock does not autojump.
"""

from __future__ import annotations

import math
import time

from hbloop.net.loop import MAX_POLL_TIMEOUT, NO_DEADLINE, Poll


class MockClock:
    """A ``VirtualClock`` for ``EventLoop(clock=...)``: see the module's docstring.

    ``rate`` and ``autojump_threshold`` may be changed at any time. The clock starts
    at 0.0.
    """

    def __init__(self, rate: float = 0.0, autojump_threshold: float = math.inf) -> None:
        # At real time _real_base the clock read _virtual_base, and it has moved at
        # _rate clock seconds per real second since, plus its jumps.
        self._real_base = time.monotonic()
        self._virtual_base = 0.0
        self._rate = 0.0
        self._autojump_threshold = math.inf
        self.rate = rate
        self.autojump_threshold = autojump_threshold

    def __repr__(self) -> str:
        return (
            f"<MockClock time={self():.6f} rate={self._rate:g} "
            f"autojump_threshold={self._autojump_threshold:g}>"
        )

    @property
    def rate(self) -> float:
        """Clock seconds per real second; 0 (the default) for a clock that moves only
        by jumps."""
        return self._rate

    @rate.setter
    def rate(self, rate: float) -> None:
        if rate < 0:
            raise ValueError("the rate cannot be negative")
        now = time.monotonic()
        self._virtual_base = self._at(now)
        self._real_base = now
        self._rate = float(rate)

    @property
    def autojump_threshold(self) -> float:
        """Real seconds the loop may be idle before the clock jumps to its next
        deadline (infinity: never; 0: at once)."""
        return self._autojump_threshold

    @autojump_threshold.setter
    def autojump_threshold(self, threshold: float) -> None:
        if threshold < 0:
            raise ValueError("the autojump threshold cannot be negative")
        self._autojump_threshold = float(threshold)

    def _at(self, real: float) -> float:
        return self._virtual_base + self._rate * (real - self._real_base)

    def __call__(self) -> float:
        """The time now, s."""
        return self._at(time.monotonic())

    def jump(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward; the loop's timers due by then run in
        its next iteration."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        self._virtual_base += seconds

    # --- what the loop asks of it (hbloop.net.loop.VirtualClock) ----------------------

    def wait(self, poll: Poll, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        """The loop's poll. It lasts ``timeout / rate`` real seconds (until I/O comes
        at rate 0), or ``autojump_threshold`` if that is shorter, in which case, if no
        event came, the clock then jumps to the deadline."""
        if timeout == NO_DEADLINE:
            return poll(NO_DEADLINE, maxevents)  # no deadline to jump to
        deadline = self() + timeout
        if timeout == 0.0:
            real = 0.0
        elif self._rate:
            real = min(timeout / self._rate, MAX_POLL_TIMEOUT)
        else:
            real = math.inf
        autojump = real > self._autojump_threshold
        if autojump:
            real = self._autojump_threshold
        events = poll(NO_DEADLINE if real == math.inf else real, maxevents)
        if autojump and not events:
            self.jump(max(0.0, deadline - self()))
        return events

    def sleep(self, seconds: float) -> None:
        """A pause nothing interrupts (the loop's coalescing linger): the clock moves
        by ``seconds``, in ``seconds / rate`` real seconds, or at once at rate 0."""
        end = self() + seconds
        if self._rate:
            time.sleep(seconds / self._rate)
        self.jump(max(0.0, end - self()))
