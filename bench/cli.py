"""``python -m bench``: the command line.

This module needs only hbloop: ``--help`` and the refusal to run without the bench's
dependencies (``pip install 'hbloop[bench]'``) work without them. The run itself is
in ``bench.runner``, imported once they are known to be there.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from bench import c_server, flood
from bench.config import (
    DEFAULT_CHURN,
    DEFAULT_CLIENTS,
    DEFAULT_CONNECT_RATE,
    DEFAULT_DURATION,
    DEFAULT_FAULT_FIGHT,
    DEFAULT_FAULT_PARTITION,
    DEFAULT_FAULT_STOP,
    DEFAULT_INTERVAL,
    DEFAULT_KILL_CLIENTS,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_OUTAGE,
    DEFAULT_OUTAGE_CLIENTS,
    DEFAULT_TIMEOUT,
    EXIT_ERROR,
    FIGHT_SETTLE,
    STALL_AFTER,
    STORM_KINDS,
    STORM_WORKERS,
)
from bench.reference_server import LOOPS
from bench.sizing import worker_count
from hbloop.core.policy import MIN_TIMEOUT_RATIO
from hbloop.presence.node import DEFAULT_NODE_TTL, DEFAULT_REAP_INTERVAL

DEFAULT_HOST = "127.0.0.1"

# What --against runs the workload against: the reference server on an asyncio loop
# (bench/reference_server.py), or the C one built at run time (bench/c_server.py).
AGAINST = (*LOOPS, "c")

# The bench's dependencies (the `bench` extra), by importable module and by package.
REQUIRED = {"hdrh": "hdrhistogram", "psutil": "psutil"}


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    try:
        infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise argparse.ArgumentTypeError(f"cannot resolve {host!r}: {exc}") from None
    address = infos[0][4]
    return str(address[0]), int(address[1])


def _positive(kind: type[int] | type[float]) -> argparse._ActionType:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m bench",
        description="Load an hbloop server with open-loop heartbeat clients and measure it. "
        "Exits 0 if every run was clean, 1 if one dropped connections or had errors, 2 on a "
        "usage error, a missing dependency (pip install 'hbloop[bench]') or a failed run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--clients",
        type=_positive(int),
        default=DEFAULT_CLIENTS,
        metavar="N",
        help="heartbeating connections, each a client with its own name, spread over "
        "load-generator processes and 127.0.0.x source addresses",
    )
    parser.add_argument(
        "--interval", type=_positive(float), default=DEFAULT_INTERVAL, help="heartbeat interval, s"
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=DEFAULT_TIMEOUT,
        help="spawned servers' peer timeout, s",
    )
    parser.add_argument(
        "--duration",
        type=_positive(float),
        default=DEFAULT_DURATION,
        help="steady-state seconds measured after the ramp",
    )
    parser.add_argument(
        "--connect-rate", type=_positive(float), default=DEFAULT_CONNECT_RATE, help="connects/s"
    )
    parser.add_argument(
        "--max-in-flight",
        type=_positive(int),
        default=None,
        help=f"connects awaiting WELCOME at once (default: {DEFAULT_MAX_IN_FLIGHT} for each "
        "server process the clients need: a quarter of each one's accept queue)",
    )
    parser.add_argument(
        "--zombies",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="fraction of clients that go silent after the ramp without closing",
    )
    parser.add_argument(
        "--flooders",
        type=_positive(int),
        default=0,
        metavar="N",
        help="N flooding connections beside the clients during the window; the clients "
        "are their bystanders (see the summary's flood line and the JSON's 'flood')",
    )
    parser.add_argument(
        "--flood-kind",
        choices=flood.KINDS,
        default="pong",
        help="what the flooders stream: unsolicited PONGs or empty DATA (echoed)",
    )
    parser.add_argument(
        "--stall",
        type=_positive(float),
        default=0.0,
        metavar="S",
        help="stop the spawned server (SIGSTOP) for S seconds in the window, then "
        "continue it; no live client may be closed for it (the JSON's 'stall')",
    )
    parser.add_argument(
        "--storm",
        choices=STORM_KINDS,
        default=None,
        help=f"start the server with --workers {STORM_WORKERS} (or auto, if one process "
        "cannot hold the clients) and, 1s into the "
        "window, kill its busiest worker (SIGKILL), restart it (SIGTERM, then again on "
        "its port) or SIGHUP it after a config change that needs new processes; dropped "
        "clients reconnect at once. Or (leave) close every client at once, for good, and "
        "watch a presence lease and a reap longer. Reports time to 50/99/100%% back, peak "
        "accept rate, handshake p99, drops elsewhere, false timeouts, clients closed twice "
        "and, with --redis (the server's presence then on a redis-server of the bench's), "
        "presence flaps: members of live nodes reaped (the JSON's 'storm')",
    )
    parser.add_argument(
        "--workers",
        type=_positive(int),
        default=None,
        help="load-generator processes (default: as few as the open-files limit allows)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--target", type=_address, default=None, metavar="HOST:PORT", help="a running server"
    )
    where.add_argument(
        "--spawn",
        action="store_true",
        default=True,
        help="start an hbloop server with --interval and --timeout (the default)",
    )
    parser.add_argument(
        "--against",
        action="append",
        choices=AGAINST,
        default=[],
        help="also run the workload against a reference server (repeatable): asyncio or "
        "uvloop (bench/reference_server.py), or c, a minimal epoll server in C built at run "
        "time with the system compiler, $CC or cc (bench/c_reference/hbref.c)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run the workload against `hbloop serve` from another checkout (e.g. a "
        "git worktree of main), to compare a change with what it replaces in one run",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="run the spawned servers on TLS with a throwaway ECDSA certificate (the --against "
        "servers too), plus plain hbloop for comparison: memory per TLS connection and the CPU "
        "TLS adds per heartbeat and per handshake",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address for the servers the bench starts"
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the spawned `hbloop serve` (repeatable), e.g. "
        "--server-arg=--coalesce=1",
    )
    group = parser.add_argument_group(
        "presence", "--redis measures cluster-wide presence instead (see bench/presence.py)"
    )
    group.add_argument(
        "--redis",
        action="store_true",
        help="measure presence: heartbeat and connect CPU with and without it, join-to-"
        "visible latency, a killed node's stale time, a Redis outage under load "
        "(starts its own redis-server)",
    )
    group.add_argument(
        "--churn",
        type=_positive(int),
        default=DEFAULT_CHURN,
        help="connects and disconnects timed, with and without presence",
    )
    group.add_argument(
        "--kill-clients",
        type=_positive(int),
        default=DEFAULT_KILL_CLIENTS,
        help="members of the node killed with SIGKILL",
    )
    group.add_argument(
        "--outage",
        type=_positive(float),
        default=DEFAULT_OUTAGE,
        metavar="S",
        help="seconds Redis is stopped under load",
    )
    group.add_argument(
        "--outage-clients",
        type=_positive(int),
        default=DEFAULT_OUTAGE_CLIENTS,
        help="heartbeating clients during the Redis outage",
    )
    group.add_argument(
        "--faults",
        action="store_true",
        help="with --redis: run issue 17's fault cases against two nodes instead (Redis "
        "stopped, a node cut off, a worker killed, a takeover fight; see bench/faults.py)",
    )
    group.add_argument(
        "--fault-stop",
        type=_positive(float),
        default=DEFAULT_FAULT_STOP,
        metavar="S",
        help="--faults: seconds Redis is stopped",
    )
    group.add_argument(
        "--fault-partition",
        type=_positive(float),
        default=DEFAULT_FAULT_PARTITION,
        metavar="S",
        help="--faults: seconds a node is cut off from Redis",
    )
    group.add_argument(
        "--fault-fight",
        type=_positive(float),
        default=DEFAULT_FAULT_FIGHT,
        metavar="S",
        help=f"--faults: seconds of the takeover fight (its rate is read after {FIGHT_SETTLE:g}s)",
    )
    group.add_argument(
        "--node-ttl",
        type=_positive(float),
        default=DEFAULT_NODE_TTL,
        help="hbloop serve --node-ttl",
    )
    group.add_argument(
        "--reap-interval",
        type=_positive(float),
        default=DEFAULT_REAP_INTERVAL,
        help="hbloop serve --reap-interval",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write figures")
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="draw a plot")
    return parser


def _check(args: argparse.Namespace) -> str | None:
    """A problem with the arguments that argparse cannot see, or None."""
    if args.timeout < MIN_TIMEOUT_RATIO * args.interval:
        return f"--timeout must be at least {MIN_TIMEOUT_RATIO:g}x --interval"
    try:
        worker_count(args.clients, args.workers, args.interval)
        if args.redis:
            worker_count(args.outage_clients, args.workers, args.interval)
    except ValueError as exc:
        return str(exc)
    if args.tls and args.target is not None:
        return "--tls runs servers the bench starts, not --target"
    if args.baseline is not None and not (args.baseline / "hbloop" / "server.py").is_file():
        return f"--baseline {args.baseline}: no hbloop checkout there"
    if args.stall and args.target is not None:
        return "--stall stops the server the bench starts: not with --target"
    if args.storm and (args.target is not None or args.stall or args.faults):
        return "--storm strikes a server the bench starts: no --target, --stall or --faults"
    if args.storm and args.duration < STALL_AFTER + 1:
        return f"--duration must exceed {STALL_AFTER + 1:g}s with --storm: the window holds it"
    if args.stall and args.duration < args.stall + STALL_AFTER + 1:
        return f"--duration must exceed --stall by {STALL_AFTER + 1:g}s: the window holds it"
    for path in (args.json, args.plot):
        if path is not None and not path.parent.is_dir():
            return f"cannot write {path}: {path.parent} is not a directory"
    if args.faults and not args.redis:
        return "--faults goes with --redis"
    if args.faults and args.fault_fight <= FIGHT_SETTLE:
        return f"--fault-fight must exceed {FIGHT_SETTLE:g}s: its rate is read after that"
    if args.redis and (args.target is not None or args.against or args.zombies or args.plot):
        return "--redis starts its own servers: no --target, --against, --zombies or --plot"
    if "uvloop" in args.against and importlib.util.find_spec("uvloop") is None:
        return "--against uvloop needs uvloop: pip install 'hbloop[bench]' (or pip install uvloop)"
    if "c" in args.against:
        if args.tls:
            return "--against c serves plain TCP only: not with --tls"
        return c_server.compiler_problem()
    return None


def missing_packages() -> list[str]:
    """The packages of the `bench` extra that are not installed."""
    return [package for module, package in REQUIRED.items() if not importlib.util.find_spec(module)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _check(args)
    if problem is not None:
        parser.error(problem)
    missing = missing_packages()
    if missing:
        print(
            f"bench: error: the bench needs {' and '.join(missing)}: pip install 'hbloop[bench]'",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install 'hbloop[plot]'")
    from bench import runner  # needs the packages just checked for

    return runner.run(args)
