"""The server's figures, each declared once, and the counters the hot path bumps.

A figure (a counter, a gauge, a labelled counter or a histogram) is one class attribute
of a ``Figures`` class, declared with its kind (``Count``, ``Gauge``, ``Seconds``,
``Labelled``, ``Histogram``), its metric name after ``hbloop_``, its help text, how it
combines across workers, and its key in the stats line, if it has one. Everything else
is derived from that declaration:

* the hot-path object: the class gets ``__slots__`` with one plain attribute per
  figure (an int, a float, a ``Counter``, a ``Buckets``), so that bumping one is
  ``stats.accepted += 1`` and costs what it costs on a hand-written slotted class;
* the snapshot: ``copy()``, a detached instance of the same class (so typed), and
  ``to_json()`` / ``from_json()`` across the worker's pipe to its supervisor;
* in ``hbloop.ops.stats``: the total of several workers (``Figure.add``), what an
  exited worker still counts (``Figure.lasting``), the stats line (``Figure.line``,
  ``Figure.show``); in ``hbloop.ops.metrics``: the ``/metrics`` families.

Adding a figure is one line in its class, plus the line that bumps it. A class lists
its own figures first, then those of its base (for ``ServerStats``: the server's,
then the traffic of ``IoCounters``); the stats line follows that order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Self, TypeVar

from hbloop.core.histogram import Buckets
from hbloop.core.session import HEARTBEAT_BUCKETS, HEARTBEAT_SIZE, Reason, fold_quick

V = TypeVar("V")

Combine = Literal["sum", "max", "labelwise sum", "bucketwise sum"]


class Figure(ABC, Generic[V]):
    """A figure's declaration. ``metric`` is its name after ``hbloop_`` (a counter's
    ``_total`` is added by the exposition), ``help`` its HELP text, ``line`` its key
    in the stats line (None: not shown; figures with the same key share it, as
    ``in=3f/38B``), ``key`` its name in the snapshot's JSON if not the attribute's."""

    #: How several workers' values combine: sum, max, labelwise or bucketwise sum.
    combine: Combine
    #: Kept in the totals when its worker exits (a counter, a peak), or gone (a level).
    lasting = True

    def __init__(self, metric: str, help: str, line: str | None = None, key: str = "") -> None:
        self.metric = metric
        self.help = help
        self.line = line
        self.key = key
        self.name = ""  # the attribute, set by the class that declares it

    @abstractmethod
    def zero(self) -> V: ...

    def copy(self, value: V) -> V:
        """``value``, detached from the object that keeps counting."""
        return value

    @abstractmethod
    def add(self, total: V, value: V) -> V:
        """``total`` with one more worker's ``value`` (``total`` is the caller's)."""

    def encode(self, value: V) -> Any:
        return value

    @abstractmethod
    def decode(self, data: Any) -> V: ...

    def show(self, value: V) -> str:
        """The value in the stats line."""
        return str(value)

    if TYPE_CHECKING:
        # What an instance's attribute holds: the metaclass replaces each declaration
        # by a slot, so these are never called.
        def __get__(self, instance: Figures, owner: type[Figures]) -> V: ...
        def __set__(self, instance: Figures, value: V) -> None: ...


class Count(Figure[int]):
    """A counter: summed across workers, and kept when a worker exits. ``unit`` follows
    its value in the stats line."""

    combine = "sum"

    def __init__(self, metric: str, help: str, line: str | None = None, unit: str = "") -> None:
        super().__init__(metric, help, line)
        self.unit = unit

    def zero(self) -> int:
        return 0

    def add(self, total: int, value: int) -> int:
        return total + value

    def decode(self, data: Any) -> int:
        return int(data)

    def show(self, value: int) -> str:
        return f"{value}{self.unit}"


class Gauge(Figure[int]):
    """A level: the workers' sum, zero for a worker that exited; or, with ``peak``, a
    high-water mark: the largest of the workers', kept when a worker exits."""

    def __init__(self, metric: str, help: str, line: str | None = None, peak: bool = False) -> None:
        super().__init__(metric, help, line)
        self.combine: Combine = "max" if peak else "sum"
        self.lasting = peak

    def zero(self) -> int:
        return 0

    def add(self, total: int, value: int) -> int:
        return max(total, value) if self.combine == "max" else total + value

    def decode(self, data: Any) -> int:
        return int(data)


class Seconds(Figure[float]):
    """A worst lateness, s: the largest of the workers'; zero for a worker that exited.
    The stats line shows it in milliseconds."""

    combine = "max"
    lasting = False

    def zero(self) -> float:
        return 0.0

    def add(self, total: float, value: float) -> float:
        return max(total, value)

    def decode(self, data: Any) -> float:
        return float(data)

    def show(self, value: float) -> str:
        return f"{value * 1000:.1f}ms"


class Labelled(Figure[Counter[str]]):
    """A counter by ``label``: added up label by label. /metrics shows every one of
    ``values``, zeros included; the stats line ``{value:n,...}``."""

    combine = "labelwise sum"

    def __init__(
        self, metric: str, help: str, label: str, values: Iterable[str], line: str | None = None
    ) -> None:
        super().__init__(metric, help, line)
        self.label = label
        self.values = tuple(values)

    def zero(self) -> Counter[str]:
        return Counter()

    def copy(self, value: Counter[str]) -> Counter[str]:
        return value.copy()

    def add(self, total: Counter[str], value: Counter[str]) -> Counter[str]:
        total.update(value)
        return total

    def encode(self, value: Counter[str]) -> dict[str, int]:
        return dict(value)

    def decode(self, data: Any) -> Counter[str]:
        return Counter(data)

    def show(self, value: Counter[str]) -> str:
        return "{" + ",".join(f"{label}:{n}" for label, n in sorted(value.items())) + "}"


class LabelledLevel(Labelled):
    """A level by ``label`` (a state: 1 under the present one): added up over the
    workers, 0 for a worker that exited; /metrics shows it as a gauge."""

    lasting = False


class Histogram(Figure[Buckets]):
    """A histogram with upper ``bounds``: added up bucket by bucket."""

    combine = "bucketwise sum"

    def __init__(self, metric: str, help: str, bounds: tuple[float, ...], key: str = "") -> None:
        super().__init__(metric, help, key=key)
        self.bounds = bounds

    def zero(self) -> Buckets:
        return Buckets(self.bounds)

    def copy(self, value: Buckets) -> Buckets:
        return value.copy()

    def add(self, total: Buckets, value: Buckets) -> Buckets:
        total.add(value)
        return total

    def encode(self, value: Buckets) -> dict[str, Any]:
        return value.to_json()

    def decode(self, data: Any) -> Buckets:
        return Buckets.from_json(data)


class _Declared(type):
    """Turns the ``Figure`` attributes of a class body into ``__slots__``."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> _Declared:
        own = [(attr, value) for attr, value in namespace.items() if isinstance(value, Figure)]
        for attr, figure in own:
            del namespace[attr]
            figure.name = attr
            figure.key = figure.key or attr
        # Plain slots the class lists itself (counts it publishes through its figures)
        # come first.
        namespace["__slots__"] = (*namespace.get("__slots__", ()), *(attr for attr, _ in own))
        inherited = [f for base in bases for f in getattr(base, "figures", ())]
        namespace["figures"] = (*(figure for _, figure in own), *inherited)
        return super().__new__(mcs, name, bases, namespace)


class Figures(metaclass=_Declared):
    """A set of figures; subclasses declare them as class attributes."""

    figures: ClassVar[tuple[Figure[Any], ...]] = ()

    def __init__(self) -> None:
        for figure in self.figures:
            setattr(self, figure.name, figure.zero())

    def copy(self) -> Self:
        """A snapshot: the values now, which later bumps do not change."""
        copy = type(self)()
        for figure in self.figures:
            setattr(copy, figure.name, figure.copy(getattr(self, figure.name)))
        return copy

    def to_json(self) -> dict[str, Any]:
        return {f.key: f.encode(getattr(self, f.name)) for f in self.figures}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """The figures ``to_json`` wrote. A figure the writer did not know (a worker
        of an earlier hbloop) is zero, and one this hbloop does not know is ignored,
        so that a supervisor reads workers that a SIGHUP started from a newer one."""
        figures = cls()
        for figure in cls.figures:
            if figure.key in data:
                setattr(figures, figure.name, figure.decode(data[figure.key]))
        return figures


class IoCounters(Figures):
    """Traffic totals, shared by every channel that reports into them; the sessions
    count heartbeats and the silence each ended.

    The sessions' fast path counts a heartbeat in one plain integer, ``quick_pings``
    or ``quick_pongs`` (``hbloop.core.session.SessionCounters``), and the channel's
    skips ``bytes_in`` and ``bytes_out`` for it: ``copy()`` and ``to_json()``, the
    scrapes, publish them first (``settle``). Read a live figure through ``copy()``.
    """

    __slots__ = ("quick_pings", "quick_pongs")

    frames_in = Count("in_frames", "Frames received.", line="in", unit="f")
    bytes_in = Count("in_bytes", "Bytes received.", line="in", unit="B")
    frames_out = Count("out_frames", "Frames sent.", line="out", unit="f")
    bytes_out = Count("out_bytes", "Bytes sent.", line="out", unit="B")
    heartbeats = Count("heartbeats", "PING and PONG frames received.", line="hb")
    heartbeat_intervals = Histogram(
        "heartbeat_interval_seconds",
        "Silence each PING or PONG received ended: time since the peer's previous frame.",
        HEARTBEAT_BUCKETS,
        key="heartbeat_interval",  # as earlier supervisors read it
    )

    def __init__(self) -> None:
        super().__init__()
        self.quick_pings = self.quick_pongs = 0

    def settle(self) -> None:
        """Publish the fast path's heartbeats: frames, heartbeats, the bytes of the
        reads that carried them and of the PONGs that answered the PINGs."""
        pongs_sent = self.quick_pings * HEARTBEAT_SIZE
        self.bytes_in += fold_quick(self) * HEARTBEAT_SIZE
        self.bytes_out += pongs_sent

    def copy(self) -> Self:
        self.settle()
        return super().copy()

    def to_json(self) -> dict[str, Any]:
        self.settle()
        return super().to_json()


# The checks that refuse a HELLO (hbloop.auth's ``Refusal.check``): the labels of
# ``auth_refused``.
AUTH_CHECKS = ("token", "certificate", "hook")


class ServerStats(IoCounters):
    """A server's figures, bumped by the server and its peers' channels and sessions."""

    connections = Gauge("connections", "Connections past the handshake, now.", line="conns")
    peak = Gauge("connections_peak", "Most connections at once.", line="peak", peak=True)
    accepted = Count("accepted", "Sockets accepted, handshaken or not.", line="accepted")
    draining = Gauge(
        "draining",
        "Server processes that have stopped accepting and are closing their peers (1 each).",
    )
    closed = Labelled(
        "closed",
        "Connections closed, by reason.",
        label="reason",
        values=(reason.value for reason in Reason),
        line="closed",
    )
    shed = Count(
        "shed",
        "Sockets accepted and refused at once: out of descriptors, or too many handshakes.",
        line="shed",
    )
    auth_refused = Labelled(
        "auth_refused",
        "HELLOs refused UNAUTHORIZED, by the check that refused them.",
        label="check",
        values=AUTH_CHECKS,
    )
    tls_handshakes = Count("tls_handshakes", "TLS handshakes completed.")
    tls_handshakes_refused = Count(
        "tls_handshakes_refused", "TLS connections closed at accept: over --tls-handshake-rate."
    )
    tls_handshakes_failed = Count(
        "tls_handshakes_failed", "TLS handshakes that failed, plain text on the TLS port included."
    )
