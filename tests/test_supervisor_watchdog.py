"""The supervisor's watchdog: a stuck worker is killed on evidence, a starved one never.

The decisions are checked on made-up figures (``Watchdog`` is sans-IO), then on real
worker processes (tests/watchdog_worker.py) made stuck by a hook that spins, and
starved by a niced worker sharing its core with busy loops.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hbloop.ops.supervisor import (
    BLOCKED_TIMEOUT,
    KILL_PERIOD,
    STALL_TIMEOUT,
    STUCK_CPU,
    ProcessSample,
    Watchdog,
    sample_process,
)

from conftest import WAIT_TIMEOUT, LoggedProcess, pid_alive, wait_for

HERE = Path(__file__).parent

RUNNING = ProcessSample("R", 0.0)


def _silent_for(watchdog: Watchdog, key: int, seconds: float, sample: ProcessSample) -> float:
    """Observe ``key`` progressing at 0, then silent, sampled each second until
    ``seconds``; the time reached."""
    watchdog.observe(key, 0.0, 1, ProcessSample("R", 0.0))
    for now in range(1, int(seconds) + 1):
        watchdog.observe(key, float(now), 1, sample)
    return float(int(seconds))


def test_a_starved_worker_is_noted_once_and_never_killed():
    watchdog = Watchdog()
    starved = ProcessSample("R", 0.05)  # runnable, a few ms of CPU a second
    now = _silent_for(watchdog, 1, STALL_TIMEOUT, starved)
    [verdict] = watchdog.verdicts(now, {1: starved})
    assert not verdict.stuck and "starved" in verdict.evidence and "0.05s" in verdict.evidence
    # Silent far longer: still starved, and not said again.
    now = _silent_for(watchdog, 1, BLOCKED_TIMEOUT * 2, starved)
    watchdog.observe(1, now, 1, starved)
    assert watchdog.verdicts(now, {1: starved}) == []


def test_silence_shorter_than_the_stall_timeout_says_nothing():
    watchdog = Watchdog()
    stopped = ProcessSample("T", 0.0)
    now = _silent_for(watchdog, 1, STALL_TIMEOUT - 1, stopped)
    assert watchdog.verdicts(now, {1: stopped}) == []


@pytest.mark.parametrize(
    ("sample", "seconds", "evidence"),
    [
        (ProcessSample("T", 0.0), STALL_TIMEOUT, "stopped (state T)"),
        (ProcessSample("t", 0.0), STALL_TIMEOUT, "stopped (state t)"),
        (ProcessSample("R", STUCK_CPU), STALL_TIMEOUT, f"used {STUCK_CPU:.2f}s of CPU"),
        (ProcessSample("S", 0.0), BLOCKED_TIMEOUT, "asleep outside its loop"),
    ],
    ids=["stopped", "traced", "spinning", "blocked"],
)
def test_a_stuck_worker_is_killed_with_its_evidence(sample, seconds, evidence):
    watchdog = Watchdog()
    now = _silent_for(watchdog, 7, seconds, sample)
    [verdict] = watchdog.verdicts(now, {7: sample})
    assert verdict.stuck and verdict.key == 7 and evidence in verdict.evidence
    assert verdict.silent == now


def test_asleep_but_once_runnable_is_starved_not_blocked():
    watchdog = Watchdog()
    watchdog.observe(1, 0.0, 1, RUNNING)
    watchdog.observe(1, 1.0, 1, ProcessSample("R", 0.01))  # waiting for a CPU
    asleep = ProcessSample("S", 0.01)
    for now in range(2, int(BLOCKED_TIMEOUT) + 2):
        watchdog.observe(1, float(now), 1, asleep)
    [verdict] = watchdog.verdicts(float(now), {1: asleep})
    assert not verdict.stuck


def test_progress_resets_the_evidence():
    watchdog = Watchdog()
    spinning = ProcessSample("R", STUCK_CPU * 2)
    watchdog.observe(1, 0.0, 1, RUNNING)
    watchdog.observe(1, STALL_TIMEOUT, 2, spinning)  # a loop iteration: not stuck
    assert watchdog.verdicts(STALL_TIMEOUT, {1: spinning}) == []


def test_at_most_one_kill_per_period():
    watchdog = Watchdog()
    stopped = ProcessSample("T", 0.0)
    for key in (1, 2, 3):
        _silent_for(watchdog, key, STALL_TIMEOUT, stopped)
    everyone = dict.fromkeys((1, 2, 3), stopped)
    now = STALL_TIMEOUT
    killed = []
    while len(killed) < 3:
        verdicts = watchdog.verdicts(now, everyone)
        assert len(verdicts) <= 1
        for verdict in verdicts:
            killed.append((now, verdict.key))
            watchdog.forget(verdict.key)
            del everyone[verdict.key]
        now += 1.0
    times = [at for at, _key in killed]
    assert [b - a for a, b in itertools.pairwise(times)] == [KILL_PERIOD] * 2
    assert sorted(key for _at, key in killed) == [1, 2, 3]


def test_sample_process_reads_state_and_cpu():
    mine = sample_process(os.getpid())
    assert mine is not None and mine.state == "R"
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    later = sample_process(os.getpid())
    assert later is not None and later.cpu > mine.cpu
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.send_signal(signal.SIGSTOP)
        assert wait_for(lambda: getattr(sample_process(child.pid), "state", "") == "T")
    finally:
        child.kill()
        child.wait()
    assert sample_process(child.pid) is None


# --- real workers -------------------------------------------------------------------

# How long a kill may take once the evidence exists: the stall timeout, CPU time for
# the spinning worker on a machine shared with busy loops (half a core, or less), and
# room for a loaded machine.
KILL_BOUND = STALL_TIMEOUT + 2 * STUCK_CPU + WAIT_TIMEOUT


class Supervised(LoggedProcess):
    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(HERE)}
        super().__init__(
            [sys.executable, "-c", "import watchdog_worker; watchdog_worker.main()"], env=env
        )
        line = self.wait_line(r"listening on \S+ workers=2 pids=(\d+) (\d+)")
        self.pids = [int(line.group(1)), int(line.group(2))]
        for pid in self.pids:  # its signal handlers are installed
            self.wait_line(rf"worker {pid} ready")


@pytest.fixture
def supervised() -> Iterator[Supervised]:
    process = Supervised()
    try:
        yield process
    finally:
        process.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait()
        process.stop()
        for pid in process.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_spinning_worker_is_killed_on_its_cpu_time(supervised):
    stuck, other = supervised.pids
    os.kill(stuck, signal.SIGUSR1)
    line = supervised.wait_line(
        rf"worker 1 \(pid {stuck}\) sent no report for ([\d.]+)s: stuck, used ([\d.]+)s of "
        r"CPU without a loop iteration \(state R\); .*killing it",
        timeout=KILL_BOUND,
    )
    assert float(line.group(1)) >= STALL_TIMEOUT and float(line.group(2)) >= STUCK_CPU
    supervised.wait_line(r"worker 1 \(pid \d+\) is back")
    assert pid_alive(other)
    assert not supervised.find(rf"pid {other}\) sent no report")


# Busy loops sharing the starved worker's core: with the worker at nice 19 (weight 15
# against 1024 for each loop) it gets under 1% of that core.
COMPETITORS = 2


def _busy_loop_on_cpu0(seconds: float) -> subprocess.Popen[bytes]:
    code = (
        "import os, time\n"
        "os.sched_setaffinity(0, {0})\n"
        f"end = time.monotonic() + {seconds}\n"
        "while time.monotonic() < end: pass\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_starved_worker_is_not_killed(supervised):
    starved, other = supervised.pids
    # Root may raise a niceness back (in the finally clause); others may not.
    if os.geteuid() != 0:
        pytest.skip("needs root, to give the starved worker its CPU share back")
    os.sched_setaffinity(starved, {0})
    os.setpriority(os.PRIO_PROCESS, starved, 19)
    # Bounded by themselves too, should this test die before stopping them.
    loops = [_busy_loop_on_cpu0(KILL_BOUND * 2) for _ in range(COMPETITORS)]
    try:
        os.kill(starved, signal.SIGUSR2)  # BURN_CPU of work: long, at under 1% of a core
        supervised.wait_line(
            rf"worker 1 \(pid {starved}\) sent no report for [\d.]+s with only [\d.]+s of CPU "
            r"\(state R\): starved of CPU, not stuck; not killing it",
            timeout=KILL_BOUND,
        )
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
        os.setpriority(os.PRIO_PROCESS, starved, 0)
        os.sched_setaffinity(starved, os.sched_getaffinity(0))
    # Given its CPU back, it finishes its work and reports again.
    supervised.wait_line(rf"worker {starved} burnt")
    assert pid_alive(starved) and pid_alive(other)
    assert not supervised.find(r"; killing it")
