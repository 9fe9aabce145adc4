"""A whole ``python -m bench`` invocation: the runs, the summary and the files."""

from __future__ import annotations

import argparse
import sys

from bench import plot, presence, report
from bench.cli import EXIT_ERROR
from bench.config import BenchConfig
from bench.orchestrator import BenchError, run_and_stop
from bench.servers import ServerStartError, ServerUnderTest, spawn_hbloop, spawn_reference
from hbloop.netutil import raise_open_files_limit


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
    )
    if args.redis:
        try:
            return presence.main(args, config)
        except (BenchError, ServerStartError, RuntimeError) as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
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
        if args.baseline is not None:
            baseline = spawn_hbloop(
                args.host, args.interval, args.timeout, config.server_args, args.baseline
            )
            references.append(run_and_stop(config, baseline))
    except (BenchError, ServerStartError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    results = [main_result, *references]
    report.print_summary(main_result, references, config, sys.stdout)
    if args.json is not None:
        report.write_json(args.json, report.to_json(config, main_result, references))
        for path in report.write_percentiles(args.json, results):
            print(f"wrote {path}")
    if args.plot is not None:
        plot.plot(args.plot, results, config)
    clean = all(r.counts.dropped == 0 and r.counts.errors == 0 for r in results)
    return 0 if clean else 1
