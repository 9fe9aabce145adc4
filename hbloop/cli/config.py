"""``--config FILE``: a TOML file whose keys are the long options of the command.

``hbloop serve --config server.toml`` reads ``max-connections = 20000`` as if
``--max-connections 20000`` had been given: each key is an entry of the option table
(``hbloop.cli.options``), read by the same ``Kind`` as its flag. Options given on the
command line win over the file. Keys are the option names without the leading
``--``; underscores may stand for hyphens (``max_connections``). A flag that takes no
value (``--no-reconnect``) is ``true`` or ``false``. An unknown key, a value of the
wrong TOML type or a value the option refuses is an error that names the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from hbloop.cli.options import Entry

_TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "a table",
    list: "an array",
}
# What a value is called when it is of the wrong type: 7878.0 for a port is a float.
_GIVEN_NAMES = {**_TYPE_NAMES, float: "a float"}


class ConfigError(Exception):
    """A config file that cannot be read or holds a bad option; the message is one
    line naming the file and the key."""


def read_table(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def file_values(
    entries: Sequence[Entry], table: Mapping[str, Any], path: str, prog: str
) -> dict[str, Any]:
    """The settings (by field name) that ``table``, read from ``path``, gives the
    command ``prog`` whose options are ``entries``."""
    keys = {entry.name: entry for entry in entries if entry.is_key}
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in table.items():
        name = key.replace("_", "-")
        entry = keys.get(name)
        if entry is None:
            raise ConfigError(f"config file {path}: unknown key {key!r} (not an option of {prog})")
        if name in seen:
            raise ConfigError(f"config file {path}: {key!r} and {seen[name]!r} are the same option")
        seen[name] = key
        values[entry.field] = _convert(entry, value, f"config file {path}: {key}")
    return values


def _convert(entry: Entry, value: Any, where: str) -> Any:
    if not entry.option.repeat:
        return _convert_one(entry, value, where)
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be an array, not {_given(value)}")
    return tuple(_convert_one(entry, each, where) for each in value)


def _given(value: Any) -> str:
    return _GIVEN_NAMES.get(type(value), "a date or time")


def _convert_one(entry: Entry, value: Any, where: str) -> Any:
    kind = entry.option.kind
    expected = kind.toml_types
    # bool is an int to Python, never to TOML.
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
        # An integer is a number too: "a number" says both.
        wanted = " or ".join(
            _TYPE_NAMES[t] for t in expected if t is not int or float not in expected
        )
        raise ConfigError(f"{where} must be {wanted}, not {_given(value)}")
    try:
        return kind.from_toml(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
