"""The bench's ramp line: the load generator's CPU next to the server's, and which of
them fell behind when the ramp took longer than asked."""

from __future__ import annotations

from bench.config import BenchConfig
from bench.report import GENERATOR_BUSY, RAMP_BEHIND, ramp_line
from bench.results import RunResult, ServerFigures

CONFIG = BenchConfig(clients=10_000, connect_rate=1_000)  # a 10 s ramp asked
ASKED = 10.0
PROCESSES = 2


def result(ramp_s: float, generator_cores: float) -> RunResult:
    run = RunResult("hbloop", CONFIG.clients, ramp_s=ramp_s)
    run.generator_processes = PROCESSES
    run.generator_cpu_ramp_s = generator_cores * ramp_s
    run.figures = ServerFigures(
        cpu_user_s=1.0,
        cpu_system_s=0.0,
        rss_before_kb=0.0,
        rss_steady_kb=0.0,
        connections=CONFIG.clients,
        heartbeats=1,
        cpu_ramp_s=0.5 * ramp_s,
        connects=CONFIG.clients,
    )
    return run


def test_a_ramp_on_time_reports_both_cpus():
    line = ramp_line(result(ASKED, 0.5), CONFIG)
    assert line == (
        "[hbloop] ramp 10.0s (10.0s asked): generator 0.50 cores (2 processes), server 0.50"
    )


def test_a_busy_generator_is_named_when_the_ramp_falls_behind():
    slow = ASKED * RAMP_BEHIND * 2
    line = ramp_line(result(slow, PROCESSES * GENERATOR_BUSY), CONFIG)
    assert line.endswith("\n[hbloop] fell behind: the load generator, generator 80% busy")


def test_an_idle_generator_blames_the_server():
    slow = ASKED * RAMP_BEHIND * 2
    line = ramp_line(result(slow, 0.2), CONFIG)
    assert line.endswith("fell behind: the server (or the machine), generator 10% busy")
