"""When a credential ends, as the JWT says it, and when a client renews it (A5, A6).

The claims are read without verifying the signature: a client holds no key, and a
server reads them only from a token its verifier has just accepted.
"""

from __future__ import annotations

import base64
import binascii
import json

# A6: a client re-authenticates once this fraction of its token's remaining lifetime
# has passed. The last fifth leaves room for a slow provider, a retry and a slow
# network before the server's A5 close, and a token refreshed at half its life is
# still picked up long before exp (Kafka's client uses the same 0.8,
# sasl.login.refresh.window.factor).
REAUTH_FRACTION = 0.8

# A6: how often a client asks its provider again while it has nothing newer: often
# enough to catch a refreshed file well before exp, rarely enough to cost nothing.
REAUTH_RETRY = 5.0


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (Unix time) of ``token`` if it is a JWT that states one as a
    number, else None (an opaque API key has no lifetime the protocol can know)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    body = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def reauth_delay(token: str | None, now: float) -> float | None:
    """Seconds from ``now`` (Unix time) until a client should offer a fresh token in
    place of ``token``, or None if ``token`` states no expiry."""
    exp = None if token is None else jwt_expiry(token)
    if exp is None:
        return None
    return max(exp - now, 0.0) * REAUTH_FRACTION
