"""hbloop.core.credentials: a JWT's exp read without a key, and A6's renewal time."""

from __future__ import annotations

import jwt
import pytest

from hbloop.core.credentials import REAUTH_FRACTION, jwt_expiry, reauth_delay

NOW = 1_800_000_000.0


def test_A5_the_exp_of_a_jwt_is_read_without_its_key() -> None:
    token = jwt.encode({"sub": "alice", "exp": int(NOW) + 600}, b"k" * 32, algorithm="HS256")
    assert jwt_expiry(token) == NOW + 600


@pytest.mark.parametrize(
    "token",
    ["opaque-api-key", "a.b.c", "e30.e30.x", "e30.eyJleHAiOiJzb29uIn0.x", "e30.eyJleHAiOnRydWV9.x"],
    ids=["not a JWT", "bad base64", "no exp", "exp a string", "exp a boolean"],
)
def test_A5_a_token_without_a_numeric_exp_has_no_expiry(token: str) -> None:
    assert jwt_expiry(token) is None
    assert reauth_delay(token, NOW) is None


def test_A6_a_client_renews_at_its_fraction_of_the_remaining_lifetime() -> None:
    token = jwt.encode({"exp": int(NOW) + 100}, b"k" * 32, algorithm="HS256")
    assert reauth_delay(token, NOW) == pytest.approx(100 * REAUTH_FRACTION)
    assert reauth_delay(token, NOW + 200) == 0.0  # already past: at once
    assert reauth_delay(None, NOW) is None
