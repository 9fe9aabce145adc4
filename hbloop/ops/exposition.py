"""hbloop's figures in Prometheus' text exposition format, by prometheus_client: the
series ``hbloop.ops.metrics`` describes, built from the latest ``Report`` on each
scrape. ``MetricsEndpoint`` imports this module when it starts, so that a process
serving no metrics never imports prometheus_client.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from hbloop.core.version import version
from hbloop.net.counters import Count, Figure, Figures, Histogram, Labelled, LabelledLevel
from hbloop.ops.stats import Snapshot

if TYPE_CHECKING:
    from hbloop.ops.metrics import Report

# The content type of what ``exposition``'s function renders.
CONTENT_TYPE = CONTENT_TYPE_LATEST


def _family(
    figure: Figure[Any], name: str, labels: list[str], rows: dict[tuple[str, ...], Any]
) -> Metric:
    """The family of one figure; ``rows`` maps the values of ``labels`` to its value."""
    if isinstance(figure, Labelled):
        kind = GaugeMetricFamily if isinstance(figure, LabelledLevel) else CounterMetricFamily
        labelled = kind(name, figure.help, labels=[*labels, figure.label])
        for values, counts in rows.items():
            for label in figure.values:
                labelled.add_metric([*values, label], counts.get(label, 0))
        return labelled
    if isinstance(figure, Histogram):
        histogram = HistogramMetricFamily(name, figure.help, labels=labels)
        for values, buckets in rows.items():
            bounds = [*map(str, buckets.bounds), "+Inf"]
            cumulative = zip(bounds, accumulate(buckets.counts), strict=True)  # Prometheus'
            histogram.add_metric(list(values), list(cumulative), buckets.sum)
        return histogram
    kind = CounterMetricFamily if isinstance(figure, Count) else GaugeMetricFamily
    family = kind(name, figure.help, labels=labels)
    for values, value in rows.items():
        family.add_metric(list(values), value)
    return family


def _families(
    prefix: str, labels: list[str], rows: dict[tuple[str, ...], Snapshot]
) -> Iterator[Metric]:
    """A family for each figure the snapshots have (presence's only where it is on);
    ``rows`` maps the values of ``labels`` to snapshots."""
    parts: dict[type[Figures], dict[tuple[str, ...], Figures]] = {}
    for values, snapshot in rows.items():
        for part in snapshot.parts():
            parts.setdefault(type(part), {})[values] = part
    for group, by_labels in parts.items():
        for figure in group.figures:
            figure_rows = {key: getattr(part, figure.name) for key, part in by_labels.items()}
            yield _family(figure, prefix + figure.metric, labels, figure_rows)


class _WorkerProcesses:
    """prometheus_client's process figures for each worker process, relabelled as
    ``hbloop_worker_process_*{worker="N"}``."""

    def __init__(self) -> None:
        self._collectors: dict[int, ProcessCollector] = {}

    def collect(self, pids: dict[str, int]) -> Iterator[Metric]:
        self._collectors = {
            pid: self._collectors.get(pid) or ProcessCollector(pid=_constant(pid), registry=None)
            for pid in pids.values()
        }
        merged: dict[str, Metric] = {}
        for worker, pid in pids.items():
            for family in self._collectors[pid].collect():
                name = "hbloop_worker_" + family.name
                target = merged.setdefault(name, Metric(name, family.documentation, family.type))
                for sample in family.samples:
                    target.add_sample(
                        "hbloop_worker_" + sample.name, {"worker": worker}, sample.value
                    )
        yield from merged.values()


def _constant(value: int) -> Callable[[], int]:
    return lambda: value


class _ReportCollector:
    def __init__(self, source: Callable[[], Report]) -> None:
        self.source = source
        self.worker_processes = _WorkerProcesses()

    def collect(self) -> Iterator[Metric]:
        report = self.source()
        build = GaugeMetricFamily(
            "hbloop_build_info", "The running hbloop, always 1.", labels=["version", "python"]
        )
        build.add_metric([version(), platform.python_version()], 1)
        yield build
        yield from _families("hbloop_", [], {(): report.total})
        if not report.supervised:
            return
        workers = GaugeMetricFamily("hbloop_workers", "Worker processes running.")
        workers.add_metric([], len(report.workers))
        yield workers
        restarts = CounterMetricFamily("hbloop_restarts", "Workers restarted after dying.")
        restarts.add_metric([], report.restarts)
        yield restarts
        per_worker: dict[tuple[str, ...], Snapshot] = {
            (worker,): s for worker, s in report.workers.items()
        }
        yield from _families("hbloop_worker_", ["worker"], per_worker)
        yield from self.worker_processes.collect(report.pids)


def exposition(source: Callable[[], Report]) -> Callable[[], bytes]:
    """A function rendering ``source()``'s report, and this process's standard
    figures, in the text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ReportCollector(source))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return lambda: generate_latest(registry)
