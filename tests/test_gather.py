"""hbloop.net.gather: the loop's gather policy, as pure functions."""

from __future__ import annotations

import math

import pytest

from hbloop.net.gather import (
    COALESCE_BELOW,
    COALESCE_MIN_GATHER,
    RATE_WEIGHT,
    arrival_rate,
    gather_delay,
)

LIMIT = 0.001  # --coalesce 1
FAR = math.inf  # no deadline


def test_a_quiet_wake_up_at_a_rate_that_fills_no_batch_within_the_limit_waits_it_all() -> None:
    # 10,000 heartbeats a second: 1 ms brings 10, short of a batch of 16.
    assert gather_delay(1, 10_000.0, LIMIT, FAR) == LIMIT


def test_the_wait_is_no_longer_than_a_batch_takes_to_come() -> None:
    # 100,000 a second: the 15 events a wake-up of one lacks take 0.15 ms.
    rate = 100_000.0
    assert gather_delay(1, rate, LIMIT, FAR) == pytest.approx((COALESCE_BELOW - 1) / rate)
    assert gather_delay(1, rate, LIMIT, FAR) < LIMIT


def test_a_busy_wake_up_polls_again_at_once() -> None:
    assert gather_delay(COALESCE_BELOW, 10_000.0, LIMIT, FAR) == 0.0
    assert gather_delay(COALESCE_BELOW + 100, math.inf, LIMIT, FAR) == 0.0


def test_a_trickle_waits_for_nothing() -> None:
    # 333 heartbeats a second (10,000 peers at 30 s): 1 ms would gather a third of one.
    assert 333.0 * LIMIT < COALESCE_MIN_GATHER
    assert gather_delay(1, 333.0, LIMIT, FAR) == 0.0
    # The same rate with a longer limit does gather.
    assert gather_delay(1, 333.0, 0.01, FAR) == 0.01


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
