"""``--config FILE``: a TOML file whose keys are the long options of the command.

``hbloop serve --config server.toml`` reads ``max-connections = 20000`` as if
``--max-connections 20000`` had been given, checked by the same code; options given
on the command line win over the file. Keys are the option names without the leading
``--``; underscores may stand for hyphens (``max_connections``). A flag that takes no
value (``--no-reconnect``) is ``true`` or ``false``. An unknown key, a value of the
wrong TOML type or a value the option refuses is an error that names the key.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

# Options that make no sense in a file: --config itself, and --help.
NOT_IN_FILE = frozenset({"config", "help"})

_TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "a table",
    list: "an array",
}

# The TOML types accepted for an option, by the option's argparse ``type``: a
# conversion function for the command line, or None for a plain string.
TomlTypes = Mapping[Callable[[str], Any] | None, tuple[type, ...]]


class ConfigError(Exception):
    """A config file that cannot be read or holds a bad option; the message is one
    line naming the file and the key."""


def option_names(dests: list[str]) -> str:
    """Settings (argparse ``dest``s) as the options that set them: ``--max-connections``."""
    return ", ".join("--" + dest.replace("_", "-") for dest in dests)


def read_table(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def option_defaults(
    parser: argparse.ArgumentParser, table: Mapping[str, Any], path: str, toml_types: TomlTypes
) -> dict[str, Any]:
    """The ``parser.set_defaults()`` that ``table`` (read from ``path``) stands for."""
    options = {
        option[2:]: action
        for action in parser._actions  # argparse keeps no public list of its options
        for option in action.option_strings
        if option.startswith("--") and option[2:] not in NOT_IN_FILE
    }
    defaults: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in table.items():
        name = key.replace("_", "-")
        action = options.get(name)
        if action is None:
            raise ConfigError(
                f"config file {path}: unknown key {key!r} (not an option of {parser.prog})"
            )
        if name in seen:
            raise ConfigError(f"config file {path}: {key!r} and {seen[name]!r} are the same option")
        seen[name] = key
        defaults[action.dest] = _convert(action, value, f"config file {path}: {key}", toml_types)
    return defaults


def _convert(action: argparse.Action, value: Any, where: str, toml_types: TomlTypes) -> Any:
    if action.nargs == 0:  # a flag such as --no-reconnect
        expected: tuple[type, ...] = (bool,)
    else:
        expected = toml_types.get(action.type, (str,))  # type: ignore[arg-type]
    # bool is an int to Python, never to TOML.
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
        # An integer is a number too: "a number" says both.
        wanted = " or ".join(
            _TYPE_NAMES[t] for t in expected if t is not int or float not in expected
        )
        given = _TYPE_NAMES.get(type(value), "a date or time")
        raise ConfigError(f"{where} must be {wanted}, not {given}")
    if action.nargs == 0:
        return action.const if value else action.default
    convert = action.type
    if convert is not None:
        assert callable(convert), f"{where}: options converted by name are not supported"
        try:
            value = convert(str(value))
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where}: {value!r} is not one of {choices}")
    return value
