"""Server statistics: the figures of a server and its loop, sampled once a second for
the log line, the supervisor and /metrics.

A ``Snapshot`` holds detached copies of a worker's figures (``hbloop.net.counters``):
the server's ``ServerStats``, its loop's ``LoopFigures`` and, with presence on,
``PresenceFigures``. It crosses the worker's pipe to its supervisor as one JSON
object, flat as earlier hbloops wrote it (presence's figures under ``presence``), so
that a supervisor reads the workers a SIGHUP started from a newer hbloop. Totals
(``combine``), what an exited worker still counts (``retired``) and the stats line
(``summary``) are derived from the figures' declarations, and name none of them.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from hbloop.net.counters import Count, Figures, Histogram, Seconds, ServerStats
from hbloop.net.loop import EventLoop
from hbloop.presence.node import PresenceFigures

log = logging.getLogger("hbloop.stats")

# The reporter samples the loop's lag (and publishes to the supervisor) this often:
# fine enough for the lag window and for metrics scraped every few seconds, and a
# negligible cost (one timer and one small JSON line a second).
SAMPLE_PERIOD = 1.0

# Upper bounds of the loop-lag histogram's buckets, s. epoll sleeps in whole
# milliseconds, so a healthy loop's worst lag in a sample period is about 1 ms; the
# buckets above separate a busy loop (tens of ms) from a stalled one (seconds).
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

# The lag window when no stats line is logged (--stats-interval 0): a minute, as
# Prometheus scrapes typically every 15 to 60 s.
DEFAULT_LAG_WINDOW = 60.0


class LoopFigures(Figures):
    """The event loop's figures, read (``iterations``) and sampled (the lags) by the
    StatsReporter."""

    iterations = Count("loop_iterations", "Event loop iterations.", line="iters")
    lag_max = Seconds(
        "loop_lag_max_seconds", "Worst lateness of a due timer, last interval.", line="lag_max"
    )
    lag = Histogram(
        "loop_lag_seconds", "Worst lateness of a due timer in each 1 s sample period.", LAG_BUCKETS
    )


@dataclass(frozen=True)
class Snapshot:
    """A worker's figures at one moment, or the total of several workers'."""

    server: ServerStats
    loop: LoopFigures
    presence: PresenceFigures | None = None

    def parts(self) -> tuple[Figures, ...]:
        """The sets of figures, in the stats line's order."""
        parts: tuple[Figures, ...] = (self.server, self.loop)
        return parts if self.presence is None else (*parts, self.presence)

    def to_json(self) -> dict[str, Any]:
        data = {**self.server.to_json(), **self.loop.to_json()}
        if self.presence is not None:
            data["presence"] = self.presence.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        presence = data.get("presence")
        return cls(
            ServerStats.from_json(data),
            LoopFigures.from_json(data),
            None if presence is None else PresenceFigures.from_json(presence),
        )

    def encode(self) -> bytes:
        """One line for the pipe."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Snapshot:
        return cls.from_json(json.loads(line))


F = TypeVar("F", bound=Figures)


def total(kind: type[F], parts: Iterable[F]) -> F:
    """The figures of several workers combined, each as its declaration says."""
    result = kind()
    for part in parts:
        for figure in kind.figures:
            name = figure.name
            setattr(result, name, figure.add(getattr(result, name), getattr(part, name)))
    return result


def combine(snapshots: Iterable[Snapshot]) -> Snapshot:
    """The total of several snapshots: counters, connections and histograms add up,
    while the peak and the lag are the worst of them. Presence's figures are there if
    any snapshot has them."""
    snapshots = list(snapshots)
    presence = [s.presence for s in snapshots if s.presence is not None]
    return Snapshot(
        total(ServerStats, (s.server for s in snapshots)),
        total(LoopFigures, (s.loop for s in snapshots)),
        total(PresenceFigures, presence) if presence else None,
    )


def _retire(figures: F) -> F:
    gone = figures.copy()
    for figure in figures.figures:
        if not figure.lasting:
            setattr(gone, figure.name, figure.zero())
    return gone


def retired(snapshot: Snapshot) -> Snapshot:
    """The part of an exited worker's last snapshot that still counts: its counters,
    with every gauge (connections, lag, presence's) back to zero."""
    presence = snapshot.presence
    return Snapshot(
        _retire(snapshot.server),
        _retire(snapshot.loop),
        None if presence is None else _retire(presence),
    )


def _fields(figures: Figures) -> Iterator[str]:
    """``key=value`` for each figure with a stats-line key; figures sharing a key share
    the field, as ``in=3f/38B``."""
    fields: dict[str, list[str]] = {}
    for figure in figures.figures:
        if figure.line is not None:
            fields.setdefault(figure.line, []).append(figure.show(getattr(figures, figure.name)))
    for key, values in fields.items():
        yield f"{key}={'/'.join(values)}"


def summary(snapshot: Snapshot) -> str:
    """The figures of a snapshot as one log line's worth of ``key=value``."""
    return " ".join(field for part in snapshot.parts() for field in _fields(part))


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
        presence: Callable[[], PresenceFigures] | None = None,
    ) -> None:
        self.loop = loop
        self.stats = stats
        self.presence = presence
        self.publish = publish
        self.label = label
        window = log_interval or DEFAULT_LAG_WINDOW
        self._lags: deque[float] = deque(maxlen=max(1, math.ceil(window / SAMPLE_PERIOD)))
        self.figures = LoopFigures()
        self._tickers = [Ticker(loop, SAMPLE_PERIOD, self._sample)]
        if log_interval:
            self._tickers.append(Ticker(loop, log_interval, self._log))
        self.report_now()

    def report_now(self) -> None:
        """Hand a snapshot to ``publish`` at once: the first, and a change that the
        supervisor waits for (a worker that has stopped accepting)."""
        if self.publish is not None:
            self.publish(self.snapshot())

    def snapshot(self) -> Snapshot:
        figures = self.figures
        figures.iterations = self.loop.iterations
        figures.lag_max = max(self.loop.max_lag, max(self._lags, default=0.0))
        presence = None if self.presence is None else self.presence()
        return Snapshot(self.stats.copy(), figures.copy(), presence)

    def _sample(self) -> None:
        lag = self.loop.take_max_lag()
        self._lags.append(lag)
        self.figures.lag.observe(lag)
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
