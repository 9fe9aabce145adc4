"""What the bench prints and writes: progress lines, the summary table, the JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TextIO

from bench.config import BenchConfig
from bench.histograms import summary_ms
from bench.results import RunResult, Second


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def progress_line(result: RunResult, second: Second) -> str:
    return (
        f"[{result.server}] {second.second:4d}s  connected {second.open:6d}  "
        f"hb/s {second.heartbeats:6d}  p99 {_ms(second.rtt_ms['p99']):>7} ms  "
        f"dropped {second.dropped}  errors {second.errors}"
    )


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


def to_json(config: BenchConfig, main: RunResult, references: list[RunResult]) -> dict[str, Any]:
    document = main.to_json()
    document["config"] = dataclasses.asdict(config)
    document["against"] = {
        reference.server: {**reference.to_json(), "ratio": ratios(main, reference)}
        for reference in references
    }
    return document


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


_COLUMNS = (
    ("server", 8),
    ("connected", 9),
    ("dropped", 7),
    ("errors", 6),
    ("hb/s", 7),
    ("CPU us/hb", 9),
    ("RSS KB/conn", 11),
    ("RTT p50", 7),
    ("p99", 6),
    ("p99.9", 6),
    ("max ms", 7),
    ("zombies", 7),
    ("late p50", 8),
    ("p99", 6),
    ("max ms", 7),
)


def _row(cells: list[str]) -> str:
    return "  ".join(cell.rjust(width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True))


def summary_table(main: RunResult, references: list[RunResult]) -> str:
    lines = [_row([name for name, _ in _COLUMNS])]
    for result in (main, *references):
        doc = result.to_json()
        rtt = summary_ms(result.rtt)
        late = summary_ms(result.zombie_late, ("p50", "p99"))
        zombies = doc["zombies"]
        lines.append(
            _row(
                [
                    result.server,
                    f"{doc['connected']}",
                    f"{doc['dropped']}",
                    f"{doc['errors']}",
                    f"{result.heartbeats_per_s:.0f}",
                    _num(doc["server"]["cpu_us_per_heartbeat"]),
                    _num(doc["server"]["rss_kb_per_conn"], 2),
                    _ms(rtt["p50"]),
                    _ms(rtt["p99"]),
                    _ms(rtt["p999"]),
                    _ms(rtt["max"]),
                    f"{zombies['closed']}/{zombies['count']}",
                    _ms(late["p50"]),
                    _ms(late["p99"]),
                    _ms(late["max"]),
                ]
            )
        )
    for reference in references:
        ratio = ratios(main, reference)
        lines.append(
            f"{main.server}/{reference.server}: CPU per heartbeat {_num(ratio['cpu'], 2)}x, "
            f"memory per connection {_num(ratio['rss'], 2)}x, RTT p99 {_num(ratio['rtt_p99'], 2)}x"
        )
    return "\n".join(lines)


def print_summary(
    main: RunResult, references: list[RunResult], config: BenchConfig, out: TextIO
) -> None:
    print(
        f"\n{config.clients} clients, interval {config.interval:g}s, timeout {config.timeout:g}s, "
        f"zombies {config.zombies:g}, steady-state window {main.window_s:g}s "
        f"(after a {main.ramp_s:.1f}s ramp)",
        file=out,
    )
    print(summary_table(main, references), file=out)
    for result in (main, *references):
        for sample in result.error_samples:
            print(f"[{result.server}] {sample}", file=out)
        if result.skipped_slots:
            print(
                f"[{result.server}] load generator fell behind: {result.skipped_slots} "
                "heartbeat slots recorded late",
                file=out,
            )
        if result.zombies_early:
            print(
                f"[{result.server}] {result.zombies_early} zombies closed before their timeout",
                file=out,
            )
