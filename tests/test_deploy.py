"""What production uses from deploy/ and the release: the Prometheus alerts (promtool
checks them and runs their unit tests), the Grafana dashboard (its queries parse, and
every metric that it and the alerts read is one that a real `hbloop serve` exports),
the systemd unit (systemd-analyze verifies it and rates its sandbox, and its command
line serves TLS from its credentials), the wheel and sdist (twine accepts them, and the
wheel installed in a fresh venv holds every module and serves), and the TLS how-to's recipe
(its keys and secrets are readable by their owner only)."""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from bench.redis_server import RedisProcess
from hbloop.core.policy import DEFAULT_BACKLOG
from hbloop.core.wire import FrameType
from hbloop.net.tls import client_context

from conftest import (
    ROOT,
    START_TIMEOUT,
    LoggedProcess,
    RawPeer,
    http_get,
    metrics_address,
    scrape,
    wait_for,
    wait_for_metrics,
)
from pki import Pki

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "hbloop-alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "hbloop-alerts.test.yml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "hbloop-dashboard.json"
UNIT = DEPLOY / "systemd" / "hbloop.service"
SOCKET_UNIT = DEPLOY / "systemd" / "hbloop.socket"
SETTINGS = DEPLOY / "systemd" / "hbloop.toml"
TLS_HOWTO = ROOT / "docs" / "howto" / "tls.md"

# Where the systemd how-to's install recipe puts the files that the unit names.
INSTALLED_HBLOOP = "/opt/hbloop/venv/bin/hbloop"
INSTALLED_SETTINGS = "/etc/hbloop/hbloop.toml"

# Series that Prometheus makes itself for each target: no server exports them.
PROMETHEUS_SERIES = {"up"}

# Metric families that only some configurations export, with the flag they need: the
# dashboard's panels of these are empty without it, and the alerts on them never fire.
CONDITIONAL = {
    "hbloop_presence_": "--redis",
    "hbloop_worker": "--workers N (N >= 2)",  # hbloop_workers, hbloop_worker_*
    "hbloop_restarts_": "--workers N (N >= 2)",
}

# `systemd-analyze security` rates a unit from 0 (locked down) to 10 (exposed); 2.5 and
# lower reads "OK" among its grades, which the unit must keep.
MAX_EXPOSURE = 2.5

# The values that Grafana puts in place of the dashboard's variables, for promtool.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "job": "hbloop", "instance": ".*"}

# Words of PromQL that stand where a metric name could, but are none.
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
PROMQL_KEYWORDS |= {"group_left", "group_right", "Inf", "NaN"}

# prctl(2) options: the kernel's write-xor-execute for a process and what it execs
# (Linux 6.3+), what MemoryDenyWriteExecute= asks of systemd.
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1

# Runs its arguments as a command under write-xor-execute.
UNDER_MDWE = (
    "import ctypes, os, sys\n"
    f"assert ctypes.CDLL(None).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0\n"
    "os.execv(sys.argv[1], sys.argv[1:])"
)

# Building the sdist and the wheel takes about 10 s here, and the whole wheel test about
# 20 s; with two CPU-bound processes beside it on this 2-core machine, 65 s. Twice that
# for the build, and more for the test, whose default timeout (120 s) is too short.
BUILD_TIMEOUT = 180

# Any other command here (promtool, systemd-analyze, pip installing one wheel, a venv)
# takes a few seconds at most, five times longer on that busy machine.
COMMAND_TIMEOUT = 60
WHEEL_TEST_TIMEOUT = 300


def tool(name: str) -> str:
    """The path of a system command; without it the test is skipped, or fails under CI
    (where .ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not on the PATH"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(argv: list[object], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command to its end; its output goes in the failure message."""
    result = subprocess.run(
        [str(arg) for arg in argv],
        capture_output=True,
        text=True,
        timeout=kwargs.pop("timeout", COMMAND_TIMEOUT),
        **kwargs,
    )
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n" + (
        result.stdout + result.stderr
    )
    return result


# --- what the alerts and the dashboard query ------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[str]:
    """The PromQL of every panel, and the metric queries of the template variables."""
    board = dashboard()
    queries = [target["expr"] for panel in panels(board) for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+), \w+\)", variable["query"]["query"])
            assert found, f"variable {variable['name']}: not a label_values query"
            queries.append(found.group(1))
    return queries


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not function
    calls, keywords, label names or values, nor inside a range or a grouping clause."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = re.findall(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return set(names) - PROMQL_KEYWORDS


def queried_names() -> set[str]:
    """The metrics the alerts and the dashboard query, and those their texts name for
    an operator to look at."""
    expressions = [rule["expr"] for rule in alert_rules()] + dashboard_queries()
    texts = [text for rule in alert_rules() for text in rule["annotations"].values()]
    texts += [panel.get("description", "") for panel in panels(dashboard())]
    named = set(re.findall(r"\b(?:hbloop|process)_\w+\b(?!\*)", " ".join(texts)))  # not a_*
    return named.union(*(metric_names(expr) for expr in expressions))


def exported_names(address: tuple[str, int]) -> set[str]:
    """The sample names /metrics has, histograms' _bucket, _sum and _count included."""
    return {key.split("{", 1)[0] for key in scrape(address)}


def test_metric_names_are_read_from_promql():
    expr = (
        'sum by (job, le) (rate(a_bucket{reason=~"x|y", le="+Inf"}[5m] offset 1h)) '
        "/ on (job) group_left clamp_min(b_total, 100) > 1e3 and up or absent(c:ratio)"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "up", "c:ratio"}


def test_a_lone_server_exports_every_metric_queried_but_the_conditional_ones(serve):
    server = serve("--metrics-port", "0")
    exported = exported_names(metrics_address(server))
    wanted = queried_names() - PROMETHEUS_SERIES
    conditional = {name for name in wanted if name.startswith(tuple(CONDITIONAL))}
    # Each condition is used, and truly needed: a lone server has none of them.
    assert all(any(name.startswith(p) for name in conditional) for p in CONDITIONAL)
    assert not conditional & exported, f"exported without their flag: {conditional & exported}"
    missing = wanted - conditional - exported
    assert not missing, f"queried but not exported by `hbloop serve`: {sorted(missing)}"


def test_workers_and_presence_export_every_metric_queried(
    serve, redis_server: RedisProcess, prefix: str
):
    server = serve(
        *("--workers", "2", "--metrics-port", "0"),
        *("--redis", redis_server.url, "--redis-prefix", prefix),
    )
    address = metrics_address(server)
    wanted = queried_names() - PROMETHEUS_SERIES
    # The workers' figures reach the supervisor once a second.
    assert wait_for(lambda: wanted <= exported_names(address)), (
        f"queried but not exported: {sorted(wanted - exported_names(address))}"
    )


# --- promtool ----------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check():
    result = run([tool("promtool"), "check", "rules", "--lint=all", ALERTS])
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_every_alert_fires_and_stays_silent_in_promtools_unit_tests():
    rules = alert_rules()
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
    cases = [
        case
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for alert in (rule["alert"] for rule in rules):
        outcomes = [bool(case["exp_alerts"]) for case in cases if case["alertname"] == alert]
        assert True in outcomes, f"no test in which {alert} fires"
        assert False in outcomes, f"no test in which {alert} stays silent"
    result = run([tool("promtool"), "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent)
    assert "SUCCESS" in result.stdout


def test_the_scrape_config_and_its_rules_pass_promtool():
    result = run([tool("promtool"), "check", "config", SCRAPE_CONFIG])
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_every_dashboard_query_is_valid_promql(tmp_path: Path):
    def grafana(match: re.Match[str]) -> str:
        return GRAFANA_VARIABLES[match.group(1) or match.group(2)]

    queries = dashboard_queries()
    rules = [
        {"record": f"dashboard:query{i}", "expr": re.sub(r"\$\{(\w+)\}|\$(\w+)", grafana, q)}
        for i, q in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([tool("promtool"), "check", "rules", path])
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_dashboard_panels_tile_the_grid_and_use_the_datasource_variable():
    board = dashboard()
    cells: dict[tuple[int, int], str] = {}
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board):
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, f"{panel['title']} is wider than the grid"
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[x, y]}"
                cells[x, y] = panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], f"{panel['title']} has no query"
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


# --- the systemd unit ------------------------------------------------------------------


def unit_settings(section: str, unit: Path = UNIT) -> list[tuple[str, str]]:
    """The ``Key=value`` lines of a section of ``unit``, in order, with continuation
    lines (a trailing backslash) joined."""
    text = re.sub(r"\\\n\s*", " ", unit.read_text())
    settings, current = [], None
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.append((key, value))
    return settings


def test_systemd_analyze_verifies_the_unit(tmp_path: Path):
    # verify wants ExecStart's program to exist: a copy of the unit runs this venv's.
    text = UNIT.read_text()
    assert INSTALLED_HBLOOP in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_HBLOOP, str(Path(sys.executable).with_name("hbloop"))))
    shutil.copyfile(SOCKET_UNIT, tmp_path / SOCKET_UNIT.name)  # the service requires it
    result = run([tool("systemd-analyze"), "verify", tmp_path / SOCKET_UNIT.name, copy])
    # verify exits 0 on unknown keys and bad values, which it only reports.
    assert result.stdout + result.stderr == ""


def test_the_socket_unit_listens_where_the_settings_would_with_hbloops_backlog():
    """hbloop.socket replaces the settings file's host and port (socket activation),
    with the backlog hbloop would listen with."""
    settings = tomllib.loads(SETTINGS.read_text())
    socket_unit = dict(unit_settings("Socket", SOCKET_UNIT))
    assert socket_unit["ListenStream"] == f"{settings['host']}:{settings['port']}"
    assert int(socket_unit["Backlog"]) == DEFAULT_BACKLOG
    assert ("Requires", SOCKET_UNIT.name) in unit_settings("Unit")


def test_systemd_analyze_rates_the_units_sandbox_ok():
    result = run([tool("systemd-analyze"), "security", "--offline=true", UNIT])
    found = re.search(rf"Overall exposure level for {UNIT.name}: ([\d.]+) (\w+)", result.stdout)
    assert found, result.stdout
    assert float(found.group(1)) <= MAX_EXPOSURE, found.group(0)


def test_the_units_command_line_serves_tls_from_its_credentials(tmp_path: Path, pki: Pki):
    """ExecStart as systemd runs it, with %d a directory of LoadCredential='s files (a
    test certificate, key and secret) and the settings file of deploy/, listening on
    loopback instead of every address; where the kernel can, under the write-xor-execute
    of MemoryDenyWriteExecute= (the rest of the sandbox takes systemd as PID 1)."""
    secret = secrets.token_urlsafe(32)
    sources = {
        "/etc/hbloop/tls.crt": pki.server.cert,
        "/etc/hbloop/tls.key": pki.server.key,
        "/etc/hbloop/jwt.secret": tmp_path / "jwt.secret",
    }
    sources["/etc/hbloop/jwt.secret"].write_text(secret + "\n")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    service = unit_settings("Service")
    for key, value in service:
        if key == "LoadCredential":
            name, source = value.split(":", 1)
            shutil.copyfile(sources[source], credentials / name)
    [command] = [value for key, value in service if key == "ExecStart"]
    argv = shlex.split(command.replace("%d", str(credentials)))
    assert argv[0] == INSTALLED_HBLOOP and INSTALLED_SETTINGS in argv
    argv[0] = str(Path(sys.executable).with_name("hbloop"))
    argv[argv.index(INSTALLED_SETTINGS)] = str(SETTINGS)
    assert tomllib.loads(SETTINGS.read_text())["host"] == "0.0.0.0"  # hence the override:
    argv += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]
    if ctypes.CDLL(None).prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0:
        argv = [sys.executable, "-c", UNDER_MDWE, *argv]
    server = LoggedProcess(argv)
    try:
        found = server.wait_line(r"listening on ([\d.]+):(\d+)", timeout=START_TIMEOUT)
        address = (found.group(1), int(found.group(2)))
        metrics = metrics_address(server)
        token = jwt.encode({"sub": "alice", "exp": 2**31 - 1}, secret, algorithm="HS256")
        with RawPeer(address, tls=client_context(pki.ca)) as peer:
            assert peer.hello("alice", token=token)[0] == FrameType.WELCOME
        # With workers (settings: "auto"), figures reach the supervisor once a second.
        wait_for_metrics(metrics, {"hbloop_tls_handshakes_total": 1})
        assert http_get(metrics, "/healthz")[0] == 200
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    finally:
        server.stop()


# --- the wheel and the sdist ---------------------------------------------------------------


def source_files() -> list[str]:
    """The files of the source tree: tracked, or new and not ignored."""
    listed = run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT
    ).stdout
    return sorted(name for name in listed.split("\0") if name and (ROOT / name).is_file())


@pytest.mark.slow
@pytest.mark.timeout(WHEEL_TEST_TIMEOUT)
def test_the_wheel_and_sdist_pass_twine_and_the_wheel_installs_and_serves(tmp_path: Path):
    # Built from a copy, so that the build's by-products stay out of the work tree.
    files = source_files()
    source = tmp_path / "source"
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", dist, source], timeout=BUILD_TIMEOUT)
    [wheel] = dist.glob("*.whl")
    [sdist] = dist.glob("*.tar.gz")
    result = run([sys.executable, "-m", "twine", "check", "--strict", wheel, sdist])
    assert result.stdout.count("PASSED") == 2, result.stdout

    # The sdist is the source tree, but for the CI script, with setuptools' metadata.
    with tarfile.open(sdist) as archive:
        packed = {m.name.split("/", 1)[1] for m in archive.getmembers() if m.isfile()}
    generated = {"PKG-INFO", "setup.cfg"} | {n for n in packed if n.startswith("hbloop.egg-info/")}
    assert packed - generated == set(files) - {".ci/run", ".gitignore"}

    # A fresh venv with the wheel alone; its dependencies come from this venv's
    # site-packages, named in a .pth file that is read after the venv's own.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", wheel])
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(run([python, "-c", purelib]).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    installed = {
        str(path.relative_to(site))
        for package in ("hbloop", "bench")
        for path in (site / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert installed == {name for name in files if name.startswith(("hbloop/", "bench/"))}

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    where = run([python, "-c", "import hbloop; print(hbloop.__file__)"], cwd=tmp_path, env=env)
    assert Path(where.stdout.strip()).is_relative_to(site)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert run([venv / "bin" / "hbloop", "--version"], env=env).stdout.split() == [
        "hbloop",
        version,
    ]
    run([python, "-m", "bench", "--help"], cwd=tmp_path, env=env)

    hbloop = str(venv / "bin" / "hbloop")
    server = LoggedProcess([hbloop, "serve", "--port", "0", "--metrics-port", "0"], env=env)
    try:
        server.wait_line(r"listening on 127\.0\.0\.1:\d+", timeout=START_TIMEOUT)
        status, body = http_get(metrics_address(server), "/healthz")
        assert status == 200 and json.loads(body)["version"] == version
    finally:
        server.stop()


# --- the docs' recipes ----------------------------------------------------------------------


def test_readmes_tls_recipe_makes_secrets_only_their_owner_reads(tmp_path: Path):
    [recipe] = re.findall(r"```sh\n(\(umask 077\n.*?\n\))\n```", TLS_HOWTO.read_text(), re.S)
    tool("openssl")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # Under the umask most shells start with, which leaves new files readable by all.
    run(["bash", "-c", f"umask 022\n{recipe}"], cwd=tmp_path, env=env)
    secret = {"ca.key", "server.key", "alice.key", "jwt.secret", "alice.jwt"}
    assert secret <= {path.name for path in tmp_path.iterdir()}
    for name in secret:
        mode = (tmp_path / name).stat().st_mode & 0o777
        assert mode == 0o600, f"{name} has mode {mode:o}"
