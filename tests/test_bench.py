"""``python -m bench``: a small real run against real servers, its reports, and its
refusal to run without its dependencies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import c_server
from bench.config import BenchConfig
from bench.plot import colours, title
from bench.report import MIN_HEARTBEATS_FOR_CPU, SUMMARY_WIDTH, summary_table
from bench.results import RunResult, ServerFigures
from bench.servers import spawn_c
from hbloop.core.policy import RESERVED_FDS, grant
from hbloop.core.protocol import parse_welcome
from hbloop.core.wire import (
    PING_FRAME,
    Code,
    FrameType,
    Scheme,
    encode_close,
    encode_data,
    encode_hello,
)

from conftest import ROOT, RawPeer, expect_last_word

# A few dozen clients for a few seconds; the whole invocation (two servers) takes
# about 15 s, the bound leaves room for a loaded machine.
BENCH_TIMEOUT = 90

FIGURE_KEYS = {"clients", "connected", "dropped", "errors", "rtt_ms", "server", "zombies"}


def run_bench(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
        env=env,
    )


# `python -m bench` in an interpreter where the bench extra's packages cannot be
# imported, as after a plain `pip install hbloop`.
WITHOUT_EXTRA = (
    "import runpy, sys\n"
    "sys.modules['hdrh'] = sys.modules['psutil'] = None  # ImportError, find_spec None\n"
    "sys.argv = ['bench', *sys.argv[1:]]\n"
    "runpy.run_module('bench', run_name='__main__')\n"
)


def run_without_extra(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA, *args],
        cwd=cwd,
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


@pytest.mark.slow
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
    summary = result.stdout[result.stdout.index("\n40 clients") : result.stdout.index("\nwrote ")]
    assert max(map(len, summary.splitlines())) <= SUMMARY_WIDTH, summary
    assert "CPU figures and ratios are mostly noise" in summary  # a few hundred heartbeats
    figures = json.loads(out.read_text())
    assert figures["cpu_noise_dominated"] is True
    runs = {"hbloop": figures, "asyncio": figures["against"]["asyncio"]}
    for server, run in runs.items():
        spectrum = (tmp_path / f"bench.{server}.hgrm").read_text().splitlines()
        assert spectrum[0].split() == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        assert spectrum[-2].startswith("#[Max     =")
        assert float(spectrum[-2].rsplit("=", 1)[1].strip(" ]")) == run["heartbeats"]


@pytest.mark.slow
def test_bench_tls_runs_plain_hbloop_beside_and_reports_what_tls_costs(tmp_path):
    out = tmp_path / "tls.json"
    result = run_bench(
        *("--clients", "20", "--interval", "0.5", "--timeout", "1.5", "--duration", "1"),
        *("--tls", "--json", str(out)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hbloop-tls over hbloop, same workload in this invocation:" in result.stdout
    for line in ("memory per TLS connection", "extra CPU per heartbeat", "CPU per handshake"):
        assert line in result.stdout
    figures = json.loads(out.read_text())
    assert figures["server_name"] == "hbloop-tls"
    runs = [figures, figures["against"]["hbloop"]]
    assert [(run["connected"], run["errors"]) for run in runs] == [(20, 0), (20, 0)]
    costs = figures["tls_over_plain"]
    assert costs.keys() == {
        "kb_per_conn",
        "extra_kb_per_conn",
        "extra_us_per_heartbeat",
        "ms_per_handshake",
    }
    assert costs["kb_per_conn"] > 0  # 20 TLS connections are some pages of memory


def test_bench_refuses_a_timeout_shorter_than_two_intervals():
    result = run_bench("--clients", "2", "--interval", "1", "--timeout", "1.5")
    assert result.returncode == 2
    assert "--timeout must be at least 2x --interval" in result.stderr


def test_bench_without_its_extra_helps_and_refuses_in_one_line(tmp_path):
    # Run outside the repository: the bench package comes from the installation.
    helped = run_without_extra("--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "--clients" in helped.stdout and "hbloop[bench]" in helped.stdout
    refused = run_without_extra("--clients", "2", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr == (
        "bench: error: the bench needs hdrhistogram and psutil: pip install 'hbloop[bench]'\n"
    )


def test_bench_refuses_an_output_directory_that_does_not_exist(tmp_path):
    result = run_bench("--clients", "2", "--json", str(tmp_path / "nowhere" / "bench.json"))
    assert result.returncode == 2
    assert result.stderr.strip().endswith("nowhere is not a directory")
    assert len(result.stderr.splitlines()) == 1


def big_result(server: str) -> RunResult:
    """A large run's figures, with every number at its widest."""
    result = RunResult(server, clients=999_999, window_s=60.0, ramp_s=99.9)
    result.heartbeats = 10 * MIN_HEARTBEATS_FOR_CPU
    result.counts.established = 999_999
    result.zombies = 99_999
    result.figures = ServerFigures(
        9999.0, 9999.0, 1e6, 9e6, 999_999, result.heartbeats, 9999.0, 999_999
    )
    for value in (1_000, 250_000, 9_999_999):  # microseconds
        result.rtt.record_value(value)
        result.zombie_late.record_value(value)
    return result


def test_summary_fits_100_columns_and_a_big_run_has_no_noise_note():
    references = [big_result("asyncio"), big_result("uvloop"), big_result("c")]
    table = summary_table(big_result("hbloop"), references)
    assert max(map(len, table.splitlines())) <= SUMMARY_WIDTH, table
    assert "hbloop/uvloop: CPU per heartbeat 1.00x" in table
    assert "hbloop/c: CPU per heartbeat 1.00x, memory per connection 1.00x" in table
    assert "noise" not in table


def test_plot_title_and_colours():
    config = BenchConfig(
        clients=19_000, interval=2, timeout=6, zombies=0.02, server_args=("--coalesce=1",)
    )
    results = [big_result("hbloop"), big_result("uvloop")]
    text = title(config, results[0])
    assert "19,000 clients, interval 2s, timeout 6s, zombies 0.02, window 60s" in text
    assert text.endswith("hbloop serve --coalesce=1")
    assert colours(results) == {"hbloop": "C0", "uvloop": "C1"}


@pytest.mark.slow
def test_bench_redis_measures_presence_in_one_run(tmp_path, redis_installed):
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
    # CPU time comes in 10 ms ticks: at these sizes it may round to nothing.
    assert figures["hb_cpu_off_us"] >= 0 and figures["hb_cpu_on_us"] >= 0
    assert figures["churn_cpu_on_us"] >= 0
    latency = figures["join_visible_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert 0 < figures["stale_s"] <= figures["stale_bound_s"] + 1.5
    assert figures["outage_dropped"] == 0 and figures["outage_errors"] == 0
    assert 0 < figures["resync_s"] <= 5.0


@pytest.mark.slow
def test_bench_floods_and_stalls_the_server_and_reports_its_bystanders(tmp_path):
    """--flooders and --stall in one small run: the server stopped for longer than the
    timeout, flooders streaming beside the clients; none of the clients is dropped."""
    out = tmp_path / "flood.json"
    result = run_bench(
        *("--clients", "50", "--interval", "0.5", "--timeout", "1.5", "--duration", "4"),
        *("--flooders", "4", "--stall", "2", "--json", str(out)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "flood: 4 flooders sent" in result.stdout
    assert "stall: stopped 2s; live peers closed 0 (false timeouts 0)" in result.stdout
    document = json.loads(out.read_text())
    flood = document["flood"]
    assert flood["frames_sent"] > 0
    assert flood["bystanders_dropped"] == flood["false_timeouts"] == 0
    assert flood["bystander_rtt_ms"]["p50"] is not None
    assert document["stall"] == {"seconds": 2.0, "live_peers_closed": 0, "false_timeouts": 0}


def test_bench_refuses_a_stall_it_cannot_hold():
    result = run_bench("--clients", "2", "--duration", "2", "--stall", "5")
    assert result.returncode == 2
    assert "--duration must exceed --stall" in result.stderr


def _storm(tmp_path, kind, *extra):
    out = tmp_path / f"{kind}.json"
    result = run_bench(
        *("--clients", "60", "--interval", "0.5", "--timeout", "1.5", "--duration", "6"),
        *("--storm", kind, "--server-arg=--drain-period=1", "--json", str(out), *extra),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"storm {kind}:" in result.stdout
    return json.loads(out.read_text())


@pytest.mark.slow
def test_bench_storm_kill_worker_counts_the_killed_workers_clients_back(tmp_path, redis_installed):
    """--storm kill-worker --redis: the clients that lost their connection without a
    CLOSE are the killed worker's (its descriptors at the kill: those and the few of its
    own, fewer than the server keeps back for them), every one is back in the window,
    the other worker's clients were neither dropped nor judged silent, and presence
    reaped none of the live node's members."""
    storm = _storm(tmp_path, "kill-worker", "--redis")["storm"]
    assert 0 < storm["affected"] < storm["victims_counted"] < storm["affected"] + RESERVED_FDS
    assert storm["returned"] == storm["affected"]
    back = storm["return_s"]
    assert 0 < back["p50"] <= back["p99"] <= back["p100"] < 5
    assert storm["handshake_ms"]["p99"] > 0 and storm["peak_accept_rate"] > 0
    assert storm["dropped_elsewhere"] == storm["false_timeouts"] == 0
    assert storm["presence_flaps"] == 0


@pytest.mark.slow
def test_bench_storm_hup_on_tls_closes_each_client_once(tmp_path):
    """--storm hup: a config change that needs new processes, then SIGHUP: the rolling
    restart closes every client once (here, with a 1 s drain period, within the
    window), on TLS as on plain TCP."""
    document = _storm(tmp_path, "hup", "--tls")
    for storm in (document["storm"], document["against"]["hbloop"]["storm"]):
        assert storm["affected"] == storm["returned"] == 60
        assert storm["closed_twice"] == storm["false_timeouts"] == 0


@pytest.mark.slow
def test_bench_storm_leave_lets_every_client_go_and_reaps_no_live_node(tmp_path, redis_installed):
    """--storm leave --redis: every client closes at once and none comes back; the
    bench watches a lease and a reap past it, and presence reaped no member of the
    live nodes."""
    storm = _storm(tmp_path, "leave", "--redis")["storm"]
    assert (storm["affected"], storm["returned"]) == (60, 0)
    assert storm["false_timeouts"] == storm["closed_twice"] == 0
    assert storm["presence_flaps"] == 0


@pytest.mark.parametrize("storm", [(), ("--storm", "kill-worker")])
def test_bench_without_redis_says_so_in_one_line(tmp_path, storm):
    """--redis on a machine without redis-server (here: a PATH that finds nothing) ends
    with one line saying how to install it, in the presence runs and the storms alike."""
    env = {**os.environ, "PATH": str(tmp_path)}
    result = run_bench("--redis", "--clients", "2", "--duration", "3", *storm, env=env)
    assert result.returncode == 2
    assert result.stderr == (
        "bench: error: redis-server is not installed (apt-get install redis-server)\n"
    )


def test_bench_refuses_a_storm_it_cannot_strike():
    result = run_bench("--clients", "2", "--storm", "hup", "--target", "127.0.0.1:1")
    assert result.returncode == 2
    assert "--storm strikes a server the bench starts" in result.stderr


# --- --against c: the C reference server -------------------------------------------------


@pytest.fixture(scope="module")
def hbref() -> Path:
    """The C reference server, built as the bench builds it (or found in its cache)."""
    if c_server.find_compiler() is None:
        pytest.skip(c_server.NO_COMPILER)
    return c_server.build().path


def start_hbref(binary: Path, config: dict[str, int]) -> tuple[subprocess.Popen[str], int]:
    """hbref with a vectors.json grant configuration (``interval_ms`` is passed as
    ``--interval-ms``, ...), and its port."""
    argv = [str(binary), "--host", "127.0.0.1"]
    for key, value in config.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("listening on 127.0.0.1:"), (line, process.wait(), process.stderr)
    return process, int(line.rsplit(":", 1)[1])


def test_c_reference_speaks_the_handshake_and_heartbeats(hbref):
    """With raw sockets, started as the bench starts it (interval 0.5 s, timeout 1.5 s)."""
    server = spawn_c(hbref, "127.0.0.1", 0.5, 1.5)
    try:
        with RawPeer(server.address) as peer:
            welcome = parse_welcome(peer.hello("alice", 0)[1])
            assert (welcome.scheme, welcome.interval_ms, welcome.timeout_ms) == (
                Scheme.CLIENT,
                500,
                1500,
            )
            peer.send(PING_FRAME)
            assert peer.recv() == (FrameType.PONG, b"")
            peer.send(encode_data(b"hi"))  # echoed, as by hbloop serve
            assert peer.recv() == (FrameType.DATA, b"hi")
            peer.send(encode_close(Code.NORMAL))
            assert peer.recv_until_eof() == []  # C2: closed without a reply
        with RawPeer(server.address) as peer:  # a HELLO a byte at a time, a PING behind it
            for byte in encode_hello("bob", 250) + PING_FRAME:
                peer.send(bytes([byte]))
            welcome = parse_welcome(peer.recv()[1])
            assert (welcome.interval_ms, welcome.timeout_ms) == (250, 750)
            assert peer.recv() == (FrameType.PONG, b"")
        with RawPeer(server.address) as peer:  # silent past T = 300 ms
            assert parse_welcome(peer.hello("carol", 100)[1]).timeout_ms == 300
            welcomed = time.monotonic()
            expect_last_word(peer, FrameType.CLOSE, Code.TIMEOUT)
            # Its clock started at HELLO, a round trip before `welcomed`; the upper
            # bound is for a loaded machine, the server closes within ~2 ms.
            assert 0.25 < time.monotonic() - welcomed < 2.0
        with RawPeer(server.address) as peer:
            peer.send(PING_FRAME)
            expect_last_word(peer, FrameType.ERROR, Code.HELLO_REQUIRED)
        with RawPeer(server.address) as peer:
            peer.send(bytes.fromhex("000000000301"))
            expect_last_word(peer, FrameType.ERROR, Code.RESERVED_BITS)
    finally:
        server.stop()


def test_c_reference_grants_as_t1_and_refuses_what_t2_forbids(hbref):
    grants = json.loads((ROOT / "tests" / "vectors.json").read_text())["grants"]
    for case in grants["valid"]:
        process, port = start_hbref(hbref, case["config"])
        try:
            with RawPeer(("127.0.0.1", port)) as peer:
                welcome = parse_welcome(peer.hello("grant", case["request_ms"])[1])
            expected = (case["interval_ms"], case["timeout_ms"])
            assert (welcome.interval_ms, welcome.timeout_ms) == expected, case["name"]
            config = case["config"]
            assert expected == grant(
                config["interval_ms"],
                config["timeout_ms"],
                config["min_interval_ms"],
                config["max_interval_ms"],
                case["request_ms"],
            )  # hbloop's own arithmetic agrees
        finally:
            process.kill()
            process.wait()
    for case in grants["invalid"]:
        argv = [str(hbref), "--host", "127.0.0.1"]
        for key, value in case["config"].items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        refused = subprocess.run(argv, capture_output=True, text=True, timeout=BENCH_TIMEOUT)
        assert refused.returncode == 2, case["name"]
        assert refused.stdout == "" and refused.stderr.startswith("hbref: "), case["name"]


@pytest.mark.slow
def test_bench_against_c_connects_every_client_and_reports_its_cpu(hbref, tmp_path):
    out = tmp_path / "c.json"
    clients = 100
    result = run_bench(
        *("--clients", str(clients), "--interval", "0.5", "--timeout", "1.5"),
        *("--duration", "2", "--zombies", "0.1", "--against", "c", "--json", str(out)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"C reference server: {hbref} (cached)" in result.stdout  # built by the fixture
    assert "hbloop/c: CPU per heartbeat" in result.stdout
    document = json.loads(out.read_text())
    figures = document["against"]["c"]
    # The same keys as every other server's, and the ratio to it.
    assert figures.keys() == {*RunResult("any", 1).to_json(), "ratio"}
    assert figures["server_name"] == "c"
    assert (figures["connected"], figures["dropped"], figures["errors"]) == (clients, 0, 0)
    # CPU time comes in 10 ms ticks: a floor this cheap may round to nothing here.
    assert figures["server"]["cpu_us_per_heartbeat"] >= 0
    assert figures["server"]["rss_kb_per_conn"] is not None
    assert figures["zombies"]["closed"] == figures["zombies"]["count"] == 10
    assert figures["zombies"]["early"] == 0
    assert 0 < figures["rtt_ms"]["p50"] <= figures["rtt_ms"]["max"]
    assert (tmp_path / "c.c.hgrm").is_file()


@pytest.mark.parametrize(
    ("environment", "why"),
    [
        ({"CC": ""}, ""),  # no $CC, and no cc, gcc or clang on an empty PATH
        ({"CC": "/nonexistent/cc"}, " (CC='/nonexistent/cc' not found)"),
    ],
    ids=["no-cc-on-path", "missing-CC"],
)
def test_bench_against_c_without_a_compiler_says_so_plainly(tmp_path, environment, why):
    env = {**os.environ, **environment}
    if not environment["CC"]:
        env["PATH"] = str(tmp_path)  # the bench runs as sys.executable: no PATH needed
    result = run_bench("--clients", "2", "--against", "c", env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"python -m bench: error: --against c needs a C compiler (cc); none found{why}\n"
    )


def test_c_reference_is_built_once_per_source_and_compiler(hbref, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = c_server.build()
    assert first.fresh and first.path.parent == tmp_path / "hbloop-bench"
    again = c_server.build()
    assert again == c_server.Built(first.path, fresh=False)
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no leftovers
    with pytest.raises(c_server.BuildError, match=r"building the C reference server failed"):
        c_server.build(["false"])  # a "compiler" that fails
