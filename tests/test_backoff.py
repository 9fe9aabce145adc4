"""Reconnect back-off with full jitter (protocol.md, rule R1 and section 9): after a
server restart, clients come back spread out, not in lockstep."""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest

from hbloop.client import Client
from hbloop.core.backoff import Backoff
from hbloop.core.session import Disconnect, Reason
from hbloop.core.wire import Code, Welcome
from hbloop.net.loop import EventLoop

from conftest import WAIT_TIMEOUT

# --- Backoff's bounds and growth ------------------------------------------------------

DRAWS = 2000  # per window: enough for the uniformity checks below to be stable


def test_full_jitter_draws_cover_each_window_uniformly():
    rng = random.Random(7).random  # seeded: the test is reproducible
    fleets = [Backoff(base=0.5, cap=4.0, rng=rng) for _ in range(DRAWS)]
    for ceiling in (0.5, 1.0, 2.0, 4.0, 4.0):  # the windows of retries 0 to 4
        draws = [backoff.next_delay() for backoff in fleets]
        assert all(0 <= d <= ceiling for d in draws)
        # Full jitter from the first retry: the whole window is used, evenly.
        assert min(draws) < 0.02 * ceiling and max(draws) > 0.98 * ceiling
        assert sum(draws) / DRAWS == pytest.approx(ceiling / 2, rel=0.05)
        quarters = [0] * 4
        for d in draws:
            quarters[min(3, int(4 * d / ceiling))] += 1
        assert all(abs(n - DRAWS / 4) < DRAWS / 10 for n in quarters), quarters


def test_the_window_doubles_up_to_the_cap_and_never_overflows():
    backoff = Backoff(base=0.5, cap=30.0, rng=lambda: 1.0)
    windows = [backoff.next_delay() for _ in range(1000)]
    assert windows[:8] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert set(windows[6:]) == {30.0}


def test_r7_a_reconnect_window_only_lengthens_the_wait():
    """R7: after GOING_AWAY with a RECONNECT_WINDOW, the longer of the back-off's draw
    and a uniform draw within the window."""
    draws = iter([0.5, 0.1, 0.9, 0.9])
    backoff = Backoff(base=1.0, cap=8.0, rng=lambda: next(draws))
    assert backoff.next_delay(window=2.0) == pytest.approx(0.5)  # max(0.5 x 1, 0.1 x 2)
    assert backoff.next_delay(window=2.0) == pytest.approx(1.8)  # max(0.9 x 2, 0.9 x 2)
    rng = random.Random(11).random
    spread = [Backoff(base=0.5, cap=30.0, rng=rng).next_delay(window=10.0) for _ in range(DRAWS)]
    assert all(0 <= d <= 10.0 for d in spread)
    # A fleet spreads over the whole window, not the first retry's 0.5 s.
    assert max(spread) > 9.8 and sum(d > 5.0 for d in spread) > DRAWS / 3


@pytest.mark.parametrize(("base", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_nonsensical_backoff_is_refused(base: float, cap: float):
    with pytest.raises(ValueError):
        Backoff(base=base, cap=cap)


# --- a restart with hundreds of clients ------------------------------------------------

CLIENTS = 200
BASE = 1.0  # seconds: the first retry is drawn from [0, 1 s]
CAP = 8.0
WINDOW = 0.1  # no 100 ms window may hold...
MAX_SHARE = 1 / 3  # ...more than a third of the clients
MIN_SPAN = 0.8  # first retries must spread over at least 80% of the first window
RECONNECT_BUDGET = 30.0  # seconds for every client to be back


class Fleet:
    """CLIENTS reconnecting clients on one loop, recording when things happened."""

    def __init__(self, port: int) -> None:
        self.loop = EventLoop()
        self.first_retry: dict[int, tuple[float, float]] = {}  # i -> (when, delay)
        self.welcomes: dict[int, list[float]] = {i: [] for i in range(CLIENTS)}
        self.clients = [
            Client(
                "127.0.0.1",
                port,
                f"fleet-{i}",
                loop=self.loop,
                backoff=Backoff(BASE, CAP),
                on_welcome=self._welcomed(i),
                on_disconnect=self._dropped(i),
            )
            for i in range(CLIENTS)
        ]

    def _welcomed(self, i: int):  # type: ignore[no-untyped-def]
        def record(welcome: Welcome) -> None:
            self.welcomes[i].append(time.monotonic())

        return record

    def _dropped(self, i: int):  # type: ignore[no-untyped-def]
        def record(disconnect: Disconnect, retry_in: float | None) -> None:
            if i not in self.first_retry and retry_in is not None:
                assert (disconnect.reason, disconnect.code) == (Reason.PEER_CLOSED, Code.GOING_AWAY)
                self.first_retry[i] = (time.monotonic(), retry_in)

        return record

    def connected(self, times: int) -> bool:
        return all(len(w) >= times for w in self.welcomes.values())

    def close(self) -> None:
        for client in self.clients:
            client.close(linger=0)
        self.loop.run_until(lambda: all(c.done for c in self.clients), WAIT_TIMEOUT)
        self.loop.close()


def busiest_window(times: list[float], width: float) -> int:
    times = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(times):
        while t - times[start] > width:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_clients_reconnect_spread_out_after_a_restart(serve):
    # Every peer closed at once, with no reconnect window (R7): R1's jitter alone.
    first = serve(
        "--interval", "2", "--timeout", "6", "--shutdown-grace", "2", "--drain-period", "0"
    )
    fleet = Fleet(first.port)
    try:
        for client in fleet.clients:
            client.start()
        assert fleet.loop.run_until(lambda: fleet.connected(1), WAIT_TIMEOUT)

        # The clients' loop runs on while the server restarts, as it would in real life.
        back = threading.Event()
        runner = threading.Thread(
            target=lambda: (
                back.set()
                if fleet.loop.run_until(lambda: fleet.connected(2), RECONNECT_BUDGET)
                else None
            )
        )
        runner.start()
        first.signal(signal.SIGTERM)
        assert first.wait() == 0
        serve("--port", str(first.port), "--interval", "2", "--timeout", "6")
        runner.join(RECONNECT_BUDGET + WAIT_TIMEOUT)
        assert back.is_set(), "not every client came back"
    finally:
        fleet.close()

    # The first retries, as drawn: spread over the whole first window.
    delays = [delay for _, delay in fleet.first_retry.values()]
    assert len(delays) == CLIENTS
    assert all(0 <= d <= BASE for d in delays)
    assert max(delays) - min(delays) >= MIN_SPAN * BASE
    # The reconnects, as they happened: no rush at any moment.
    dropped_at = min(when for when, _ in fleet.first_retry.values())
    reconnects = [w[1] - dropped_at for w in fleet.welcomes.values()]
    crowd = busiest_window(reconnects, WINDOW)
    assert crowd <= MAX_SHARE * CLIENTS, f"{crowd} clients reconnected within {WINDOW}s"
    assert max(reconnects) - min(reconnects) >= MIN_SPAN * BASE / 2
