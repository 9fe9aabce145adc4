"""Every figure is declared once (``hbloop.net.counters`` and the Figures classes beside
it), and the snapshot, its JSON, the total of several workers, the stats line and
/metrics follow from the declarations. These tests take the figures from there, never
from a list of their own, so a figure added tomorrow is checked by them too."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hbloop.core.histogram import Buckets
from hbloop.core.wire import FrameType
from hbloop.net.counters import (
    Count,
    Figure,
    Figures,
    Gauge,
    Histogram,
    Labelled,
    LabelledLevel,
    Seconds,
    ServerStats,
)
from hbloop.ops.stats import LoopFigures, Snapshot, combine, retired, summary
from hbloop.presence.node import PresenceFigures

from conftest import http_get, metrics_address, wait_for_metrics


def everything() -> Snapshot:
    """A snapshot with every set of figures a snapshot can hold, all zero."""
    return Snapshot(ServerStats(), LoopFigures(), PresenceFigures())


def declared(snapshot: Snapshot) -> list[tuple[Figures, Figure[Any]]]:
    return [(part, figure) for part in snapshot.parts() for figure in part.figures]


def filled(seed: int) -> Snapshot:
    """A snapshot in which each figure has a value of its own, other for each seed."""
    snapshot = everything()
    for n, (part, figure) in enumerate(declared(snapshot), start=1):
        value: Any = seed * 1000 + n
        if isinstance(figure, Labelled):
            value = Counter({figure.values[0]: value, figure.values[-1]: seed})
        elif isinstance(figure, Histogram):
            value = Buckets(figure.bounds)
            for bound in figure.bounds[seed : seed + n]:
                value.observe(bound)
        elif isinstance(figure, Seconds):
            value = value / 1e6
        setattr(part, figure.name, value)
    return snapshot


def test_a_snapshot_crosses_the_pipe_whole():
    snapshot = filled(1)
    line = snapshot.encode()
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert Snapshot.decode(line).to_json() == snapshot.to_json()
    # Flat, as earlier supervisors read it: one key per figure, presence's apart.
    data = json.loads(line)
    outer = [figure.key for part in (snapshot.server, snapshot.loop) for figure in part.figures]
    assert sorted(data) == sorted([*outer, "presence"])
    assert sorted(data["presence"]) == sorted(f.key for f in PresenceFigures.figures)
    # A worker of another hbloop (SIGHUP after an upgrade): what this one does not
    # declare is ignored, and what the worker did not send is zero.
    del data["accepted"]
    data["figure_of_the_future"] = 7
    read = Snapshot.decode(json.dumps(data).encode())
    assert read.server.accepted == 0
    assert read.server.shed == snapshot.server.shed
    assert Snapshot.decode(b'{"connections": 3}').presence is None


def _combined(figure: Figure[Any], values: list[Any]) -> Any:
    """The total of ``values`` as ``figure.combine`` names it, computed here."""
    match figure.combine:
        case "sum":
            return sum(values)
        case "max":
            return max(values)
        case "labelwise sum":
            return sum(values, Counter())
        case "bucketwise sum":
            return {
                "counts": [sum(n) for n in zip(*(v.counts for v in values), strict=True)],
                "sum": pytest.approx(sum(v.sum for v in values)),
            }
    raise AssertionError(f"{figure.name}: unknown combination {figure.combine!r}")


def _comparable(value: Any) -> Any:
    return {"counts": value.counts, "sum": value.sum} if isinstance(value, Buckets) else value


def test_the_total_of_two_workers_combines_each_figure_as_declared():
    a, b = filled(1), filled(2)
    total = combine([a, b])
    for (part, figure), (mine, _), (other, _) in zip(
        declared(total), declared(a), declared(b), strict=True
    ):
        values = [getattr(mine, figure.name), getattr(other, figure.name)]
        assert _comparable(getattr(part, figure.name)) == _combined(figure, values), figure.name
    # Presence's figures are in the total if any worker has them.
    with_presence = combine([a, Snapshot(b.server, b.loop)]).presence
    assert with_presence is not None and a.presence is not None
    assert with_presence.to_json() == a.presence.to_json()
    assert combine([Snapshot(a.server, a.loop)]).presence is None


def test_an_exited_worker_keeps_its_counters_and_drops_its_gauges():
    snapshot = filled(1)
    gone = retired(snapshot)
    for (part, figure), (was, _) in zip(declared(gone), declared(snapshot), strict=True):
        value, before = _comparable(getattr(part, figure.name)), getattr(was, figure.name)
        expected = _comparable(before if figure.lasting else figure.zero())
        assert value == expected, figure.name
        if isinstance(figure, Count | Labelled | Histogram):
            # Counters last; a labelled level is a state, gone with its worker.
            assert figure.lasting != isinstance(figure, LabelledLevel), figure.name
    # The levels go; the peak is the most connections ever, exited workers' included.
    lasting = {figure.name: figure.lasting for _, figure in declared(snapshot)}
    assert not lasting["connections"] and not lasting["lag_max"] and lasting["peak"]


def test_the_stats_line_keeps_its_format():
    """The line of README's quick start, and presence's figures after it."""
    snapshot = everything()
    server = snapshot.server
    server.connections = server.peak = server.accepted = 2
    server.frames_in = server.frames_out = 3
    server.bytes_in = server.bytes_out = 38
    server.heartbeats = 1
    snapshot.loop.iterations = 8
    snapshot.loop.lag_max = 0.0011
    assert summary(Snapshot(server, snapshot.loop)) == (
        "conns=2 peak=2 accepted=2 closed={} shed=0 in=3f/38B out=3f/38B hb=1 iters=8 lag_max=1.1ms"
    )
    server.closed.update(timeout=2, peer_closed=1)
    assert "closed={peer_closed:1,timeout:2}" in summary(snapshot)
    assert summary(snapshot).endswith(
        "redis_up=0 members=0 backlog=0 joins=0 leaves=0 resyncs=0 overflows=0"
    )


def _line_keys(parts: tuple[Figures, ...]) -> list[str]:
    keys = [figure.line for part in parts for figure in part.figures if figure.line]
    return list(dict.fromkeys(keys))


# The families of /metrics that are not figures of a snapshot.
NOT_FIGURES = {"hbloop_build_info", "hbloop_workers", "hbloop_restarts"}
WORKER_PROCESS = "hbloop_worker_process_"


@pytest.mark.parametrize("presence", [False, True], ids=["alone", "presence"])
def test_every_figure_is_served_for_the_total_and_each_worker(
    request, serve, raw_peer, prefix, presence
):
    """Two workers: /metrics has each declared figure as a total and per worker, the
    total combined from the workers' as declared, and nothing undeclared; the
    supervisor's stats line has each declared field, in order."""
    options = ["--workers", "2", "--metrics-port", "0", "--stats-interval", "0.5"]
    expected = {"hbloop_connections": 1}
    if presence:
        redis = request.getfixturevalue("redis_server")
        options += ["--redis", redis.url, "--redis-prefix", prefix]
        expected.update({"hbloop_presence_redis_up": 2, "hbloop_presence_members": 1})
    server = serve(*options)
    metrics = metrics_address(server)
    assert raw_peer(server.address).hello("counted", 1000)[0] == FrameType.WELCOME
    wait_for_metrics(metrics, expected)

    status, text = http_get(metrics, "/metrics")
    assert status == 200
    families = {family.name: family for family in text_string_to_metric_families(text)}
    parts = everything().parts() if presence else Snapshot(ServerStats(), LoopFigures()).parts()
    figures = [figure for part in parts for figure in part.figures]
    kinds = {
        Count: "counter",
        Labelled: "counter",
        LabelledLevel: "gauge",
        Gauge: "gauge",
        Seconds: "gauge",
    }
    for figure in figures:
        total = families["hbloop_" + figure.metric]
        per_worker = families["hbloop_worker_" + figure.metric]
        assert total.type == kinds.get(type(figure), "histogram"), figure.metric
        assert total.documentation == figure.help
        assert {sample.labels["worker"] for sample in per_worker.samples} == {"1", "2"}
        if isinstance(figure, Labelled):
            served = {sample.labels[figure.label] for sample in total.samples}
            assert served == set(figure.values), figure.metric
        workers: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
        for sample in per_worker.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "worker"))
            key = (sample.name.removeprefix("hbloop_worker_"), labels)
            workers.setdefault(key, []).append(sample.value)
        for sample in total.samples:
            labels = tuple(sorted(sample.labels.items()))
            values = workers[sample.name.removeprefix("hbloop_"), labels]
            combined = max(values) if figure.combine == "max" else sum(values)
            assert sample.value == pytest.approx(combined), (sample, values)
    declared_names = {head + f.metric for f in figures for head in ("hbloop_", "hbloop_worker_")}
    served_names = {
        name
        for name in families
        if name.startswith("hbloop_") and not name.startswith(WORKER_PROCESS)
    }
    assert served_names - NOT_FIGURES == declared_names

    line = server.wait_line(r"stats total workers=2 (.*)").group(1)
    assert re.findall(r"(\w+)=", line) == _line_keys(parts)
