"""``--plot FILE.png``: connections and RTT percentiles over time (needs matplotlib).

Each server keeps one colour in every panel; within the RTT panel the line style tells
the percentile. The title says what was run.
"""

from __future__ import annotations

from pathlib import Path

from bench.config import BenchConfig
from bench.report import describe_run
from bench.results import RunResult

# Line style of each RTT percentile in the lower panel.
PERCENTILE_STYLES = {"p50": ":", "p99": "-"}


def colours(results: list[RunResult]) -> dict[str, str]:
    """One matplotlib colour per server ("C0", "C1", ...), the same in every panel."""
    return {result.server: f"C{index}" for index, result in enumerate(results)}


def title(config: BenchConfig, main: RunResult) -> str:
    text = f"hbloop bench: {describe_run(config, main)}"
    if config.server_args:
        text += "\nhbloop serve " + " ".join(config.server_args)
    return text


def plot(path: Path, results: list[RunResult], config: BenchConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib import pyplot

    colour = colours(results)
    figure, (connections, rtt) = pyplot.subplots(2, 1, sharex=True, figsize=(10, 7))
    for result in results:
        seconds = [s.second for s in result.seconds]
        connections.plot(
            seconds,
            [s.open for s in result.seconds],
            color=colour[result.server],
            label=result.server,
        )
        for key, style in PERCENTILE_STYLES.items():
            values = [s.rtt_ms[key] for s in result.seconds]
            rtt.plot(
                seconds, values, style, color=colour[result.server], label=f"{result.server} {key}"
            )
    figure.suptitle(title(config, results[0]))
    connections.set_ylabel("connections open")
    connections.legend()
    rtt.set_ylabel("RTT, ms (per second)")
    rtt.set_yscale("log")
    rtt.set_xlabel("seconds since the start of each run")
    rtt.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
