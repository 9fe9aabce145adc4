"""bench.sizing: how the bench sizes its load generator and a spawned hbloop serve,
and, end to end at a lowered open-files limit, a bench run that needs more than one
server process and more than one generator process."""

from __future__ import annotations

import ipaddress
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench.config import DEFAULT_MAX_IN_FLIGHT
from bench.orchestrator import Sampler
from bench.sizing import (
    MAX_CLIENTS_PER_SOURCE,
    MAX_HEARTBEATS_PER_WORKER,
    SERVER_HEADROOM,
    clients_per_worker,
    describe_server_args,
    max_in_flight,
    server_args,
    server_capacity,
    source_addresses,
    worker_count,
)

from conftest import ROOT

PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
CAPACITY = 1_000  # one server process's connections, as a test states it


def test_a_server_one_process_holds_gets_nothing_added():
    assert server_args(CAPACITY, (), capacity=CAPACITY) == ()


def test_a_storm_gets_its_workers_when_one_process_holds_the_clients():
    assert server_args(CAPACITY, (), least_workers=2, capacity=CAPACITY) == ("--workers", "2")


def test_too_many_clients_for_one_process_start_auto_workers_sized_for_the_whole_server():
    added = server_args(4_000, (), capacity=CAPACITY)
    assert added == ("--workers", "auto", "--max-connections", str(round(4_000 * SERVER_HEADROOM)))
    # A storm needs no more: auto starts at least two workers when one cannot hold them.
    assert server_args(4_000, (), least_workers=2, capacity=CAPACITY) == added


@pytest.mark.parametrize(
    "given", [("--workers", "3"), ("--workers=3",), ("--coalesce=1", "--workers", "3")]
)
def test_the_users_workers_win(given):
    assert server_args(4_000, given, capacity=CAPACITY) == ()
    assert server_args(4_000, given, least_workers=2, capacity=CAPACITY) == ()


def test_the_users_max_connections_is_kept():
    given = ("--max-connections=9000",)
    assert server_args(4_000, given, capacity=CAPACITY) == ("--workers", "auto")


def test_the_bench_says_when_it_sized_the_server():
    added = server_args(400_000, ())
    line = describe_server_args(400_000, added)
    assert line == (
        f"bench: 400,000 clients need more than one process's {server_capacity():,} "
        "descriptors: hbloop serve --workers auto --max-connections 500000"
    )
    assert describe_server_args(10, ("--workers", "2")) is None


def test_connects_in_flight_grow_with_the_server_processes_the_clients_need():
    assert max_in_flight(CAPACITY, capacity=CAPACITY) == DEFAULT_MAX_IN_FLIGHT
    assert max_in_flight(CAPACITY + 1, capacity=CAPACITY) == 2 * DEFAULT_MAX_IN_FLIGHT
    assert max_in_flight(400_000, capacity=19_936) == 21 * DEFAULT_MAX_IN_FLIGHT


def test_generator_processes_hold_what_their_descriptors_and_heartbeat_rate_allow():
    assert clients_per_worker(1.0) == min(server_capacity(), MAX_HEARTBEATS_PER_WORKER)
    assert clients_per_worker(30.0) == min(server_capacity(), 30 * MAX_HEARTBEATS_PER_WORKER)
    each = clients_per_worker(30.0)
    assert worker_count(400_000, interval=30.0) == -(-400_000 // each)
    with pytest.raises(ValueError, match="need at least"):
        worker_count(3 * each, 2, interval=30.0)


def test_400k_clients_use_distinct_loopback_sources_within_the_even_ports():
    sources = source_addresses(400_000, "127.0.0.1")
    assert len(sources) == 400_000 // MAX_CLIENTS_PER_SOURCE
    assert len(set(sources)) == len(sources)
    assert all(ipaddress.ip_address(s) in ipaddress.ip_network("127.0.0.0/8") for s in sources)
    # connect() scans the even half of the ephemeral range first (14,116 ports).
    low, high = map(int, PORT_RANGE.read_text().split())
    assert (high - low + 1) // 2 > MAX_CLIENTS_PER_SOURCE


# A process that burns 0.2 s of CPU, then waits for its stdin to close.
BURN_S = 0.2
BURN = (
    "import sys, time\n"
    f"end = time.process_time() + {BURN_S}\n"
    "while time.process_time() < end: pass\n"
    "sys.stdin.read()\n"
)
WAIT = 60.0  # for a process to burn its CPU on a loaded machine


def burner() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.PIPE)


def cpu_reaches(sampler: Sampler, seconds: float) -> bool:
    deadline = time.monotonic() + WAIT
    while sum(sampler.cpu()) < seconds:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_sampler_keeps_an_exited_servers_cpu_and_follows_the_new_one():
    # As after --storm restart: the first server exits, a second takes its place.
    first = burner()
    current = {"server": first}
    sampler = Sampler(lambda: psutil.Process(current["server"].pid))
    assert cpu_reaches(sampler, BURN_S)
    first.communicate(b"")
    second = burner()
    current["server"] = second
    try:
        assert cpu_reaches(sampler, 2 * BURN_S)  # the first's, kept, and the second's
        assert len(sampler.processes()) == 1
    finally:
        second.communicate(b"")


# End to end, at an open-files limit that lowers one process's capacity to 960: 1,500
# clients need two server workers and two generator processes.
LOW_FILES_LIMIT = 1024
SIZED_CLIENTS = 1_500
BENCH_TIMEOUT = 180  # a few seconds of run, spawned processes on a loaded machine


def low_files_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_FILES_LIMIT, LOW_FILES_LIMIT))


def test_a_bench_run_too_big_for_one_process_sizes_the_server_and_the_generator(tmp_path):
    out = tmp_path / "run.json"
    argv = [sys.executable, "-m", "bench", "--clients", str(SIZED_CLIENTS), "--duration", "2"]
    done = subprocess.run(
        [*argv, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
        preexec_fn=low_files_limit,
    )
    assert done.returncode == 0, done.stderr
    max_connections = round(SIZED_CLIENTS * SERVER_HEADROOM)
    assert done.stdout.startswith(
        f"bench: {SIZED_CLIENTS:,} clients need more than one process's 960 descriptors: "
        f"hbloop serve --workers auto --max-connections {max_connections}\n"
    )
    figures = json.loads(out.read_text())
    assert figures["connected"] == SIZED_CLIENTS
    assert figures["dropped"] == figures["errors"] == 0
    assert figures["generator"]["processes"] == 2
    assert figures["generator"]["max_in_flight"] == 2 * DEFAULT_MAX_IN_FLIGHT
    # The supervisor and its two workers (auto: one per CPU, at least the two needed).
    assert figures["server"]["processes"] >= 3
    assert "window" in done.stdout and "server" in done.stdout
