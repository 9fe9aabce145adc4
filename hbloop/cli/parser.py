"""The ``hbloop`` command line, generated from the option table, and the settings of a
command line: its flags over its ``--config`` file over the defaults."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from hbloop.cli.config import file_values, read_table
from hbloop.cli.errors import EXIT_USAGE, UsageError
from hbloop.cli.options import Entry, Flag, table
from hbloop.cli.settings import COMMANDS, COMMON, Settings
from hbloop.core.version import version


class _Version(argparse.Action):
    """``--version``: argparse's own, but with the version read only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings,
            dest=argparse.SUPPRESS,
            default=argparse.SUPPRESS,
            nargs=0,
            help="show program's version number and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> NoReturn:
        print(f"hbloop {version()}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit code 2; or, with
    ``raise_errors`` (a SIGHUP reload, which logs it and carries on), UsageError."""

    commands: Mapping[str, _Parser]  # the subcommands' parsers, by name
    raise_errors = False

    def error(self, message: str) -> NoReturn:
        message = f"{message} (see {self.prog} --help)"
        if self.raise_errors:
            raise UsageError(message)
        self.exit(EXIT_USAGE, f"hbloop: error: {message}\n")


def build_parser(raise_errors: bool = False) -> _Parser:
    """Every command's flags, from its settings class. Each option is left out of the
    result unless given (``argparse.SUPPRESS``): defaults are the settings' own, and a
    config file fills in what the command line does not say."""
    parser = _Parser(
        prog="hbloop",
        description="TCP heartbeat server and client.",
        epilog="Exit codes: 0 success, 1 failure at run time, 2 usage or configuration error.",
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    parser.commands = commands.choices
    for settings in COMMANDS:
        command = commands.add_parser(
            settings.command, help=settings.summary, description=settings.summary
        )
        _add_options(command, table(settings))
    for each in (parser, *parser.commands.values()):
        each.raise_errors = raise_errors
    return parser


def _add_options(parser: argparse.ArgumentParser, entries: list[Entry]) -> None:
    groups: dict[str | None, Any] = {None: parser}
    example = config_example(entries)
    # The command's own options first, those it shares with every command last.
    for entry in sorted(entries, key=_listed):
        option, kind = entry.option, entry.option.kind
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        help = option.help.replace("{example}", example)
        default = entry.default_text()
        if default is not None:
            help += f" (default: {default})"
        more: dict[str, Any] = {"help": help, "default": argparse.SUPPRESS}
        if isinstance(kind, Flag):
            more["action"] = "store_true"
        elif kind.choices is not None:
            more["choices"] = kind.choices
        else:
            more["metavar"] = option.metavar or kind.metavar
        if option.repeat:
            more["action"] = "append"
        if option.positional:
            names = [entry.field]
            more["nargs"] = "*" if option.many else None if entry.required else "?"
        else:
            names = [*([option.short] if option.short else []), entry.flag]
            more["dest"] = entry.field
        groups[option.group].add_argument(*names, **more)


def _listed(entry: Entry) -> tuple[bool, bool]:
    return entry.option.group is not None, entry.option.group == COMMON


def config_example(entries: list[Entry]) -> str:
    """A line of a config file for --config's help, with a key this command takes: its
    first number with a default, else its first key with one."""
    keys = [e for e in entries if e.is_key and e.default_text() and not e.option.default_text]
    entry = next((e for e in keys if int in e.option.kind.toml_types), keys[0])
    value = entry.default_text()
    quoted = entry.option.kind.toml_types == (str,)
    return f'{entry.name} = "{value}"' if quoted else f"{entry.name} = {value}"


def parse(argv: Sequence[str] | None = None, raise_errors: bool = False) -> Settings:
    """The settings of a command line (``sys.argv[1:]`` by default). A bad option
    exits as ``build_parser(raise_errors)`` says; a bad config file raises ConfigError,
    inconsistent settings UsageError."""
    command_line = tuple(sys.argv[1:] if argv is None else argv)
    parser = build_parser(raise_errors)
    given = vars(parser.parse_args(command_line))
    settings = next(s for s in COMMANDS if s.command == given["command"])
    command = parser.commands[settings.command]
    entries = table(settings)
    values: dict[str, Any] = {}
    for entry in entries:
        if entry.field not in given or isinstance(entry.option.kind, Flag):
            continue
        kind, value = entry.option.kind, given[entry.field]
        try:
            if entry.option.many:  # after ``--`` the words are the shell's already
                given[entry.field] = tuple(value)
            elif entry.option.repeat:
                given[entry.field] = tuple(kind.parse(each) for each in value)
            else:
                given[entry.field] = kind.parse(value)
        except ValueError as exc:
            command.error(f"argument {entry.flag}: {exc}")
    if "config" in given:
        path = str(given["config"])
        values.update(file_values(entries, read_table(path), path, command.prog))
    values.update((e.field, given[e.field]) for e in entries if e.field in given)
    missing = [entry.flag for entry in entries if entry.required and entry.field not in values]
    if missing:
        command.error(f"the following arguments are required: {', '.join(missing)}")
    return settings(**values, command_line=command_line)
