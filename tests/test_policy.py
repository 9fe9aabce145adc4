"""Server policy: grants, ping spacing and configuration checks."""

from __future__ import annotations

import pytest

from hbloop.policy import ServerPolicy, next_ping_at


def test_default_request_gets_the_configured_interval_and_timeout() -> None:
    assert ServerPolicy(interval=10, timeout=30).grant(0) == (10_000, 30_000)


def test_requests_are_clamped_and_keep_the_timeout_ratio() -> None:
    policy = ServerPolicy(interval=2, timeout=6, min_interval=0.5, max_interval=60)
    assert policy.grant(1000) == (1000, 3000)
    assert policy.grant(10) == (500, 1500)  # below the minimum
    assert policy.grant(3_600_000) == (60_000, 180_000)  # above the maximum


def test_fractional_ratio_rounds_the_timeout_up() -> None:
    assert ServerPolicy(interval=3, timeout=7).grant(1000) == (1000, 2334)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 10, "timeout": 15}, "at least 2x"),
        ({"interval": 0.05}, "must lie within"),
        ({"interval": 500}, "must lie within"),
        ({"max_connections": 0}, "max connections"),
        ({"max_payload": 10}, "max frame payload"),
        ({"max_pending": 1024, "max_payload": 4096}, "pending output"),
        ({"handshake_timeout": 0}, "handshake"),
        ({"ping_strikes": 0}, "strikes"),
    ],
)
def test_bad_configurations_are_refused_with_a_reason(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerPolicy(**kwargs)


def test_ping_strike_threshold_is_half_the_interval() -> None:
    assert ServerPolicy().ping_floor(1.0) == 0.5


def test_next_ping_waits_for_either_direction_to_go_quiet() -> None:
    # Both directions busy until t=10: the PING waits an interval after that.
    assert next_ping_at(last_sent=10, last_recv=10, last_ping=0, interval=2) == 12
    # Only receiving: the sending side went quiet at t=3, so PING at t=5.
    assert next_ping_at(last_sent=3, last_recv=10, last_ping=0, interval=2) == 5
    # Never sooner than an interval after the previous PING.
    assert next_ping_at(last_sent=3, last_recv=3, last_ping=4, interval=2) == 6
