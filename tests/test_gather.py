"""hbloop.net.gather: the loop's gather policy, as pure functions."""

from __future__ import annotations

import math

import pytest

from hbloop.net.gather import (
    COALESCE_BELOW,
    COALESCE_MIN_GATHER,
    GATHER_BATCH,
    INTERVAL_SHARE,
    NATURAL_BATCH_RATE,
    RATE_WEIGHT,
    arrival_rate,
    default_limit,
    gather_delay,
    rate_gathers,
)

LIMIT = 0.001  # --coalesce 1
FAR = math.inf  # no deadline


def test_a_quiet_wake_up_at_a_rate_that_fills_no_batch_within_the_limit_waits_it_all() -> None:
    # 10,000 heartbeats a second: 1 ms brings 10, short of a batch of 32.
    assert 10_000.0 * LIMIT < GATHER_BATCH
    assert gather_delay(1, 10_000.0, LIMIT, FAR) == LIMIT


def test_the_wait_is_no_longer_than_a_batch_takes_to_come() -> None:
    # 100,000 a second: a batch takes 0.32 ms, whatever the wake-up found (its events
    # are served already; the next poll finds those that come during the wait).
    rate = 100_000.0
    for ready in (1, GATHER_BATCH - 1, GATHER_BATCH, COALESCE_BELOW - 1):
        assert gather_delay(ready, rate, LIMIT, FAR) == pytest.approx(GATHER_BATCH / rate)
    assert gather_delay(1, rate, LIMIT, FAR) < LIMIT


def test_a_busy_wake_up_polls_again_at_once() -> None:
    assert gather_delay(COALESCE_BELOW, 10_000.0, LIMIT, FAR) == 0.0
    assert gather_delay(COALESCE_BELOW + 100, math.inf, LIMIT, FAR) == 0.0


def test_a_trickle_waits_for_nothing() -> None:
    # 333 heartbeats a second (10,000 peers at 30 s): 1 ms would gather a third of one.
    assert 333.0 * LIMIT < COALESCE_MIN_GATHER
    assert gather_delay(1, 333.0, LIMIT, FAR) == 0.0
    # The same rate with a limit that brings a quarter of a batch does gather.
    assert COALESCE_MIN_GATHER <= 333.0 * 0.03
    assert gather_delay(1, 333.0, 0.03, FAR) == 0.03


def test_never_past_the_next_deadline() -> None:
    assert gather_delay(1, 10_000.0, LIMIT, 0.0002) == 0.0002
    assert gather_delay(1, 10_000.0, LIMIT, 0.0) == 0.0
    assert gather_delay(1, 10_000.0, LIMIT, -0.5) == 0.0  # a deadline already overdue


def test_off_waits_for_nothing() -> None:
    assert gather_delay(0, math.inf, 0.0, FAR) == 0.0
    assert gather_delay(1, 50_000.0, 0.0, FAR) == 0.0


def test_an_unmeasured_rate_waits_the_whole_limit() -> None:
    assert gather_delay(1, math.inf, LIMIT, FAR) == LIMIT


def test_the_rate_starts_at_the_first_measure_then_moves_by_its_weight() -> None:
    rate = arrival_rate(math.inf, 10, 0.01)
    assert rate == pytest.approx(1000.0)
    moved = arrival_rate(rate, 30, 0.01)  # 3,000 a second at the newest wake-up
    assert moved == pytest.approx(1000.0 + RATE_WEIGHT * 2000.0)


def test_a_wake_up_that_took_no_time_leaves_the_rate() -> None:
    assert arrival_rate(math.inf, 5, 0.0) == math.inf
    assert arrival_rate(250.0, 5, 0.0) == 250.0


def test_a_trickle_brings_the_rate_down_until_gathering_stops() -> None:
    rate = arrival_rate(math.inf, 1, 0.0001)  # a burst first: 10,000 a second
    assert gather_delay(1, rate, LIMIT, FAR) > 0.0
    for _ in range(60):  # then one event every 10 ms
        rate = arrival_rate(rate, 1, 0.01)
    assert gather_delay(1, rate, LIMIT, FAR) == 0.0


def events_per_wake_up(
    peers: int, interval: float, limit: float, heartbeats: int, max_rate: float = math.inf
) -> float:
    """A loop following the policy over ``peers`` heartbeating every ``interval``, one
    every ``interval / peers`` s: at each wake-up it serves every event that has come
    and asks ``gather_delay`` how long to gather; the end of a gather is a wake-up of
    its own, after which the loop serves what came meanwhile or, if nothing did,
    sleeps in epoll_wait until the next event, as it does without a gather. The mean
    batch a wake-up serves, over ``heartbeats`` events."""
    gap = interval / peers
    now = woke = 0.0
    rate = math.inf
    served = wake_ups = 0
    ready = 1  # the first event wakes the loop
    while served < heartbeats:
        served += ready
        wake_ups += 1
        rate = arrival_rate(rate, ready, now - woke)
        woke = now
        delay = gather_delay(ready, rate, limit, FAR, max_rate)
        if delay:
            now += delay
            # events come at 0, gap, 2 gap, ...: those up to now that are not served
            ready = max(0, math.floor(now / gap) + 1 - served)
            if not ready:  # the sleep woke it for nothing; epoll_wait then waits
                wake_ups += 1
                now = served * gap
                ready = 1
        else:
            now = max(now, served * gap)
            ready = 1
    return served / wake_ups


def test_the_default_bound_is_a_share_of_the_interval() -> None:
    assert default_limit(1.0) == pytest.approx(0.002)
    assert default_limit(30.0) == pytest.approx(0.06)


def test_without_gathering_each_slow_heartbeat_is_a_wake_up_of_its_own() -> None:
    assert events_per_wake_up(5000, 30.0, 0.0, 2000) == 1.0
    # A fixed bound of 1 ms stays off at 167 heartbeats a second (a trickle), after
    # the one gather of the unmeasured rate at the start.
    assert events_per_wake_up(5000, 30.0, LIMIT, 2000) == pytest.approx(1.0, abs=0.001)


@pytest.mark.parametrize("interval", [5.0, 30.0, 120.0])
def test_the_default_bound_gathers_as_much_at_any_slow_interval(interval: float) -> None:
    """N peers at N / interval a second and a bound of interval / 500: a gather takes
    N / 500 events, 10 at 5,000 peers, whatever the interval."""
    limit = default_limit(interval)
    batch = events_per_wake_up(5000, interval, limit, 4000, NATURAL_BATCH_RATE)
    assert batch == pytest.approx(5000 * INTERVAL_SHARE, rel=0.1)


def test_a_worker_busy_enough_for_a_batch_within_the_bound_gets_a_whole_one() -> None:
    """20,000 peers at 30 s (667 a second) fill a batch in 48 ms, inside the 60 ms
    bound: every wake-up after a gather serves about GATHER_BATCH, not the half that a
    gather sized by what the wake-up before it lacked would settle at."""
    assert default_limit(30.0) > GATHER_BATCH / (20_000 / 30.0)
    batch = events_per_wake_up(20_000, 30.0, default_limit(30.0), 20_000, NATURAL_BATCH_RATE)
    assert batch == pytest.approx(GATHER_BATCH, rel=0.1)


def test_the_default_bound_leaves_heartbeats_a_second_apart_alone() -> None:
    # 5,000 a second: past NATURAL_BATCH_RATE, where wake-ups batch by themselves.
    assert NATURAL_BATCH_RATE < 5000
    batch = events_per_wake_up(5000, 1.0, default_limit(1.0), 4000, NATURAL_BATCH_RATE)
    assert batch == pytest.approx(1.0, abs=0.001)
    assert gather_delay(1, 5000.0, default_limit(1.0), FAR, NATURAL_BATCH_RATE) == 0.0
    # At 1 s a gather of the whole 2 ms bound would need 4,000 events a second to bring
    # a quarter of a batch, and the cap stops it there: at intervals of 1 s and less
    # the default never gathers.
    for rate in (100.0, 1000.0, 3999.0, 4001.0, 10_000.0, 100_000.0, math.inf):
        for interval in (0.1, 0.5, 1.0):
            limit = default_limit(interval)
            assert gather_delay(1, rate, limit, FAR, NATURAL_BATCH_RATE) == 0.0
    # Without the cap (an explicit --coalesce) the same bound gathers.
    assert gather_delay(1, 5000.0, default_limit(1.0), FAR) == default_limit(1.0)


def test_a_gather_that_would_bring_a_few_events_is_not_made() -> None:
    # 2,000 peers at 30 s and a 60 ms bound: four events a gather, short of a quarter
    # of a batch, so a wake-up each.
    assert 2000 / 30.0 * default_limit(30.0) < COALESCE_MIN_GATHER
    batch = events_per_wake_up(2000, 30.0, default_limit(30.0), 1000)
    # (after the one gather of the unmeasured rate at the start, which brings four)
    assert batch == pytest.approx(1.0, abs=0.005)
    assert gather_delay(1, 2000 / 30.0, default_limit(30.0), FAR) == 0.0


def test_a_rate_gathers_unless_a_trickle_or_above_the_max_rate() -> None:
    assert rate_gathers(COALESCE_MIN_GATHER / LIMIT, LIMIT)
    assert not rate_gathers(COALESCE_MIN_GATHER / LIMIT / 2, LIMIT)  # a trickle
    assert not rate_gathers(5000.0, LIMIT, max_rate=NATURAL_BATCH_RATE)
    assert rate_gathers(math.inf, LIMIT)  # nothing measured yet: the whole limit
