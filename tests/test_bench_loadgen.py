"""bench.loadgen's schedule: the clients connected so far in a ramp heartbeat evenly
over the interval, not bunched in the part of it their indices would give them."""

from __future__ import annotations

import itertools

import pytest

from bench.loadgen import phase

# The three-distance theorem bounds the largest gap between n golden-ratio phases by
# about 2.6 / n (1 + golden ratio, over n); an even spread would be 1 / n.
GAP_BOUND = 3.0


@pytest.mark.parametrize("connected", [10, 100, 1_000, 20_000])
def test_any_ramps_worth_of_clients_spreads_over_the_whole_interval(connected):
    phases = sorted(phase(index) for index in range(connected))
    gaps = [b - a for a, b in itertools.pairwise(phases)]
    gaps.append(1.0 + phases[0] - phases[-1])  # around the end of the interval
    assert all(0.0 <= p < 1.0 for p in phases)
    assert max(gaps) < GAP_BOUND / connected
