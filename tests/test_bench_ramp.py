"""The bench's ramp line: the load generator's CPU next to the server's, and which of
them fell behind when the ramp took longer than asked."""

from __future__ import annotations

import dataclasses
import math

from bench.config import BenchConfig
from bench.report import GENERATOR_BUSY, GENERATOR_LATE, RAMP_BEHIND, ramp_line, window_line
from bench.results import RunResult, Second, ServerFigures

CONFIG = BenchConfig(clients=10_000, connect_rate=1_000)  # a 10 s ramp asked
ASKED = 10.0
PROCESSES = 2
CPUS = 2


def result(ramp_s: float, generator_cores: float, processes: int = PROCESSES) -> RunResult:
    run = RunResult("hbloop", CONFIG.clients, ramp_s=ramp_s)
    run.generator_processes = processes
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
    line = ramp_line(result(ASKED, 0.5), CONFIG, CPUS)
    assert line == (
        "[hbloop] ramp 10.0s (10.0s asked): generator 0.50 cores (2 processes), server 0.50"
    )


def test_a_busy_generator_is_named_when_the_ramp_falls_behind():
    slow = ASKED * RAMP_BEHIND * 2
    line = ramp_line(result(slow, PROCESSES * GENERATOR_BUSY), CONFIG, CPUS)
    assert line.endswith("\n[hbloop] fell behind: the load generator, generator 80% busy")


def test_an_idle_generator_blames_the_server():
    slow = ASKED * RAMP_BEHIND * 2
    line = ramp_line(result(slow, 0.2), CONFIG, CPUS)
    assert line.endswith("fell behind: the server (or the machine), generator 10% busy")


def test_a_generator_late_by_seconds_is_named_however_idle():
    slow = ASKED * RAMP_BEHIND * 2
    run = result(slow, 0.2)
    on_time = Second(second=1, open=1, heartbeats=1, rtt_ms={}, dropped=0, errors=0)
    late = dataclasses.replace(on_time, second=2, generator_late=GENERATOR_LATE + 1)
    after = dataclasses.replace(on_time, second=math.ceil(slow) + 1, generator_late=99.0)
    run.seconds = [on_time, late, after]  # the last is past the ramp: not counted
    line = ramp_line(run, CONFIG, CPUS)
    assert line.endswith(
        "fell behind: the load generator, generator 10% busy, its reports up to 6.0s late"
    )


def test_many_generator_processes_are_busy_when_they_fill_the_cpus_they_share():
    # 22 processes on 2 CPUs can use 2 cores between them, not 22: 1.7 cores is 85%.
    slow = ASKED * RAMP_BEHIND * 2
    line = ramp_line(result(slow, 1.7, processes=22), CONFIG, CPUS)
    assert line.endswith("fell behind: the load generator, generator 85% busy")


def test_the_window_line_gives_both_cpus_and_the_servers_processes_and_memory():
    run = result(ASKED, 0.5)
    run.window_s = 10.0
    run.generator_cpu_window_s = 3.0
    run.server_processes = 27
    line = window_line(run)
    # The server's 1 s of CPU over 10 s; (rss_steady - rss_before) / connections is 0.
    assert line == (
        "[hbloop] window 10s: generator 0.30 cores, server 0.10 cores (27 processes), 0.00 KB/conn"
    )
