"""Server policy: grants, ping spacing and configuration checks."""

from __future__ import annotations

import pytest

from hbloop.core.policy import ServerPolicy, drain_due, grant


def test_default_request_gets_the_configured_interval_and_timeout() -> None:
    assert ServerPolicy(interval=10, timeout=30).grant(0) == (10_000, 30_000)


def test_requests_are_clamped_and_keep_the_timeout_ratio() -> None:
    policy = ServerPolicy(interval=2, timeout=6, min_interval=0.5, max_interval=60)
    assert policy.grant(1000) == (1000, 3000)
    assert policy.grant(10) == (500, 1500)  # below the minimum
    assert policy.grant(3_600_000) == (60_000, 180_000)  # above the maximum


def test_fractional_ratio_rounds_the_timeout_up() -> None:
    assert ServerPolicy(interval=3, timeout=7).grant(1000) == (1000, 2334)


def test_the_grant_is_exact_integer_arithmetic() -> None:
    # Floating point gave 1 ms too much here: 0.1 s x (0.3 / 0.1) = 30.000000000000004.
    assert ServerPolicy(interval=0.1, timeout=0.3).grant(10) == (100, 300)
    # ceil(I x T / D) for values whose float product is inexact.
    assert grant(
        interval_ms=3, timeout_ms=10, min_ms=1, max_ms=10**9, requested_ms=999_999_999
    ) == (
        999_999_999,
        3_333_333_330,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 10, "timeout": 15}, "at least 2x"),
        ({"interval": 0.05}, "must lie within"),
        ({"interval": 500}, "must lie within"),
        (
            {"min_interval": 5, "max_interval": 1, "interval": 3, "timeout": 9},
            "exceeds the maximum",
        ),
        ({"min_interval": 0.0001}, "at least 1 ms"),
        (
            {"interval": 1_500_000, "timeout": 4_500_000, "max_interval": 1_500_000},
            "exceeds the protocol",
        ),
        ({"max_connections": 0}, "max connections"),
        ({"max_payload": 10}, "max frame payload"),
        ({"max_pending": 1024, "max_payload": 4096}, "pending output"),
        ({"handshake_timeout": 0}, "handshake"),
        ({"ping_strikes": 0}, "strikes"),
        ({"drain_period": -1}, "drain period"),
        ({"drain_period": 4_294_968}, "drain period"),
    ],
)
def test_bad_configurations_are_refused_with_a_reason(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerPolicy(**kwargs)


# --- the drain schedule (C6) ------------------------------------------------------------


def close_times(count: int, period_ms: int) -> list[int]:
    """When each of ``count`` peers is closed, ms after the drain began, as a server
    that calls ``drain_due`` every millisecond would close them."""
    times: list[int] = []
    for elapsed in range(period_ms + 1):
        times += [elapsed] * (drain_due(count, period_ms, elapsed) - len(times))
    return times


@pytest.mark.parametrize(("count", "period_ms"), [(1, 1000), (3, 10_000), (10, 1000), (7, 3)])
def test_c6_a_drain_closes_peer_i_at_i_periods_over_n(count: int, period_ms: int) -> None:
    assert close_times(count, period_ms) == [i * period_ms // count for i in range(count)]


def test_c6_a_drain_starts_at_once_and_ends_within_its_period() -> None:
    times = close_times(100_000, 10_000)
    assert times[0] == 0 and times[-1] == 9_999  # the last a share of the period early
    # Evenly: every second of the period closes a tenth of the peers.
    per_second = [sum(1 for t in times if s * 1000 <= t < (s + 1) * 1000) for s in range(10)]
    assert per_second == [10_000] * 10


def test_c6_a_drain_is_monotonic_and_bounded() -> None:
    due = [drain_due(1000, 7_000, elapsed) for elapsed in range(-5, 7_100)]
    assert due == sorted(due)
    assert due[0] == 0 and due[-1] == 1000


def test_c6_a_drain_period_of_zero_closes_everyone_at_once() -> None:
    assert drain_due(5000, 0, 0) == 5000
    assert drain_due(0, 10_000, 0) == 0  # no peers: nothing to do


def test_c6_the_drain_period_is_the_reconnect_window() -> None:
    assert ServerPolicy(drain_period=2.5).drain_period_ms == 2500
    assert ServerPolicy().drain_period_ms == 10_000
