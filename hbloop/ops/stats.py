"""Server statistics: plain counters bumped on the hot path, and the reporter that
samples them once a second for the log line, the supervisor and /metrics.

A *snapshot* is a plain dict (it crosses a pipe as JSON): the ServerStats counters,
``iterations`` of the event loop, ``lag_max``, the worst lateness of a due timer over
the last stats interval, in seconds, and two histograms (``Buckets.to_json()``):
``lag``, of the worst lateness in each sample period, and ``heartbeat_interval``, of
the silence each heartbeat received ended (the sessions observe it); with presence on,
``presence`` holds its figures (``hbloop.presence.node.node.PRESENCE_FIGURES``), which add up
across workers.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from hbloop.core.histogram import Buckets
from hbloop.core.session import HEARTBEAT_BUCKETS
from hbloop.net.counters import ServerStats
from hbloop.net.loop import EventLoop
from hbloop.presence.node import PRESENCE_FIGURES

log = logging.getLogger("hbloop.stats")

Snapshot = dict[str, Any]

# Figures that add up across workers, and across the lives of a restarted worker.
SUMMED = (
    "connections",
    "accepted",
    "shed",
    "frames_in",
    "frames_out",
    "bytes_in",
    "bytes_out",
    "heartbeats",
    "iterations",
    "tls_handshakes",
    "tls_handshakes_refused",
    "tls_handshakes_failed",
)
# Figures whose total is the worst (largest) of the workers'.
WORST = ("peak", "lag_max")

# Counters by label (a dict each), which add up label by label: disconnects by reason,
# HELLOs refused by the check that refused them.
LABELLED = ("closed", "auth_refused")

# The reporter samples the loop's lag (and publishes to the supervisor) this often:
# fine enough for the lag window and for metrics scraped every few seconds, and a
# negligible cost (one timer and one small JSON line a second).
SAMPLE_PERIOD = 1.0

# Upper bounds of the loop-lag histogram's buckets, s. epoll sleeps in whole
# milliseconds, so a healthy loop's worst lag in a sample period is about 1 ms; the
# buckets above separate a busy loop (tens of ms) from a stalled one (seconds).
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

# Histograms (Buckets.to_json()) by snapshot key, with their bounds; they add up
# bucket by bucket.
HISTOGRAMS = {"lag": LAG_BUCKETS, "heartbeat_interval": HEARTBEAT_BUCKETS}

# The lag window when no stats line is logged (--stats-interval 0): a minute, as
# Prometheus scrapes typically every 15 to 60 s.
DEFAULT_LAG_WINDOW = 60.0


def add_histograms(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The sum of two ``Buckets.to_json()`` with the same bounds."""
    counts = [x + y for x, y in zip(a["counts"], b["counts"], strict=True)]
    return {"bounds": a["bounds"], "counts": counts, "sum": a["sum"] + b["sum"]}


def combine(snapshots: Iterable[Snapshot]) -> Snapshot:
    """The total of several snapshots: counters, connections and histograms add up,
    while the peak and the lag are the worst of them."""
    total: Snapshot = dict.fromkeys(SUMMED + WORST, 0)
    total.update({key: Buckets(bounds).to_json() for key, bounds in HISTOGRAMS.items()})
    labelled: dict[str, Counter[str]] = {key: Counter() for key in LABELLED}
    presence: Counter[str] | None = None
    for snapshot in snapshots:
        for key in SUMMED:
            total[key] += snapshot[key]
        for key in WORST:
            total[key] = max(total[key], snapshot[key])
        for key in HISTOGRAMS:
            total[key] = add_histograms(total[key], snapshot[key])
        for key, counter in labelled.items():
            counter.update(snapshot[key])
        if "presence" in snapshot:
            presence = presence or Counter()
            presence.update(snapshot["presence"])
    total.update({key: dict(counter) for key, counter in labelled.items()})
    if presence is not None:
        total["presence"] = {key: presence[key] for key, *_ in PRESENCE_FIGURES}
    return total


def retired(snapshot: Snapshot) -> Snapshot:
    """The part of an exited worker's last snapshot that still counts: its counters,
    with every gauge (connections, lag, presence's) back to zero."""
    gone = {**snapshot, "connections": 0, "lag_max": 0.0}
    if "presence" in snapshot:
        gone["presence"] = {
            key: snapshot["presence"][key] if counter else 0
            for key, _, counter, _ in PRESENCE_FIGURES
        }
    return gone


def summary(snapshot: Snapshot) -> str:
    """The figures of a snapshot as one log line's worth of ``key=value``."""
    closed = ",".join(f"{reason}:{n}" for reason, n in sorted(snapshot["closed"].items()))
    return (
        f"conns={snapshot['connections']} peak={snapshot['peak']} "
        f"accepted={snapshot['accepted']} closed={{{closed}}} shed={snapshot['shed']} "
        f"in={snapshot['frames_in']}f/{snapshot['bytes_in']}B "
        f"out={snapshot['frames_out']}f/{snapshot['bytes_out']}B "
        f"hb={snapshot['heartbeats']} iters={snapshot['iterations']} "
        f"lag_max={snapshot['lag_max'] * 1000:.1f}ms" + _presence_summary(snapshot)
    )


def _presence_summary(snapshot: Snapshot) -> str:
    presence = snapshot.get("presence")
    if presence is None:
        return ""
    return (
        f" redis_up={presence['redis_up']} members={presence['members']} "
        f"backlog={presence['backlog']} joins={presence['joins']} "
        f"leaves={presence['leaves']} resyncs={presence['resyncs']} "
        f"overflows={presence['overflows']}"
    )


class Ticker:
    """Calls ``callback()`` every ``period`` seconds on ``loop`` until cancelled."""

    def __init__(self, loop: EventLoop, period: float, callback: Callable[[], None]) -> None:
        self.loop = loop
        self.period = period
        self.callback = callback
        self._timer = loop.call_later(period, self._tick)

    def _tick(self) -> None:
        self.callback()
        self._timer = self.loop.call_later(self.period, self._tick)

    def cancel(self) -> None:
        self._timer.cancel()


class StatsReporter:
    """Samples a server's counters and its loop's lag on the loop itself.

    Every SAMPLE_PERIOD it moves the loop's worst lag into a window covering the last
    stats interval and hands a snapshot to ``publish`` (a worker's pipe to its
    supervisor); every ``log_interval`` seconds (0: never) it logs the summary line,
    prefixed with ``label``. ``presence`` gives presence's figures, if it is on.
    """

    def __init__(
        self,
        loop: EventLoop,
        stats: ServerStats,
        log_interval: float,
        publish: Callable[[Snapshot], None] | None = None,
        label: str = "",
        presence: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.loop = loop
        self.stats = stats
        self.presence = presence
        self.publish = publish
        self.label = label
        window = log_interval or DEFAULT_LAG_WINDOW
        self._lags: deque[float] = deque(maxlen=max(1, math.ceil(window / SAMPLE_PERIOD)))
        self.lag = Buckets(LAG_BUCKETS)
        self._tickers = [Ticker(loop, SAMPLE_PERIOD, self._sample)]
        if log_interval:
            self._tickers.append(Ticker(loop, log_interval, self._log))
        if publish is not None:
            publish(self.snapshot())

    def snapshot(self) -> Snapshot:
        snapshot = self.stats.snapshot()
        snapshot["iterations"] = self.loop.iterations
        snapshot["lag_max"] = max(self.loop.max_lag, max(self._lags, default=0.0))
        snapshot["lag"] = self.lag.to_json()
        if self.presence is not None:
            snapshot["presence"] = self.presence()
        return snapshot

    def _sample(self) -> None:
        lag = self.loop.take_max_lag()
        self._lags.append(lag)
        self.lag.observe(lag)
        if self.publish is not None:
            self.publish(self.snapshot())

    def _log(self) -> None:
        log.info("stats %s%s", self.label, summary(self.snapshot()))

    def close(self) -> None:
        """Stop the timers, and publish the final figures."""
        for ticker in self._tickers:
            ticker.cancel()
        if self.publish is not None:
            self.publish(self.snapshot())
