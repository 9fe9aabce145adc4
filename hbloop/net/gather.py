"""The loop's gather policy (``EventLoop(coalesce=...)``, ``--coalesce MS``), as pure
functions of what the loop measured: after a quiet wake-up, how long to let events
gather before polling again, so that one ``epoll_wait`` and one loop iteration serve
several heartbeats instead of one.

A gather adds its length to the latency of the events it waits for, so it is bounded
(``limit``, the caller's ``coalesce``), never passes the next deadline, and is adaptive:
none after a busy wake-up, none for a trickle that a whole ``limit`` would not add to,
and no longer than the measured arrival rate takes to bring a full batch.
"""

from __future__ import annotations

import math

# A wake-up that found at least this many ready descriptors is busy enough to poll
# again at once: waiting would add latency and save little. It is also the batch a
# gather aims at: past it, the iteration's fixed cost is spread thin already.
COALESCE_BELOW = 16

# The loop gathers only while the arrival rate says a gather of the whole limit brings
# at least this many events: below it (a trickle of heartbeats), a gather adds its
# whole length to their RTT and saves next to nothing.
COALESCE_MIN_GATHER = 1.0

# Weight of the newest wake-up in the arrival rate's moving average: about the last ten
# wake-ups count, so that the loop follows a change of load within a few milliseconds
# at the rates where gathering pays.
RATE_WEIGHT = 0.1


def arrival_rate(rate: float, count: int, elapsed: float) -> float:
    """Events per second after a wake-up that found ``count`` events ``elapsed``
    seconds after the previous one, from the previous average ``rate`` (infinity:
    nothing measured yet). A wake-up that took no time tells nothing."""
    if elapsed <= 0.0:
        return rate
    newest = count / elapsed
    if rate == math.inf:
        return newest
    return rate + RATE_WEIGHT * (newest - rate)


def gather_delay(ready: int, rate: float, limit: float, until_due: float) -> float:
    """How long to let events gather, s, after a wake-up that found ``ready`` events,
    at an arrival ``rate`` per second (infinity: unknown, so the whole ``limit``), at
    most ``limit`` and never past a deadline ``until_due`` seconds away: 0 after a busy
    wake-up or for a trickle, else the time the rate takes to fill a batch of
    ``COALESCE_BELOW``."""
    if ready >= COALESCE_BELOW or rate * limit < COALESCE_MIN_GATHER:
        return 0.0
    fill = limit if rate == math.inf else (COALESCE_BELOW - ready) / rate
    delay = min(limit, fill, until_due)
    return delay if delay > 0.0 else 0.0
