"""Smoke test of ``python -m bench``: a small real run against real servers."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

# A few dozen clients for a few seconds; the whole invocation (two servers) takes
# about 15 s, the bound leaves room for a loaded machine.
BENCH_TIMEOUT = 90

FIGURE_KEYS = {"clients", "connected", "dropped", "errors", "rtt_ms", "server", "zombies"}


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
    )


def check_run(figures: dict, clients: int) -> None:
    assert figures.keys() >= FIGURE_KEYS
    assert figures["clients"] == clients
    assert figures["connected"] == clients
    assert figures["dropped"] == 0
    assert figures["errors"] == 0
    assert set(figures["rtt_ms"]) == {"p50", "p99", "p999", "max"}
    assert 0 < figures["rtt_ms"]["p50"] <= figures["rtt_ms"]["p99"] <= figures["rtt_ms"]["max"]
    assert figures["server"]["cpu_us_per_heartbeat"] > 0
    assert "rss_kb_per_conn" in figures["server"]
    zombies = figures["zombies"]
    assert zombies["count"] > 0
    assert zombies["closed"] == zombies["count"]
    assert set(zombies["late_ms"]) == {"p50", "p99", "max"}


def test_bench_smoke_run_is_clean_and_reports_every_key(tmp_path):
    out = tmp_path / "bench.json"
    clients = 40
    result = run_bench(
        "--clients",
        str(clients),
        "--interval",
        "0.5",
        "--timeout",
        "1.5",
        "--duration",
        "3",
        "--zombies",
        "0.1",
        "--against",
        "asyncio",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "connected" in result.stdout  # progress lines
    assert "hbloop/asyncio" in result.stdout  # the comparison in the summary
    figures = json.loads(out.read_text())
    check_run(figures, clients)
    reference = figures["against"]["asyncio"]
    check_run(reference, clients)
    assert set(reference["ratio"]) == {"cpu", "rss", "rtt_p99"}
    assert reference["ratio"]["cpu"] > 0


def test_bench_refuses_a_timeout_shorter_than_two_intervals():
    result = run_bench("--clients", "2", "--interval", "1", "--timeout", "1.5")
    assert result.returncode == 2
    assert "--timeout must be at least 2x --interval" in result.stderr


def test_bench_redis_measures_presence_in_one_run(tmp_path):
    """Tiny sizes, every phase: heartbeats off and on, churn, a killed node, an outage."""
    out = tmp_path / "presence.json"
    result = run_bench(
        *("--redis", "--clients", "30", "--interval", "0.5", "--timeout", "1.5"),
        *("--duration", "1", "--churn", "50", "--kill-clients", "10", "--outage", "1"),
        *("--outage-clients", "30", "--node-ttl", "1", "--reap-interval", "0.25"),
        *("--json", str(out)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "presence cost and bounds" in result.stdout
    figures = json.loads(out.read_text())["presence"]
    assert figures["hb_cpu_off_us"] > 0 and figures["hb_cpu_on_us"] > 0
    assert figures["churn_cpu_on_us"] > 0
    latency = figures["join_visible_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert 0 < figures["stale_s"] <= figures["stale_bound_s"] + 1.5
    assert figures["outage_dropped"] == 0 and figures["outage_errors"] == 0
    assert 0 < figures["resync_s"] <= 5.0
