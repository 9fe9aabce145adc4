"""``python -m bench``: the command line."""

from __future__ import annotations

import argparse
import importlib.util
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import plot, presence, report
from bench.config import (
    DEFAULT_CLIENTS,
    DEFAULT_CONNECT_RATE,
    DEFAULT_DURATION,
    DEFAULT_INTERVAL,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_TIMEOUT,
    BenchConfig,
)
from bench.orchestrator import BenchError, run_and_stop
from bench.reference_server import LOOPS
from bench.servers import ServerStartError, ServerUnderTest, spawn_hbloop, spawn_reference
from bench.sizing import worker_count
from hbloop.netutil import raise_open_files_limit
from hbloop.policy import MIN_TIMEOUT_RATIO
from hbloop.presence import DEFAULT_NODE_TTL, DEFAULT_REAP_INTERVAL

DEFAULT_HOST = "127.0.0.1"


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


def _positive(kind: type[int] | type[float]) -> argparse._ActionType:  # type: ignore[name-defined]
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load an hbloop server with open-loop heartbeat clients and measure it. "
        "Exits 1 if any run dropped connections or had errors.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--clients", type=_positive(int), default=DEFAULT_CLIENTS)
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
        default=DEFAULT_MAX_IN_FLIGHT,
        help="connects awaiting WELCOME at once",
    )
    parser.add_argument(
        "--zombies",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="fraction of clients that go silent after the ramp without closing",
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
        choices=LOOPS,
        default=[],
        help="also run the workload against the reference server on this loop (repeatable)",
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
        default=presence.DEFAULT_CHURN,
        help="connects and disconnects timed, with and without presence",
    )
    group.add_argument(
        "--kill-clients",
        type=_positive(int),
        default=presence.DEFAULT_KILL_CLIENTS,
        help="members of the node killed with SIGKILL",
    )
    group.add_argument(
        "--outage",
        type=_positive(float),
        default=presence.DEFAULT_OUTAGE,
        metavar="S",
        help="seconds Redis is stopped under load",
    )
    group.add_argument(
        "--outage-clients",
        type=_positive(int),
        default=presence.DEFAULT_OUTAGE_CLIENTS,
        help="heartbeating clients during the Redis outage",
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
        worker_count(args.clients, args.workers)
        if args.redis:
            worker_count(args.outage_clients, args.workers)
    except ValueError as exc:
        return str(exc)
    if args.redis and (args.target is not None or args.against or args.zombies or args.plot):
        return "--redis starts its own servers: no --target, --against, --zombies or --plot"
    if "uvloop" in args.against and importlib.util.find_spec("uvloop") is None:
        return "--against uvloop needs uvloop: pip install 'hbloop[bench]' (or pip install uvloop)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _check(args)
    if problem is not None:
        parser.error(problem)
    if args.plot is not None:
        plot.check_available()
    raise_open_files_limit()
    config = BenchConfig(
        clients=args.clients,
        interval=args.interval,
        timeout=args.timeout,
        duration=args.duration,
        connect_rate=args.connect_rate,
        zombies=args.zombies,
        workers=args.workers,
        max_in_flight=args.max_in_flight,
        server_args=tuple(args.server_arg),
    )
    if args.redis:
        try:
            return presence.main(args, config)
        except (BenchError, ServerStartError, RuntimeError) as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            return 2
    try:
        if args.target is not None:
            main_result = run_and_stop(config, ServerUnderTest("target", args.target))
        else:
            server = spawn_hbloop(args.host, args.interval, args.timeout, config.server_args)
            main_result = run_and_stop(config, server)
        references = [
            run_and_stop(config, spawn_reference(loop, args.host, args.interval, args.timeout))
            for loop in args.against
        ]
    except (BenchError, ServerStartError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    report.print_summary(main_result, references, config, sys.stdout)
    if args.json is not None:
        report.write_json(args.json, report.to_json(config, main_result, references))
    if args.plot is not None:
        plot.plot(args.plot, [main_result, *references])
    clean = all(r.counts.dropped == 0 and r.counts.errors == 0 for r in (main_result, *references))
    return 0 if clean else 1
