"""A whole ``python -m bench`` invocation: the runs, the summary and the files."""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
from pathlib import Path

from bench import c_server, faults, plot, presence, report, sizing, storm
from bench.config import EXIT_ERROR, STORM_WORKERS, BenchConfig
from bench.orchestrator import BenchError, run_and_stop
from bench.redis_server import RedisNotInstalled, RedisProcess
from bench.results import RunResult
from bench.servers import (
    ServerStartError,
    ServerUnderTest,
    make_certificate,
    spawn_c,
    spawn_hbloop,
    spawn_reference,
)
from hbloop.net.sockets import raise_open_files_limit


def run(args: argparse.Namespace) -> int:
    """Run the workload of ``args`` (``python -m bench`` options); exit 0 if every
    run was clean, 1 if one dropped a connection or had an error, 2 if the bench
    itself failed."""
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
        flooders=args.flooders,
        flood_kind=args.flood_kind,
        stall=args.stall,
        storm=args.storm,
    )
    if args.redis and args.storm is None:
        try:
            if args.faults:
                return faults.main(args)
            return presence.main(args, config)
        except (BenchError, ServerStartError, RuntimeError) as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
    c_binary = None
    if "c" in args.against:  # built (or found in the cache) before any run, so a
        try:  # failed build costs no time
            built = c_server.build()
        except c_server.BuildError as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        how = "built now" if built.fresh else "cached"
        print(f"C reference server: {built.path} ({how})", flush=True)
        c_binary = built.path
    plain = None  # with --tls: the same workload on plain hbloop, for what TLS costs
    try:
        with contextlib.ExitStack() as stack:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="hbloop-bench-"))
            tls = make_certificate(Path(scratch)) if args.tls else None
            setup = None
            if args.storm is not None:
                redis = None
                if args.redis:
                    redis = RedisProcess(Path(scratch), nice=storm.REDIS_NICE)
                    stack.callback(redis.stop)
                    print(storm.redis_priority(redis), flush=True)
                setup = storm.Setup(args.storm, Path(scratch), redis)

            least = STORM_WORKERS if setup else 1
            sized = sizing.server_args(config.clients, config.server_args, least)
            note = sizing.describe_server_args(config.clients, sized)
            if note is not None and args.target is None:
                print(note, flush=True)

            def extra() -> tuple[str, ...]:
                return config.server_args + sized + (setup.server_args() if setup else ())

            def held() -> socket.socket | None:
                return setup.held(args.host) if setup else None

            def struck(result: RunResult) -> RunResult:
                if setup is not None:
                    setup.count_flaps(result)
                return result

            if args.target is not None:
                main_result = run_and_stop(config, ServerUnderTest("target", args.target))
            else:
                server = spawn_hbloop(
                    args.host,
                    args.interval,
                    args.timeout,
                    extra(),
                    tls=tls,
                    connect_rate=args.connect_rate,
                    held=held(),
                )
                main_result = struck(run_and_stop(config, server, Path(scratch)))
            references = []
            if tls is not None:
                server = spawn_hbloop(args.host, args.interval, args.timeout, extra(), held=held())
                plain = struck(run_and_stop(config, server, Path(scratch)))
                references.append(plain)
            for loop in args.against:
                if loop == "c":
                    assert c_binary is not None
                    server = spawn_c(c_binary, args.host, args.interval, args.timeout)
                else:
                    server = spawn_reference(loop, args.host, args.interval, args.timeout, tls)
                references.append(run_and_stop(config, server))
            if args.baseline is not None:
                given = config.server_args + sized
                baseline = spawn_hbloop(
                    args.host, args.interval, args.timeout, given, args.baseline
                )
                references.append(run_and_stop(config, baseline))
    except (BenchError, ServerStartError, RedisNotInstalled) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    results = [main_result, *references]
    report.print_summary(main_result, references, config, sys.stdout, plain)
    if args.json is not None:
        report.write_json(args.json, report.to_json(config, main_result, references, plain))
        print(f"wrote {args.json}")
        for path in report.write_percentiles(args.json, results):
            print(f"wrote {path}")
    if args.plot is not None:
        plot.plot(args.plot, results, config)
        print(f"wrote {args.plot}")
    clean = all(report.clean(r) for r in results)
    return 0 if clean else 1
