"""Capped exponential back-off with full jitter, for every reconnecting client.

Full jitter (each delay drawn uniformly from zero to the capped exponential ceiling)
spreads a fleet's reconnects after a server restart instead of bringing them back in
waves: "Exponential Backoff And Jitter", Marc Brooker, AWS Architecture Blog, 2015.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# gRPC's reconnect parameters start at 1 s; half that keeps a restart short for
# interactive use, while the 30 s cap bounds how long a client sits out an outage.
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_CAP = 30.0


class Backoff:
    """Capped exponential back-off with full jitter."""

    def __init__(
        self,
        base: float = DEFAULT_BACKOFF_BASE,
        cap: float = DEFAULT_BACKOFF_CAP,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("back-off needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng

    def next_delay(self, window: float = 0.0) -> float:
        """The next retry's delay, s; with a server's reconnect ``window`` (s, after
        CLOSE GOING_AWAY: protocol.md R7), the longer of that delay and a uniformly
        random one within the window, so that a hint only ever lengthens a wait."""
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 62)  # keeps 2**attempt a sane float
        delay = float(self._rng() * ceiling)
        return max(delay, float(self._rng() * window)) if window > 0 else delay

    def reset(self) -> None:
        self.attempt = 0
