"""The option table: each setting of each command is declared once, as a field of its
settings dataclass (``hbloop.cli.settings``), and that one declaration makes both the
command-line flag ``--max-peer-rate`` and the config-file key ``max-peer-rate``.

A field's ``Option`` holds its ``Kind``: how a value is read from text, which TOML
types a file may give it, and the range it must lie in. A flag's text and a key's
value go through the same ``Kind.parse``, so they take the same values and are refused
with the same one-line message, naming the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from hbloop.core.policy import TcpKeepalive
from hbloop.presence.redis_link import RedisAddress, parse_url

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

# The longest duration any setting takes, in seconds (about 11.6 days). No heartbeat,
# deadline, grace or reporting period needs more, and every duration below it fits
# what the layers beneath accept: the wire's unsigned 32-bit milliseconds (4,294,967
# s), TCP_USER_TIMEOUT's and epoll_wait's signed 32-bit milliseconds (2,147,483 s).
# A larger one (1e308 in a file) would overflow one of them far from the setting.
MAX_SECONDS = 1_000_000

# The largest count or rate: listen() takes its backlog as a C int and refuses more
# (OverflowError), and no count of connections, frames or handshakes a second comes
# near it.
MAX_COUNT = 2**31 - 1

# The most worker processes per CPU this process may run on. A worker is a whole
# single-threaded server: one per CPU uses the machine, a few more absorb a worker
# that blocks now and then (a TLS handshake, a log write), and beyond that workers
# only split the same CPUs while each costs an interpreter's memory and descriptors.
WORKERS_PER_CPU = 4
MAX_WORKERS = len(os.sched_getaffinity(0)) * WORKERS_PER_CPU

# ``--workers auto``, resolved by the settings once the connections wanted are known.
AUTO_WORKERS = 0

# The most workers ``auto`` starts to give ``--max-connections`` enough descriptors
# (each process has the open-files limit to itself): an interpreter costs about 20 MB,
# so 256 workers are 5 GB, and at 20,000 descriptors each they hold 5 million.
MAX_AUTO_WORKERS = 256

# The key under which a dataclass field keeps its Option.
OPTION = "hbloop.option"


def number_text(value: float) -> str:
    """1000000 rather than 1e+06, 0.5 rather than 0.500000."""
    return str(int(value)) if value == int(value) else f"{value:g}"


class Kind(Generic[T_co]):
    """How a setting is read: from a flag's text, or from a config file's TOML value."""

    metavar: ClassVar[str | None] = None
    #: The TOML value types a config file may give; checked before ``parse``.
    toml_types: ClassVar[tuple[type, ...]] = (str,)
    #: For a fixed set of words: the words, which --help lists.
    choices: tuple[str, ...] | None = None

    def parse(self, text: str) -> T_co:
        """The value of ``text``; ValueError whose message says what is wrong with it
        and what is allowed, as in "'-1' must be > 0 and at most 1000000"."""
        raise NotImplementedError

    def from_toml(self, value: Any) -> T_co:
        """The value of a TOML value of one of ``toml_types``: the same as its text."""
        return self.parse(str(value))

    def show(self, value: Any) -> str:
        """A value as a user would write it, for --help."""
        return str(value)


class Text(Kind[str]):
    def parse(self, text: str) -> str:
        return text


class File(Kind[Path]):
    metavar = "FILE"

    def parse(self, text: str) -> Path:
        return Path(text)


class Flag(Kind[bool]):
    """A flag that takes no value (``--no-reconnect``): ``true`` or ``false`` in a file."""

    toml_types = (bool,)

    def parse(self, text: str) -> bool:
        raise AssertionError("a flag has no text to parse")

    def from_toml(self, value: Any) -> bool:
        return bool(value)


@dataclass(frozen=True)
class Number(Kind[float]):
    """A finite number above ``least`` (or at least it, with ``inclusive``) and at
    most ``most``: a duration in seconds unless the option says otherwise."""

    least: float = 0.0
    inclusive: bool = False
    most: float = MAX_SECONDS

    toml_types = (int, float)
    metavar = "S"

    def parse(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        above = value >= self.least if self.inclusive else value > self.least
        if not (math.isfinite(value) and above and value <= self.most):
            raise ValueError(f"{text!r} must be {self.allowed}")
        return value

    @property
    def allowed(self) -> str:
        least = f"{'>=' if self.inclusive else '>'} {number_text(self.least)}"
        return f"{least} and at most {number_text(self.most)}"

    def show(self, value: Any) -> str:
        return number_text(value)


@dataclass(frozen=True)
class Count(Kind[int]):
    """A whole number from ``least`` to ``most``."""

    least: int = 1
    most: int = MAX_COUNT

    toml_types: ClassVar[tuple[type, ...]] = (int,)
    metavar = "N"

    def parse(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(self.not_whole(text)) from None
        if not self.least <= value <= self.most:
            raise ValueError(self.out_of_range(text))
        return value

    def not_whole(self, text: str) -> str:
        return f"{text!r} is not a whole number"

    def out_of_range(self, text: str) -> str:
        return f"{text!r} must be at least {self.least} and at most {self.most}"


@dataclass(frozen=True)
class Port(Count):
    least: int = 0
    most: int = 65535

    metavar = "P"

    def not_whole(self, text: str) -> str:
        return f"{text!r} is not a port number"

    def out_of_range(self, text: str) -> str:
        return f"port {text} is out of range {self.least}-{self.most}"


@dataclass(frozen=True)
class Workers(Count):
    """A number of worker processes, or ``auto`` (AUTO_WORKERS): one per CPU this
    process may use, or as many as ``--max-connections`` needs descriptors for."""

    most: int = MAX_WORKERS

    toml_types = (int, str)
    metavar = "N|auto"

    def parse(self, text: str) -> int:
        return AUTO_WORKERS if text == "auto" else super().parse(text)

    def not_whole(self, text: str) -> str:
        return f"{text!r} is neither a whole number nor auto"

    def out_of_range(self, text: str) -> str:
        return f"{super().out_of_range(text)} ({WORKERS_PER_CPU} per CPU), or auto"


class Keepalive(Kind[TcpKeepalive]):
    metavar = "IDLE,INTVL,CNT"

    def parse(self, text: str) -> TcpKeepalive:
        try:
            idle, interval, count = (int(part) for part in text.split(","))
        except ValueError:
            raise ValueError(f"{text!r} is not IDLE,INTERVAL,COUNT (e.g. 60,10,5)") from None
        try:
            return TcpKeepalive(idle, interval, count)
        except ValueError as exc:  # out of the kernel's ranges
            raise ValueError(f"{text!r}: {exc}") from None

    def show(self, value: Any) -> str:
        return f"{value.idle},{value.interval},{value.count}"


class RedisUrl(Kind[RedisAddress]):
    metavar = "URL"

    def parse(self, text: str) -> RedisAddress:
        return parse_url(text)


class Choice(Kind[T_co]):
    """One of a fixed set of words, each standing for a value (itself, or an enum's)."""

    def __init__(self, values: Mapping[str, T_co]) -> None:
        self.values = dict(values)
        self.words = tuple(self.values)
        self.choices = self.words

    def parse(self, text: str) -> T_co:
        if text not in self.values:
            raise ValueError(f"{text!r} is not one of {', '.join(self.words)}")
        return self.values[text]

    def show(self, value: Any) -> str:
        return next(word for word, each in self.values.items() if each == value)


class Words(Kind[tuple[str, ...]]):
    """A command line: its words as given after ``--``, or split as a shell would."""

    def parse(self, text: str) -> tuple[str, ...]:
        return tuple(shlex.split(text))


class CaseName(Kind[str]):
    """A checker's case, by its number in the report (``17``) or by the ID of the
    statement it tests (``T8``: every case of that statement); which names match a case
    is the checker's to say (``hbloop.check.numbered``)."""

    metavar = "ID_OR_STATEMENT"
    toml_types = (str, int)

    def parse(self, text: str) -> str:
        if not (text.isascii() and text.isalnum()):
            raise ValueError(f"{text!r} is neither a case number nor a statement ID (17, T8)")
        return text


def words(choices: tuple[str, ...]) -> Choice[str]:
    """A choice of words that stand for themselves."""
    return Choice({word: word for word in choices})


class Target(Kind[tuple[str, int]]):
    """HOST:PORT (a host with colons, IPv6, in brackets)."""

    metavar = "HOST:PORT"

    def parse(self, text: str) -> tuple[str, int]:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not HOST:PORT")
        return host.strip("[]"), Port().parse(port)


@dataclass(frozen=True)
class Option:
    """The flag and config key of a settings field: ``--NAME`` and ``NAME``."""

    kind: Kind[Any]
    help: str
    name: str = ""  # when it is not the field's name with hyphens ("from": ``start``)
    short: str | None = None  # "-n"
    metavar: str | None = None  # when not the kind's
    group: str | None = None  # the heading it is listed under in --help
    positional: bool = False  # an argument, not a flag: not a key either
    many: bool = False  # a positional that takes every remaining word (after ``--``)
    repeat: bool = False  # a flag given any number of times; its key, an array
    in_file: bool = True  # False: a flag without a key (--config itself)
    default_text: str | None = None  # --help's default where the field's is a stand-in


def option(default: T, kind: Kind[T], help: str, **more: Any) -> T:
    """A settings field that is an option, with its default."""
    field: T = dataclasses.field(default=default, metadata={OPTION: Option(kind, help, **more)})
    return field


def repeated(kind: Kind[T], help: str, **more: Any) -> tuple[T, ...]:
    """A settings field that is a flag given any number of times (a key: an array),
    each value read by ``kind``; none by default."""
    field: tuple[T, ...] = dataclasses.field(
        default=(), metadata={OPTION: Option(kind, help, repeat=True, **more)}
    )
    return field


def required(kind: Kind[T], help: str, **more: Any) -> T:
    """A settings field that is an option without a default: it must be given."""
    field: T = dataclasses.field(metadata={OPTION: Option(kind, help, **more)})
    return field


@dataclass(frozen=True)
class Entry:
    """One row of a command's option table: a field of its settings and its Option."""

    field: str
    option: Option
    default: Any  # dataclasses.MISSING for a required option

    @property
    def name(self) -> str:
        """The config key, and the flag without its ``--``."""
        return self.option.name or self.field.replace("_", "-")

    @property
    def flag(self) -> str:
        """``--name``; for an argument, how --help shows it (HOST:PORT)."""
        if self.option.positional:
            return self.option.metavar or self.option.kind.metavar or self.name
        return f"--{self.name}"

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def is_key(self) -> bool:
        return self.option.in_file and not self.option.positional

    def default_text(self) -> str | None:
        """The default --help shows, or None when there is none worth showing."""
        if self.option.default_text is not None:
            return self.option.default_text
        if self.required or self.default is None or self.default is False:
            return None
        if self.option.repeat and not self.default:
            return None
        return self.option.kind.show(self.default)


def table(settings: type) -> list[Entry]:
    """The options of a settings dataclass, in field order."""
    return [
        Entry(field.name, field.metadata[OPTION], field.default)
        for field in dataclasses.fields(settings)
        if OPTION in field.metadata
    ]
