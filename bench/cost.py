"""``python -m bench.cost``: the deterministic cost gate of the server's hot path.

CPU time per heartbeat, as ``python -m bench`` measures it, moves by 30 % from run to
run on a shared machine; these two figures do not move, so a change that makes the
hot path dearer shows up here as a number, and past its budget as exit code 1.

**Instructions per heartbeat** (needs valgrind). ``bench.cost_workload`` runs under
``valgrind --tool=callgrind`` in a fixed environment (``PYTHONHASHSEED=0``, no
bytecode written, no user site, C locale): an in-process ``hbloop.Server`` on
127.0.0.1 whose ``EventLoop`` runs on a simulated clock, ``CONNECTIONS`` raw client
sockets through their HELLO/WELCOME handshake, then client-scheme heartbeats round
robin over them, each client pinging once per (simulated) interval. The child runs
twice, with ``HEARTBEATS_SHORT`` and ``HEARTBEATS_LONG`` heartbeats, and the figure is
the difference of the two runs' instruction counts divided by the difference of
their heartbeats, so start-up, imports, handshakes and exit cancel out. What one
heartbeat counts, all of it in user space (callgrind sees no kernel instruction):

* the server's whole per-frame path: one ``EventLoop.run_once`` (``epoll_wait``, the
  read callback, ``recv_into``, the decoder, the session with its heartbeat histogram,
  the PONG's ``send``) and its share of timer work: each connection's timer comes due
  and re-arms every two to three heartbeats, as in production;
* the driver's own part: its loop, the raw ``send`` of the PING and ``recv`` of the
  PONG (the C calls and the Python bytecode around them), and the clock's update.

Wake-ups that find one ready socket are the common case of a real server (see the
Benchmark section of docs/explanation/figures.md), so the workload gives each iteration one PING.

**Bytes per connection** (no valgrind). In this process, with tracemalloc:
``MEMORY_CONNECTIONS`` client sockets are made first, then traced memory is read
before and after they connect and complete their handshake, and the difference is
divided by their number. It counts everything Python allocates for a connection
(the server's peer, session, decoder and timer, the accepted socket object, its share
of the server's tables), not the kernel's socket buffers.

Both figures are compared with the budgets in ``bench/cost_budget.json`` (``--budget``
names another file). Exit 0: both within budget; 1: a figure is over its budget; 2: a
usage error, valgrind missing (``--no-instructions`` skips that figure), budgets
measured on another interpreter build, or a run that failed. ``--update`` rewrites the
budget file from this run's figures plus ``MARGIN``; commit it saying why the cost
changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from bench.cost_workload import Rig, new_clients

# Exit codes.
EXIT_OK = 0
EXIT_OVER_BUDGET = 1
EXIT_ERROR = 2

BUDGET_FILE = Path(__file__).with_name("cost_budget.json")

# The directory holding the bench and hbloop packages this module was imported from;
# the child runs there, so that it measures the same code.
SOURCE_ROOT = Path(__file__).resolve().parent.parent

# Connections the heartbeats go round: enough for a timer heap and tables of a real
# size, few enough that the handshakes cost a second of callgrind.
CONNECTIONS = 100

# Heartbeats of the two callgrind runs. The short run already spans four intervals
# past every handshake, so the difference covers only the steady state, in which every
# timer comes due and re-arms on its own schedule. A run's start-up varies by up to
# some 15,000 instructions from one run to the next: under 8 per heartbeat over the
# 2,000 heartbeats between the runs (the figure itself has moved by 2).
HEARTBEATS_SHORT = 400
HEARTBEATS_LONG = 2400

# Connections whose memory is averaged: the figure, and enough to amortize the
# server's one-off allocations and table resizes to a few bytes each.
MEMORY_CONNECTIONS = 1000

# A budget is the measured figure plus this fraction. On one machine both figures
# repeat to within 0.01 %, and budgets hold only for the interpreter build they were
# measured with (see interpreter()), so the margin covers only what that leaves open
# (another libc or valgrind release). 1 % is about 360 instructions and 9 bytes: one
# more Python call with three attribute look-ups per heartbeat (measured: +714, 2 %)
# fails the gate, which a 2 % margin would let through; one more 8-byte slot per
# connection alone passes.
MARGIN = 0.01

# The child's whole environment: no variable of the caller's changes what it runs.
CHILD_ENV = {
    "PATH": os.defpath,
    "LC_ALL": "C",
    "PYTHONHASHSEED": "0",
    # Both children must run the same code: neither writes .pyc files the other reads.
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONNOUSERSITE": "1",
}

# A callgrind run takes about 10 s on an idle 2-core machine and five times that when
# the cores are busy; past this, something is stuck.
CHILD_TIMEOUT = 600.0

FIGURES = {
    "instructions_per_heartbeat": "instructions per heartbeat",
    "bytes_per_connection": "bytes per connection",
}


class CostError(Exception):
    """A measurement that could not be made, or budgets that cannot be used."""


@dataclasses.dataclass(frozen=True)
class CallgrindRun:
    heartbeats: int
    instructions: int
    late_pongs: int


def interpreter() -> str:
    """The interpreter build the figures belong to: the same CPython version built by
    Debian and by pyenv differs by 6 % in instructions per heartbeat."""
    build = " ".join(" ".join(platform.python_build()).split())
    return (
        f"{platform.python_implementation()} {platform.python_version()} "
        f"({build}, {platform.python_compiler()}, {platform.machine()})"
    )


# --- the measurements ------------------------------------------------------------------


def start_callgrind(valgrind: str, heartbeats: int, out: Path) -> subprocess.Popen[str]:
    argv = [
        valgrind,
        "-q",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "bench.cost_workload",
        str(CONNECTIONS),
        str(heartbeats),
    ]
    return subprocess.Popen(
        argv,
        cwd=SOURCE_ROOT,
        env=CHILD_ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_callgrind(process: subprocess.Popen[str], heartbeats: int, out: Path) -> CallgrindRun:
    try:
        stdout, stderr = process.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise CostError(
            f"the callgrind run of {heartbeats} heartbeats took over {CHILD_TIMEOUT:g} s"
        ) from None
    if process.returncode != 0:
        raise CostError(
            f"the callgrind run of {heartbeats} heartbeats exited {process.returncode}: "
            + (stderr.strip().splitlines() or ["(no output)"])[-1]
        )
    late = re.search(r"^late=(\d+)$", stdout, re.MULTILINE)
    # callgrind writes "summary: N" in the header (and "totals: N" at the end).
    total = re.search(r"^(?:summary|totals): (\d+)$", out.read_text(), re.MULTILINE)
    if late is None or total is None:
        raise CostError(f"the callgrind run of {heartbeats} heartbeats reported no count")
    return CallgrindRun(heartbeats, int(total.group(1)), int(late.group(1)))


def measure(valgrind: str | None) -> tuple[dict[str, int], list[CallgrindRun]]:
    """Both figures (bytes per connection only, without valgrind), and the callgrind
    runs they came from. The two runs go side by side, each counting its own
    instructions whatever else the machine runs, while this process measures memory."""
    if valgrind is None:
        return {"bytes_per_connection": bytes_per_connection()}, []
    with tempfile.TemporaryDirectory(prefix="hbloop-cost-") as tmp:
        plan = [(k, Path(tmp) / f"callgrind.{k}") for k in (HEARTBEATS_SHORT, HEARTBEATS_LONG)]
        processes = [start_callgrind(valgrind, k, out) for k, out in plan]
        try:
            memory = bytes_per_connection()
            runs = [
                finish_callgrind(p, k, out) for p, (k, out) in zip(processes, plan, strict=True)
            ]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    figures = {"instructions_per_heartbeat": instructions_per_heartbeat(*runs)}
    figures["bytes_per_connection"] = memory
    return figures, runs


def instructions_per_heartbeat(short: CallgrindRun, long: CallgrindRun) -> int:
    """The difference of the two runs per heartbeat of difference: start-up cancels."""
    return round((long.instructions - short.instructions) / (long.heartbeats - short.heartbeats))


def bytes_per_connection() -> int:
    clients = new_clients(MEMORY_CONNECTIONS)
    rig = Rig(clients)
    try:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        rig.handshake()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    except (OSError, RuntimeError) as exc:
        raise CostError(f"the connections whose memory is measured failed: {exc}") from None
    finally:
        tracemalloc.stop()
        rig.close()
    return round((after - before) / MEMORY_CONNECTIONS)


# --- budgets -----------------------------------------------------------------------------


def load_budget(path: Path) -> dict[str, Any]:
    try:
        budget: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CostError(f"cannot read the budget file {path}: {exc}") from None
    if budget.get("interpreter") != interpreter():
        raise CostError(
            f"{path} holds budgets for {budget.get('interpreter')}, and this is "
            f"{interpreter()}: figures differ from one interpreter build to another (measure "
            "this one's with --update)"
        )
    for key in FIGURES:
        entry = budget.get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("budget"), int):
            raise CostError(f"{path} has no integer {key}.budget")
    return budget


def write_budget(path: Path, measured: dict[str, int], valgrind: str) -> None:
    version = subprocess.run(
        [valgrind, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    how = {
        "instructions_per_heartbeat": f"python -m bench.cost: callgrind ({version}), "
        f"{HEARTBEATS_LONG} minus {HEARTBEATS_SHORT} heartbeats over {CONNECTIONS} connections",
        "bytes_per_connection": f"python -m bench.cost: tracemalloc over {MEMORY_CONNECTIONS} "
        "connections",
    }
    budget: dict[str, Any] = {
        "interpreter": interpreter(),
        "margin": f"each budget is its measured figure plus {MARGIN:.0%} (bench.cost.MARGIN), "
        "rounded up",
    }
    for key, value in measured.items():
        budget[key] = {
            "budget": math.ceil(value * (1 + MARGIN)),
            "measured": value,
            "when": datetime.date.today().isoformat(),
            "how": how[key],
        }
    path.write_text(json.dumps(budget, indent=2) + "\n")


def overruns(measured: dict[str, int], budget: dict[str, Any]) -> list[str]:
    """One line for each figure over its budget, saying by how much."""
    lines = []
    for key, value in measured.items():
        limit = budget[key]["budget"]
        if value > limit:
            lines.append(
                f"{FIGURES[key]}: {value:,} is over its budget of {limit:,} "
                f"by {value - limit:,} ({(value - limit) / limit:.1%})"
            )
    return lines


# --- the command -------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m bench.cost",
        description="Count instructions per heartbeat (callgrind) and bytes per connection "
        "(tracemalloc) on hbloop's server and compare them with their budgets. Exits 0 "
        "within budget, 1 over it, 2 on a usage error, without valgrind, or on a failed run.",
    )
    parser.add_argument(
        "--budget",
        type=Path,
        default=BUDGET_FILE,
        metavar="FILE",
        help="the budget file (default: bench/cost_budget.json)",
    )
    parser.add_argument(
        "--no-instructions",
        action="store_true",
        help="skip the callgrind runs: measure and check bytes per connection only",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--update",
        action="store_true",
        # argparse %-formats help texts: the percent sign is doubled.
        help=f"write this run's figures plus {MARGIN:.0%}% to the budget file instead of "
        "checking them",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.update and args.no_instructions:
        parser.error("--update needs both figures: drop --no-instructions")
    valgrind = None
    if not args.no_instructions:
        valgrind = shutil.which("valgrind")
        if valgrind is None:
            print(
                "bench.cost: error: valgrind is not installed, and instructions per heartbeat "
                "are counted with it (apt-get install valgrind); --no-instructions checks "
                "bytes per connection only",
                file=sys.stderr,
            )
            return EXIT_ERROR
    started = time.monotonic()
    try:
        budget = None if args.update else load_budget(args.budget)
        measured, runs = measure(valgrind)
    except CostError as exc:
        print(f"bench.cost: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    seconds = time.monotonic() - started
    if budget is None:
        assert valgrind is not None  # --update needs the instructions
        try:
            write_budget(args.budget, measured, valgrind)
        except OSError as exc:
            print(f"bench.cost: error: cannot write {args.budget}: {exc}", file=sys.stderr)
            return EXIT_ERROR
        budget = load_budget(args.budget)
    over = overruns(measured, budget)
    if args.json:
        print(json.dumps(json_report(args.budget, measured, budget, runs, over, seconds), indent=2))
    else:
        print_report(args.budget, measured, budget, runs, over, seconds)
        if args.update:
            print(f"wrote {args.budget}: commit it, saying why the cost changed")
    return EXIT_OVER_BUDGET if over else EXIT_OK


def json_report(
    path: Path,
    measured: dict[str, int],
    budget: dict[str, Any],
    runs: list[CallgrindRun],
    over: list[str],
    seconds: float,
) -> dict[str, Any]:
    return {
        "budget_file": str(path),
        "interpreter": interpreter(),
        "figures": {
            key: {
                "measured": value,
                "budget": budget[key]["budget"],
                "within": value <= budget[key]["budget"],
            }
            for key, value in measured.items()
        },
        "callgrind": [dataclasses.asdict(run) for run in runs],
        "connections": {"callgrind": CONNECTIONS, "tracemalloc": MEMORY_CONNECTIONS},
        "over": over,
        "seconds": round(seconds, 1),
    }


def print_report(
    path: Path,
    measured: dict[str, int],
    budget: dict[str, Any],
    runs: list[CallgrindRun],
    over: list[str],
    seconds: float,
) -> None:
    try:
        shown = path.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = path
    print(f"hbloop cost gate, budgets from {shown}")
    for key, label in FIGURES.items():
        if key not in measured:
            print(f"  {label:<28} not measured (--no-instructions)")
            continue
        value, limit = measured[key], budget[key]["budget"]
        verdict = "within budget" if value <= limit else "OVER BUDGET"
        print(f"  {label:<28} {value:>9,}   budget {limit:>9,}   {verdict}")
    if runs:
        short, long = runs
        print(
            f"  callgrind, {CONNECTIONS} connections: {short.instructions:,} instructions for "
            f"{short.heartbeats} heartbeats, {long.instructions:,} for {long.heartbeats}"
        )
    late = sum(run.late_pongs for run in runs)
    if late:
        print(
            f"  note: {late} PONGs needed more than one loop iteration (the kernel deferred "
            "a delivery): the instruction figure is a little high; run again"
        )
    for line in over:
        print(f"over budget: {line}")
    print(f"{'over budget' if over else 'within budget'} ({seconds:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
