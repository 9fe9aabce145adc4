"""bench.loadgen's schedule: the clients connected so far in a ramp heartbeat evenly
over the interval, not bunched in the part of it their indices would give them; a storm's
reconnects do not pile up."""

from __future__ import annotations

import itertools
import multiprocessing
import socket
import time

import pytest

from bench.loadgen import Worker, phase
from bench.messages import WorkerPlan

from conftest import WAIT_TIMEOUT

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


def _reconnecting(target: tuple[str, int], clients: int, slots: int) -> WorkerPlan:
    """A storm's plan (clients reconnect) of ``clients`` clients, ``slots`` of them
    connecting at once."""
    return WorkerPlan(
        worker=0,
        target=target,
        indices=range(clients),
        interval=1.0,
        connect_rate=1.0,
        max_in_flight=slots,
        sources=[],
        epoch=time.monotonic(),
        zombies=0,
        reconnect=True,
    )


# Refused reconnects a storm's client makes before the test is satisfied: with the
# generator's back-off (0.2 s doubling, full jitter) three take at most 1.4 s.
REFUSED_ATTEMPTS = 3


def test_a_storms_refused_reconnects_keep_one_client_per_index():
    # A port bound but not listening refuses every connect at once (loopback only).
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        plan = _reconnecting(closed_port.getsockname(), clients=2, slots=2)
        ours, theirs = multiprocessing.Pipe()
        worker = Worker(plan, ours)
        try:
            for index in plan.indices:
                worker.lost[index] = time.monotonic()  # dropped: each retries its refusals
                worker.connect(index)
            refused = REFUSED_ATTEMPTS * len(plan.indices)
            assert worker.loop.run_until(
                lambda: worker.counts.connect_failures >= refused, WAIT_TIMEOUT
            )
            # Every attempt was a client object; only each index's latest is kept.
            assert sorted(worker.clients) == list(plan.indices)
        finally:
            worker.stop()
            worker.loop.close()
            theirs.close()


def test_a_storms_reconnects_wait_for_the_generators_connect_slots():
    """Five clients dropped at once with two connect slots: two connect, three wait,
    and each connect answered (here refused) lets the next one go."""
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        plan = _reconnecting(closed_port.getsockname(), clients=5, slots=2)
        ours, theirs = multiprocessing.Pipe()
        worker = Worker(plan, ours)
        most: list[int] = []

        def every_one_tried() -> bool:
            most.append(worker.in_flight)
            return worker.counts.connect_failures >= len(plan.indices)

        try:
            for index in plan.indices:
                worker.reconnect(index)
            assert (worker.in_flight, list(worker.queued)) == (2, [2, 3, 4])
            assert worker.loop.run_until(every_one_tried, WAIT_TIMEOUT)
            assert max(most) == plan.max_in_flight
            assert sorted(worker.clients) == list(plan.indices)
        finally:
            worker.stop()
            worker.loop.close()
            theirs.close()
