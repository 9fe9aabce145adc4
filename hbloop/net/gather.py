"""The loop's gather policy (``EventLoop(coalesce=...)``, ``--coalesce MS``), as pure
functions of what the loop measured: after a quiet wake-up, how long to let events
gather before polling again, so that one ``epoll_wait`` and one loop iteration serve
several heartbeats instead of one.

A gather adds its length to the latency of the events it waits for, so it is bounded
(``limit``, the caller's ``coalesce``), never passes the next deadline, and is adaptive:
none after a busy wake-up, none for a trickle that a whole ``limit`` would not add to,
and no longer than the measured arrival rate takes to bring a full batch.

A server not told its bound takes ``default_limit`` of its heartbeat interval, and
gathers only below ``NATURAL_BATCH_RATE``: the latency a heartbeat can spare grows with
its interval, and so does the gather that slow heartbeats need (see
``INTERVAL_SHARE``), while fast ones are batched by their own rate.
"""

from __future__ import annotations

import math

# The batch a gather waits for: it lasts as long as the measured arrival rate takes to
# bring this many events (within its bound), which the poll after it then serves in
# one wake-up. A wake-up after a sleep finds the caches cold, and costs tens of
# microseconds more than a warm one (docs/explanation/figures.md, "Slow heartbeats"):
# 32 spreads that to about a microsecond per event. 200,000 peers at 30 s on 13
# workers cost 32.3 us per heartbeat at 7.2 events a wake-up, 25.0 at 15.6 and 19.6 at
# 30.9.
GATHER_BATCH = 32

# A wake-up that found at least this many ready descriptors is busy enough to poll
# again at once: waiting would add latency and save little. Twice the batch, so that
# the wake-up a gather ends in, which finds about GATHER_BATCH events (more or fewer by
# chance), gathers again rather than taking its batch for a sign of a busy loop.
COALESCE_BELOW = 2 * GATHER_BATCH

# The loop gathers only while the arrival rate says a gather of the whole limit brings
# at least this many events, a quarter of a batch. A gather ends in a wake-up of its
# own (the poll after the sleep), so one that brings a single event saves no wake-up
# at all and one that brings a few saves little, while adding up to the whole limit
# to their RTT. With the default bound (INTERVAL_SHARE) it takes 4,000 peers' worth
# of heartbeats at any interval to gather, so at 1 s it takes 4,000 a second, where
# NATURAL_BATCH_RATE stops it: heartbeats a second apart never wait.
COALESCE_MIN_GATHER = GATHER_BATCH / 4

# Weight of the newest wake-up in the arrival rate's moving average: about the last ten
# wake-ups count, so that the loop follows a change of load within a few milliseconds
# at the rates where gathering pays.
RATE_WEIGHT = 0.1

# The bound of a server left to choose it (``hbloop serve`` without ``--coalesce``):
# this share of its heartbeat interval, so a gather adds at most 1/500 of an interval
# to a heartbeat's round trip (60 ms at 30 s, far inside any timeout). N peers arrive
# at N / interval a second, so such a bound lets a gather bring up to N / 500 events
# at any interval: a whole GATHER_BATCH from 16,000 peers on (200,000 at 30 s on 13
# workers, about 15,400 each, fill one in 62 ms), where a fixed bound gathers the
# less the longer the interval. At 1/2000 (15 ms at 30 s) the same workers woke for
# 7.2 events each time and paid 32.3 us per heartbeat, against 19.6 at 1/500.
INTERVAL_SHARE = 1 / 500

# The default bound gathers only below this many events a second. Above it wake-ups
# bring a batch without gathering (5,000 heartbeats a second: 0.31 to 0.44 wake-ups
# per heartbeat measured, against 1.0 at 167 a second), so a gather would add its
# length to the round trip and save next to nothing: heartbeats a second apart keep
# their sub-millisecond round trip.
NATURAL_BATCH_RATE = 4000.0

# While the arrival rate is not worth gathering (``rate_gathers``: a trickle, or above
# the loop's ``max_rate``), a loop measures it once per this period rather than at
# each wake-up, whose three calls cost a sixth of a heartbeat's instructions (``python
# -m bench.cost``). A tenth of a second follows a change of load within about a second
# (RATE_WEIGHT), and adds at most that to when a rising trickle starts gathering.
RATE_REVIEW_PERIOD = 0.1


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


def gather_delay(
    ready: int, rate: float, limit: float, until_due: float, max_rate: float = math.inf
) -> float:
    """How long to let events gather, s, after a wake-up that found ``ready`` events,
    at an arrival ``rate`` per second (infinity: unknown, so the whole ``limit``), at
    most ``limit`` and never past a deadline ``until_due`` seconds away: 0 after a busy
    wake-up, for a trickle or above ``max_rate`` events a second, else the time the
    rate takes to bring a batch of ``GATHER_BATCH``: the ``ready`` events are served
    already, so the next poll finds only those that come meanwhile."""
    if ready >= COALESCE_BELOW or not rate_gathers(rate, limit, max_rate):
        return 0.0
    fill = limit if rate == math.inf else GATHER_BATCH / rate
    delay = min(limit, fill, until_due)
    return delay if delay > 0.0 else 0.0


def rate_gathers(rate: float, limit: float, max_rate: float = math.inf) -> bool:
    """Whether events arriving at ``rate`` a second are worth gathering for up to
    ``limit`` seconds: not a trickle that a whole ``limit`` would bring fewer than
    ``COALESCE_MIN_GATHER`` of, and not above ``max_rate``. While it says no, a loop
    need not measure the rate at each wake-up (``RATE_REVIEW_PERIOD``)."""
    return rate * limit >= COALESCE_MIN_GATHER and rate <= max_rate


def default_limit(interval: float) -> float:
    """The gather bound, s, of a server whose peers heartbeat every ``interval``
    seconds and that was given none (``INTERVAL_SHARE`` of it)."""
    return interval * INTERVAL_SHARE
