"""The bench's report: every ratio it prints is flagged when the run is too small for
it, and the plot has the headline figures, the RTT spectra and a timeline per server."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import BenchConfig
from bench.plot import draw, plot, spectrum
from bench.report import (
    LATE_SHOWN,
    MIN_CONNECTIONS_FOR_RSS,
    MIN_HEARTBEATS_FOR_RTT,
    late_line,
    noisy_figures,
    progress_line,
    summary_table,
    to_json,
)
from bench.results import RunResult, Second, ServerFigures

from test_bench import big_result

# A small run's sizes: a few hundred of everything.
SMALL_HEARTBEATS = 400
SMALL_CONNECTIONS = 40


def small_result(server: str) -> RunResult:
    result = RunResult(server, clients=SMALL_CONNECTIONS, window_s=3.0, ramp_s=0.5)
    result.heartbeats = SMALL_HEARTBEATS
    result.figures = ServerFigures(
        0.01, 0.01, 1000, 1040, SMALL_CONNECTIONS, SMALL_HEARTBEATS, 0.01, SMALL_CONNECTIONS
    )
    for value in (500, 700, 3_000):  # microseconds
        result.rtt.record_value(value)
    result.seconds = [
        Second(i, SMALL_CONNECTIONS, 10, {"p50": 0.5, "p99": 3.0, "max": 3.0}, 0, 0)
        for i in range(4)
    ]
    return result


def test_every_ratio_of_a_small_run_is_flagged_as_noise():
    table = summary_table(small_result("hbloop"), [small_result("uvloop"), small_result("c")])
    lines = table.splitlines()
    for reference in ("uvloop", "c"):
        [at] = [i for i, line in enumerate(lines) if line.startswith(f"hbloop/{reference}:")]
        assert lines[at + 1] == (
            "  (mostly noise in a run this small: CPU per heartbeat, memory per connection, "
            "RTT p99)"
        )
    assert f"RTT p99 from {MIN_HEARTBEATS_FOR_RTT:,} round trips" in table
    assert f"memory per connection from {MIN_CONNECTIONS_FOR_RSS:,} connections" in table


def test_a_run_large_enough_for_one_figure_only_flags_the_others():
    result = small_result("hbloop")
    result.heartbeats = MIN_HEARTBEATS_FOR_RTT
    assert noisy_figures(result) == ["CPU per heartbeat", "memory per connection"]
    assert noisy_figures(big_result("hbloop")) == []


def test_the_json_says_which_figures_are_noise():
    document = to_json(BenchConfig(clients=SMALL_CONNECTIONS), small_result("hbloop"), [], None)
    assert document["rtt_noise_dominated"] and document["rss_noise_dominated"]
    big = to_json(BenchConfig(clients=999_999), big_result("hbloop"), [], None)
    assert not big["rtt_noise_dominated"] and not big["rss_noise_dominated"]


def test_the_spectrum_runs_from_p0_to_the_slowest_in_ms():
    xs, ys = spectrum(small_result("hbloop"))
    assert xs[0] == 1 and xs == sorted(xs)
    # HdrHistogram keeps 3 significant digits: 3 ms reads back as 3.001.
    assert ys == sorted(ys) and ys[0] == 0.5 and ys[-1] == pytest.approx(3.0, rel=1e-3)
    assert spectrum(RunResult("empty", 1)) == ([], [])


def test_the_plot_has_the_headline_panels_and_a_timeline_per_server(tmp_path: Path):
    results = [small_result("hbloop"), small_result("uvloop"), RunResult("target", 1)]
    figure = draw(results, BenchConfig(clients=SMALL_CONNECTIONS))
    titles = [axes.get_title() for axes in figure.axes]
    assert titles[:3] == [
        "server CPU per heartbeat, us",
        "server RSS per connection, KB",
        "RTT percentile spectrum, ms",
    ]
    # Bars only for the servers the bench started and measured.
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["hbloop", "uvloop"]
    # Each server's timeline: connections, and its RTT on a twin axis.
    labels = [axes.get_ylabel() for axes in figure.axes[3:]]
    assert labels == [
        "hbloop\nconnections",
        "RTT, ms",
        "uvloop\nconnections",
        "RTT, ms",
        "target\nconnections",
        "RTT, ms",
    ]
    path = tmp_path / "bench.png"
    plot(path, results, BenchConfig(clients=SMALL_CONNECTIONS))
    assert path.read_bytes().startswith(b"\x89PNG")


def late_second(generator_late: float, bench_late: float) -> Second:
    return Second(
        second=7,
        open=100,
        heartbeats=10,
        rtt_ms={"p50": 1.0, "p99": 2.0, "max": 3.0},
        dropped=0,
        errors=0,
        generator_late=generator_late,
        bench_late=bench_late,
    )


def test_a_second_read_on_time_says_nothing_of_lateness():
    line = progress_line(RunResult("hbloop", 100), late_second(0.1, 0.2))
    assert "late" not in line


def test_a_second_read_late_says_how_late_the_generator_and_the_bench_were():
    line = progress_line(RunResult("hbloop", 100), late_second(2.5, LATE_SHOWN + 2))
    assert line.endswith("errors 0  late: generator 2.5s, bench 3.0s")


def test_the_summary_gives_the_worst_lateness_and_how_many_seconds_were_late():
    run = RunResult("hbloop", 100)
    run.seconds = [late_second(0.0, 0.1), late_second(4.0, 5.5), late_second(1.0, 2.0)]
    assert late_line(run) == (
        "[hbloop] late in 2 seconds: the generator's reports up to 4.0s, read by the "
        "bench up to 5.5s after their second"
    )
    run.seconds = [late_second(0.0, 0.1)]
    assert late_line(run) is None
