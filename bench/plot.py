"""``--plot FILE.png``: connections and RTT percentiles over time (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path

from bench.results import RunResult


def check_available() -> None:
    """Fail before the run, not after it, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit(
            "--plot needs matplotlib: pip install 'hbloop[plot]' (or pip install matplotlib)"
        ) from None


def plot(path: Path, results: list[RunResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib import pyplot

    figure, (connections, rtt) = pyplot.subplots(2, 1, sharex=True, figsize=(10, 7))
    for result in results:
        seconds = [s.second for s in result.seconds]
        connections.plot(seconds, [s.open for s in result.seconds], label=result.server)
        for key, style in (("p50", ":"), ("p99", "-")):
            values = [s.rtt_ms[key] for s in result.seconds]
            rtt.plot(seconds, values, style, label=f"{result.server} {key}")
    connections.set_ylabel("connections open")
    connections.legend()
    rtt.set_ylabel("RTT, ms (per second)")
    rtt.set_yscale("log")
    rtt.set_xlabel("seconds since the start of each run")
    rtt.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
