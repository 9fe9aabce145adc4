"""The cost gate, ``python -m bench.cost``: the hot path stays within the budgets kept
in bench/cost_budget.json, and a figure over its budget fails the gate."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.cost import BUDGET_FILE, MARGIN, interpreter, overruns

from conftest import ROOT

COST = [sys.executable, "-m", "bench.cost"]

# Two callgrind runs side by side take 10 to 20 s on an idle 2-core machine, and
# several times that beside the rest of the suite.
GATE_TIMEOUT = 600


def run_cost(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COST, *args], cwd=ROOT, capture_output=True, text=True, timeout=GATE_TIMEOUT, env=env
    )


def budget_file(tmp_path: Path, **changes: Any) -> Path:
    """A copy of the repository's budgets with ``changes`` (a figure's key to a new
    budget, or ``interpreter`` to another build)."""
    budget = json.loads(BUDGET_FILE.read_text())
    for key, value in changes.items():
        if key == "interpreter":
            budget[key] = value
        else:
            budget[key]["budget"] = value
    path = tmp_path / "budget.json"
    path.write_text(json.dumps(budget))
    return path


@pytest.mark.slow
@pytest.mark.timeout(GATE_TIMEOUT)
def test_the_hot_path_is_within_its_budgets():
    measured_with = json.loads(BUDGET_FILE.read_text())["interpreter"]
    if shutil.which("valgrind") is None:
        unable = "valgrind is not installed (.ci/run installs it: apt-get install valgrind)"
    elif measured_with != interpreter():
        unable = f"the budgets are for {measured_with}, and this is {interpreter()}"
    else:
        unable = ""
    if unable:
        if os.environ.get("CI") == "true":
            pytest.fail(unable)
        pytest.skip(unable)
    result = run_cost()
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"instructions per heartbeat +[\d,]+ +budget +[\d,]+", result.stdout)
    assert re.search(r"bytes per connection +[\d,]+ +budget +[\d,]+", result.stdout)


def test_a_figure_over_its_budget_fails_the_gate_and_says_by_how_much(tmp_path):
    result = run_cost(
        "--no-instructions",
        "--json",
        "--budget",
        str(budget_file(tmp_path, bytes_per_connection=100)),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    measured = report["figures"]["bytes_per_connection"]["measured"]
    assert report["figures"] == {
        "bytes_per_connection": {"measured": measured, "budget": 100, "within": False}
    }
    assert report["over"] == [
        f"bytes per connection: {measured:,} is over its budget of 100 by {measured - 100:,} "
        f"({(measured - 100) / 100:.1%})"
    ]


def test_every_figure_over_its_budget_is_named():
    budget = json.loads(BUDGET_FILE.read_text())
    measured = {
        key: budget[key]["budget"] for key in ("instructions_per_heartbeat", "bytes_per_connection")
    }
    assert overruns(measured, budget) == []
    measured["instructions_per_heartbeat"] += 1
    (line,) = overruns(measured, budget)
    assert line.startswith("instructions per heartbeat: ") and " by 1 (" in line


def test_help_names_the_margin():
    result = run_cost("--help")
    assert result.returncode == 0, result.stderr
    assert f"plus {MARGIN:.0%} to the budget file" in " ".join(result.stdout.split())


def test_without_valgrind_the_gate_says_so_and_exits_2():
    result = run_cost(env={**os.environ, "PATH": "/nonexistent"})
    assert result.returncode == 2
    assert "valgrind is not installed" in result.stderr
    assert "--no-instructions" in result.stderr


def test_budgets_for_another_interpreter_build_are_refused(tmp_path):
    path = budget_file(tmp_path, interpreter="CPython 3.11.2 (main Apr 28 2025 14:11:48, GCC)")
    result = run_cost("--no-instructions", "--budget", str(path))
    assert result.returncode == 2
    assert "budgets for CPython 3.11.2" in result.stderr and "--update" in result.stderr
