"""``--plot FILE.png``: what a bench run measured, drawn (needs matplotlib).

Top row: the headline figures, one bar per server: CPU per heartbeat and resident
memory per connection (servers the bench did not start have none), and the RTT
percentile spectrum of each server from its HdrHistogram (the whole distribution, p0
to p99.999, on HdrHistogram's 1/(1-p) axis). Below: one timeline panel per server,
connections open and RTT p50/p99 second by second, since the runs are made one after
another and would read as simultaneous on one axis. Each server keeps its colour in
every panel; the title says what was run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.config import BenchConfig
from bench.histograms import US_PER_MS
from bench.report import describe_run
from bench.results import RunResult

# Line style of each RTT percentile in a timeline panel.
PERCENTILE_STYLES = {"p50": ":", "p99": "-"}

# The percentiles of the spectrum: 0 to 99.999 in steps that are even on the 1/(1-p)
# axis, as HdrHistogram's own plotter draws it (a run's few slowest round trips beyond
# p99.999 are its maximum, which the summary prints).
SPECTRUM_PERCENTILES = tuple(100 * (1 - 10 ** (-step / 8)) for step in range(0, 41))

# Inches: the top row, and each server's timeline panel below it.
ROW_HEIGHT = 3.2
TIMELINE_HEIGHT = 2.2
WIDTH = 12


def colours(results: list[RunResult]) -> dict[str, str]:
    """One matplotlib colour per server ("C0", "C1", ...), the same in every panel."""
    return {result.server: f"C{index}" for index, result in enumerate(results)}


def title(config: BenchConfig, main: RunResult) -> str:
    text = f"hbloop bench: {describe_run(config, main)}"
    if config.server_args:
        text += "\nhbloop serve " + " ".join(config.server_args)
    return text


def spectrum(result: RunResult) -> tuple[list[float], list[float]]:
    """(1/(1-p), RTT in ms) for each percentile p of the run's round trips."""
    if result.rtt.get_total_count() == 0:
        return [], []
    xs = [1 / (1 - p / 100) for p in SPECTRUM_PERCENTILES]
    ys = [result.rtt.get_value_at_percentile(p) / US_PER_MS for p in SPECTRUM_PERCENTILES]
    return xs, ys


def _bars(axes: Any, results: list[RunResult], colour: dict[str, str], figure: str) -> None:
    """One bar per server the bench started: ``figure`` of its ServerFigures."""
    measured = [r for r in results if r.figures is not None]
    values = [getattr(r.figures, figure) or 0.0 for r in measured]
    axes.bar([r.server for r in measured], values, color=[colour[r.server] for r in measured])
    for index, value in enumerate(values):
        axes.annotate(f"{value:.2f}", (index, value), ha="center", va="bottom", fontsize=8)


def plot(path: Path, results: list[RunResult], config: BenchConfig) -> None:
    from matplotlib import pyplot

    figure = draw(results, config)
    figure.savefig(path)
    pyplot.close(figure)


def draw(results: list[RunResult], config: BenchConfig) -> Any:
    """The matplotlib Figure of ``plot``."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib import pyplot

    colour = colours(results)
    figure = pyplot.figure(figsize=(WIDTH, ROW_HEIGHT + TIMELINE_HEIGHT * len(results)))
    grid = figure.add_gridspec(
        1 + len(results), 3, height_ratios=[ROW_HEIGHT] + [TIMELINE_HEIGHT] * len(results)
    )
    cpu, rss, rtt = (figure.add_subplot(grid[0, column]) for column in range(3))
    _bars(cpu, results, colour, "cpu_us_per_heartbeat")
    cpu.set_title("server CPU per heartbeat, us")
    _bars(rss, results, colour, "rss_kb_per_conn")
    rss.set_title("server RSS per connection, KB")
    for result in results:
        xs, ys = spectrum(result)
        rtt.plot(xs, ys, color=colour[result.server], label=result.server)
    rtt.set_xscale("log")
    rtt.set_yscale("log")
    ticks = [2, 10, 100, 1000, 10_000, 100_000]
    rtt.set_xticks(ticks, ["p50", "p90", "p99", "p99.9", "p99.99", "p99.999"])
    rtt.set_title("RTT percentile spectrum, ms")
    rtt.legend(fontsize=8)
    first = connections = None
    for row, result in enumerate(results, start=1):
        connections = figure.add_subplot(grid[row, :], sharex=first)
        first = first or connections
        seconds = [s.second for s in result.seconds]
        connections.plot(seconds, [s.open for s in result.seconds], color=colour[result.server])
        connections.set_ylabel(f"{result.server}\nconnections", color=colour[result.server])
        latency = connections.twinx()
        for key, style in PERCENTILE_STYLES.items():
            # NaN, a gap in the line, for a second without a round trip.
            values = [math.nan if (v := s.rtt_ms[key]) is None else v for s in result.seconds]
            latency.plot(seconds, values, style, color="k", label=f"RTT {key}")
        latency.set_yscale("log")
        latency.set_ylabel("RTT, ms")
        latency.legend(loc="upper left", fontsize=8)
    if connections is not None:
        connections.set_xlabel("seconds since the start of each run")
    figure.suptitle(title(config, results[0]))
    figure.tight_layout()
    return figure
