"""What the bench prints and writes: progress lines, the summary tables, the JSON and
the HdrHistogram percentile spectra (.hgrm)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TextIO

from bench.config import BenchConfig
from bench.histograms import US_PER_MS, summary_ms
from bench.results import RunResult, Second

# Below this many heartbeats in the window, CPU per heartbeat (and so the CPU ratio)
# is mostly noise: psutil reads CPU time from /proc in 10 ms clock ticks, once at each
# end of the window, and at ~20 us a heartbeat 50,000 heartbeats make 1 s of CPU, of
# which those two ticks are 2%, already the size of the differences being compared.
MIN_HEARTBEATS_FOR_CPU = 50_000

# A window shorter than this is noise-dominated whatever the rate: it averages too few
# seconds for a shared machine's disturbances (other processes, the load generators
# on the same cores, a collection pause) to even out between the runs compared.
MIN_WINDOW_FOR_CPU = 10.0

# Below this many round trips in the window, RTT p99 (and so the RTT ratio) is mostly
# noise: the p99 then rests on fewer than 100 round trips above it, and a single stall
# of the shared machine (another process, a collection pause) moves it; in one small run
# hbloop/uvloop read 4.24x where larger runs read about 0.4x.
MIN_HEARTBEATS_FOR_RTT = 10_000

# Below this many connections, memory per connection (and so its ratio) is mostly noise:
# RSS grows in pages and the allocator's arenas by 128 KB or more, which spread over a
# few hundred connections are several hundred bytes each, the size of the figure.
MIN_CONNECTIONS_FOR_RSS = 1_000

# Every line of the summary fits a terminal this wide.
SUMMARY_WIDTH = 100

# What TLS may cost over plain TCP (issue 12's goals): server memory per connection,
# CPU per heartbeat, and CPU per handshake with an ECDSA certificate.
TLS_GOAL_KB_PER_CONN = 20.0
TLS_GOAL_EXTRA_US_PER_HEARTBEAT = 3.0
TLS_GOAL_MS_PER_HANDSHAKE = 0.5


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# A second's reports read this much after its end or later are said to be late in its
# progress line: the load generator (its slowest process) or the bench reading them
# fell behind, and the figures of that second include their own delay.
LATE_SHOWN = 1.0


def progress_line(result: RunResult, second: Second) -> str:
    line = (
        f"[{result.server}] {second.second:4d}s  connected {second.open:6d}  "
        f"hb/s {second.heartbeats:6d}  p99 {_ms(second.rtt_ms['p99']):>7} ms  "
        f"dropped {second.dropped}  errors {second.errors}"
    )
    if second.bench_late < LATE_SHOWN:
        return line
    return f"{line}  late: generator {second.generator_late:.1f}s, bench {second.bench_late:.1f}s"


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or not theirs:
        return None
    return ours / theirs


def ratios(ours: RunResult, reference: RunResult) -> dict[str, float | None]:
    """hbloop / reference for CPU per heartbeat, memory per connection and RTT p99."""
    mine = ours.to_json()["server"]
    theirs = reference.to_json()["server"]
    return {
        "cpu": _ratio(mine["cpu_us_per_heartbeat"], theirs["cpu_us_per_heartbeat"]),
        "rss": _ratio(mine["rss_kb_per_conn"], theirs["rss_kb_per_conn"]),
        "rtt_p99": _ratio(ours.rtt_p99_ms, reference.rtt_p99_ms),
    }


def noisy_figures(result: RunResult) -> list[str]:
    """The figures of ``result`` that its size leaves mostly noise, as the ratio lines
    name them: its CPU per heartbeat, memory per connection, RTT p99."""
    noisy = []
    if result.figures is not None and cpu_is_noise(result):
        noisy.append("CPU per heartbeat")
    if result.figures is not None and result.figures.connections < MIN_CONNECTIONS_FOR_RSS:
        noisy.append("memory per connection")
    if result.heartbeats < MIN_HEARTBEATS_FOR_RTT:
        noisy.append("RTT p99")
    return noisy


def cpu_is_noise(result: RunResult) -> bool:
    """Whether ``result``'s window was too small for its CPU figures to mean much."""
    return result.heartbeats < MIN_HEARTBEATS_FOR_CPU or result.window_s < MIN_WINDOW_FOR_CPU


def to_json(
    config: BenchConfig,
    main: RunResult,
    references: list[RunResult],
    plain: RunResult | None = None,
) -> dict[str, Any]:
    document = main.to_json()
    if plain is not None:
        document["tls_over_plain"] = tls_costs(main, plain)
    document["config"] = dataclasses.asdict(config)
    document["cpu_noise_dominated"] = any(cpu_is_noise(r) for r in (main, *references))
    noisy = {figure for r in (main, *references) for figure in noisy_figures(r)}
    document["rss_noise_dominated"] = "memory per connection" in noisy
    document["rtt_noise_dominated"] = "RTT p99" in noisy
    document["against"] = {
        reference.server: {**reference.to_json(), "ratio": ratios(main, reference)}
        for reference in references
    }
    return document


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_percentiles(json_path: Path, results: list[RunResult]) -> list[Path]:
    """Each run's RTT percentile spectrum in HdrHistogram's .hgrm text format (values
    in ms), beside the JSON as ``NAME.SERVER.hgrm``; returns the paths written. Plot
    them with HdrHistogram's plotter to compare whole latency distributions."""
    paths = []
    for result in results:
        path = json_path.with_name(f"{json_path.stem}.{result.server}.hgrm")
        with path.open("wb") as out:
            result.rtt.output_percentile_distribution(out, US_PER_MS)
        paths.append(path)
    return paths


# The summary is two tables, each within SUMMARY_WIDTH: load and cost, then latency.
_LOAD_COLUMNS = (
    ("server", 11),
    ("connected", 9),
    ("dropped", 7),
    ("errors", 6),
    ("hb/s", 7),
    ("CPU us/hb", 9),
    ("RSS KB/conn", 11),
)
_LATENCY_COLUMNS = (
    ("server", 11),
    ("RTT p50", 7),
    ("p99", 6),
    ("p99.9", 6),
    ("max ms", 7),
    ("zombies", 9),
    ("late p50", 8),
    ("p99", 6),
    ("max ms", 7),
)


def _table(columns: tuple[tuple[str, int], ...], rows: list[list[str]]) -> list[str]:
    def row(cells: list[str]) -> str:
        return "  ".join(cell.rjust(width) for cell, (_, width) in zip(cells, columns, strict=True))

    return [row([name for name, _ in columns]), *(row(cells) for cells in rows)]


def _load_cells(result: RunResult) -> list[str]:
    doc = result.to_json()
    return [
        result.server,
        f"{doc['connected']}",
        f"{doc['dropped']}",
        f"{doc['errors']}",
        f"{result.heartbeats_per_s:.0f}",
        _num(doc["server"]["cpu_us_per_heartbeat"]),
        _num(doc["server"]["rss_kb_per_conn"], 2),
    ]


def _latency_cells(result: RunResult) -> list[str]:
    rtt = summary_ms(result.rtt)
    late = summary_ms(result.zombie_late, ("p50", "p99"))
    zombies = result.to_json()["zombies"]
    return [
        result.server,
        _ms(rtt["p50"]),
        _ms(rtt["p99"]),
        _ms(rtt["p999"]),
        _ms(rtt["max"]),
        f"{zombies['closed']}/{zombies['count']}",
        _ms(late["p50"]),
        _ms(late["p99"]),
        _ms(late["max"]),
    ]


def summary_table(main: RunResult, references: list[RunResult]) -> str:
    results = [main, *references]
    lines = _table(_LOAD_COLUMNS, [_load_cells(r) for r in results])
    lines.append("")
    lines += _table(_LATENCY_COLUMNS, [_latency_cells(r) for r in results])
    for reference in references:
        ratio = ratios(main, reference)
        lines.append(
            f"{main.server}/{reference.server}: CPU per heartbeat {_num(ratio['cpu'], 2)}x, "
            f"memory per connection {_num(ratio['rss'], 2)}x, RTT p99 {_num(ratio['rtt_p99'], 2)}x"
        )
        noisy = list(dict.fromkeys(noisy_figures(main) + noisy_figures(reference)))
        if noisy:
            lines.append(f"  (mostly noise in a run this small: {', '.join(noisy)})")
    cpu_noisy = [r for r in results if r.figures is not None and cpu_is_noise(r)]
    if cpu_noisy:
        lines.append(
            f"note: a small run ({min(r.heartbeats for r in cpu_noisy):,} heartbeats in "
            f"{min(r.window_s for r in cpu_noisy):g}s): CPU figures and ratios are mostly noise."
        )
        lines.append(
            f"      They mean something from {MIN_HEARTBEATS_FOR_CPU:,} heartbeats "
            f"in a window of {MIN_WINDOW_FOR_CPU:g}s or more."
        )
    if any(noisy_figures(r) for r in results):
        lines.append(
            f"      RTT p99 from {MIN_HEARTBEATS_FOR_RTT:,} round trips, memory per "
            f"connection from {MIN_CONNECTIONS_FOR_RSS:,} connections."
        )
    return "\n".join(lines)


def _difference(tls: float | None, plain: float | None) -> float | None:
    return None if tls is None or plain is None else tls - plain


def tls_costs(tls: RunResult, plain: RunResult) -> dict[str, float | None]:
    """What TLS cost hbloop's server over plain TCP in the same invocation: memory per
    TLS connection (and its excess over plain), CPU per heartbeat over plain, and CPU
    per handshake (the excess of a TLS connect over a plain one during the ramps)."""
    ours, theirs = tls.to_json()["server"], plain.to_json()["server"]
    return {
        "kb_per_conn": ours["rss_kb_per_conn"],
        "extra_kb_per_conn": _difference(ours["rss_kb_per_conn"], theirs["rss_kb_per_conn"]),
        "extra_us_per_heartbeat": _difference(
            ours["cpu_us_per_heartbeat"], theirs["cpu_us_per_heartbeat"]
        ),
        "ms_per_handshake": _difference(ours["cpu_ms_per_connect"], theirs["cpu_ms_per_connect"]),
    }


def tls_summary(tls: RunResult, plain: RunResult) -> str:
    costs = tls_costs(tls, plain)
    ours, theirs = tls.to_json()["server"], plain.to_json()["server"]
    rows = [
        (
            "memory per TLS connection",
            f"{_num(costs['kb_per_conn'], 2)} KB",
            f"plain {_num(theirs['rss_kb_per_conn'], 2)} KB, "
            f"+{_num(costs['extra_kb_per_conn'], 2)} KB",
            f"<= {TLS_GOAL_KB_PER_CONN:g} KB",
        ),
        (
            "extra CPU per heartbeat",
            f"{_num(costs['extra_us_per_heartbeat'], 2)} us",
            f"{_num(ours['cpu_us_per_heartbeat'], 2)} vs {_num(theirs['cpu_us_per_heartbeat'], 2)}",
            f"<= {TLS_GOAL_EXTRA_US_PER_HEARTBEAT:g} us",
        ),
        (
            "server CPU per handshake",
            f"{_num(costs['ms_per_handshake'], 3)} ms",
            f"{_num(ours['cpu_ms_per_connect'], 3)} vs {_num(theirs['cpu_ms_per_connect'], 3)} "
            "ms a connect",
            f"<= {TLS_GOAL_MS_PER_HANDSHAKE:g} ms",
        ),
    ]
    lines = [f"{tls.server} over {plain.server}, same workload in this invocation:"]
    lines += [
        f"  {what:<26} {value:>10}  ({detail}; goal {goal})" for what, value, detail, goal in rows
    ]
    return "\n".join(lines)


# A ramp this much longer than clients / --connect-rate, plus GENERATOR_START, fell
# behind.
RAMP_BEHIND = 1.1

# The ramp's clock starts before the load-generator processes: spawning them (a fresh
# interpreter importing the client each) takes about a second on a loaded machine.
GENERATOR_START = 1.0

# Load-generator processes busy this share of the ramp on average were the bottleneck:
# each is one thread, so it cannot go faster; below it they were waiting on the server.
# With more processes than CPUs, the share is of the CPUs they could have used.
GENERATOR_BUSY = 0.8

# A generator whose report of a ramp second came this late was behind its own schedule
# by whole seconds, its connects with it: it fell behind, busy or starved of the CPU
# (at 400,000 clients on a machine at load average 36, 30% busy and 54.6 s late).
GENERATOR_LATE = 5.0


def ramp_line(result: RunResult, config: BenchConfig, cpus: int | None = None) -> str:
    """The ramp's CPU, the load generator's next to the server's, and, if it fell
    behind, which of them did (the generator if it kept busy the ``cpus``, default
    this machine's, its processes could use, or sent a ramp second's report
    ``GENERATOR_LATE`` late)."""
    ramp = result.ramp_s or 1.0
    asked = config.clients / config.connect_rate
    generator = result.generator_cpu_ramp_s / ramp  # cores
    processes = max(1, result.generator_processes)
    figures = result.figures
    server = "-" if figures is None else f"{figures.cpu_ramp_s / ramp:.2f}"
    line = (
        f"[{result.server}] ramp {result.ramp_s:.1f}s ({asked:.1f}s asked): generator "
        f"{generator:.2f} cores ({result.generator_processes} processes), server {server}"
    )
    if result.ramp_s <= asked * RAMP_BEHIND + GENERATOR_START:
        return line
    usable = min(processes, len(os.sched_getaffinity(0)) if cpus is None else cpus)
    busy = generator / usable
    late = max((s.generator_late for s in result.seconds if s.second <= ramp), default=0.0)
    who = "the server (or the machine)"
    if busy >= GENERATOR_BUSY or late >= GENERATOR_LATE:
        who = "the load generator"
    behind = f"{line}\n[{result.server}] fell behind: {who}, generator {busy:.0%} busy"
    if late < GENERATOR_LATE:
        return behind
    return f"{behind}, its reports up to {late:.1f}s late"


def late_line(result: RunResult) -> str | None:
    """How far behind the load generator, and the bench reading its reports, fell at
    worst; None if no second was read ``LATE_SHOWN`` late."""
    late = [s for s in result.seconds if s.bench_late >= LATE_SHOWN]
    if not late:
        return None
    generator = max(s.generator_late for s in late)
    bench = max(s.bench_late for s in late)
    return (
        f"[{result.server}] late in {len(late)} seconds: the generator's reports up to "
        f"{generator:.1f}s, read by the bench up to {bench:.1f}s after their second"
    )


def window_line(result: RunResult) -> str:
    """The steady state's CPU in cores, the load generator's next to the server's
    (summed over its processes), and the server's memory per connection."""
    window = result.window_s or 1.0
    figures = result.figures
    server = "-"
    if figures is not None:
        server = (
            f"{figures.cpu_seconds / window:.2f} cores ({result.server_processes} processes), "
            f"{_num(figures.rss_kb_per_conn, 2)} KB/conn"
        )
    return (
        f"[{result.server}] window {result.window_s:g}s: generator "
        f"{result.generator_cpu_window_s / window:.2f} cores, server {server}"
    )


def describe_run(config: BenchConfig, main: RunResult) -> str:
    """The workload of a run in one line, for the summary and the plot's title."""
    return (
        f"{config.clients:,} clients, interval {config.interval:g}s, timeout "
        f"{config.timeout:g}s, zombies {config.zombies:g}, window {main.window_s:g}s "
        f"after a {main.ramp_s:.1f}s ramp"
    )


def print_summary(
    main: RunResult,
    references: list[RunResult],
    config: BenchConfig,
    out: TextIO,
    plain: RunResult | None = None,
) -> None:
    """The tables; with ``plain``, ``main`` is a TLS run and what TLS cost follows."""
    print(f"\n{describe_run(config, main)}", file=out)
    print(summary_table(main, references), file=out)
    if plain is not None:
        print(tls_summary(main, plain), file=out)
    for result in (main, *references):
        for sample in result.error_samples:
            print(f"[{result.server}] {sample}", file=out)
        if result.skipped_slots:
            print(
                f"[{result.server}] load generator fell behind: {result.skipped_slots} "
                "heartbeat slots recorded late",
                file=out,
            )
        print(ramp_line(result, config), file=out)
        late = late_line(result)
        if late is not None:
            print(late, file=out)
        print(window_line(result), file=out)
        doc = result.to_json()
        if doc["flood"]:
            rtt = doc["flood"]["bystander_rtt_ms"]
            print(
                f"[{result.server}] flood: {result.flooders} flooders sent "
                f"{result.flood_frames:,} {config.flood_kind} frames; bystanders dropped "
                f"{result.counts.dropped}, false timeouts {result.counts.timeouts}, "
                f"RTT p99 {_ms(rtt['p99'])} ms, max {_ms(rtt['max'])} ms",
                file=out,
            )
        if doc["stall"]:
            print(
                f"[{result.server}] stall: stopped {result.stalled_s:g}s; live peers closed "
                f"{result.counts.dropped} (false timeouts {result.counts.timeouts})",
                file=out,
            )
        if result.storm is not None:
            print(storm_line(result), file=out)
        if result.zombies_early:
            print(
                f"[{result.server}] {result.zombies_early} zombies closed before their timeout",
                file=out,
            )


def storm_line(result: RunResult) -> str:
    """What a --storm did to the clients, in one line."""
    f = result.storm
    assert f is not None
    flaps = "" if f.presence_flaps is None else f", presence flaps {f.presence_flaps}"
    if f.kind == "leave":
        return (
            f"[{result.server}] storm leave: {f.affected:,} clients left at once; false "
            f"timeouts {f.false_timeouts}{flaps}"
        )
    back = ", ".join(f"{k} {_num(v, 2)}s" for k, v in f.return_s.items())
    return (
        f"[{result.server}] storm {f.kind}: {f.affected:,} clients affected, "
        f"{f.returned:,} back ({back}); peak {f.peak_accept_rate:,} accepts/s, handshake "
        f"p99 {_ms(f.handshake_ms['p99'])} ms; dropped elsewhere {f.dropped_elsewhere}, "
        f"false timeouts {f.false_timeouts}, closed twice {f.closed_twice}{flaps}"
    )


def clean(result: RunResult) -> bool:
    """No connection dropped and no error; in a storm, the drops it causes are its
    figures: then clean means none elsewhere, no false timeout, no client closed twice
    and every affected client back (but after a leave, which none comes back from)."""
    f = result.storm
    if f is None:
        return result.counts.dropped == 0 and result.counts.errors == 0
    return (
        f.dropped_elsewhere == 0
        and f.false_timeouts == 0
        and f.closed_twice == 0
        and not f.presence_flaps
        and (f.kind == "leave" or f.returned == f.affected)
    )
