"""The ``hbloop`` command: ``serve``, ``client``, ``check``, ``check-client``, ``who``
and ``watch``.

The command line becomes the command's settings (``hbloop.cli.parser``, from the
option table of ``hbloop.cli.settings``), which its module runs. Exit codes and
errors are those of ``hbloop.cli.errors``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from hbloop.cli.config import ConfigError
from hbloop.cli.errors import EXIT_USAGE, UsageError, fail
from hbloop.cli.parser import parse
from hbloop.cli.settings import (
    CheckClientSettings,
    CheckSettings,
    ClientSettings,
    ServeSettings,
    Settings,
    WatchSettings,
    WhoSettings,
)

# The module that runs each command's settings (its ``run``). Imported only for the
# command given: a server never loads the client, the checkers or construct, which
# every worker and every restart would otherwise pay for at start-up
# (tests/test_style.py holds it to that).
RUNNERS: dict[type[Settings], str] = {
    ServeSettings: "hbloop.cli.serve",
    ClientSettings: "hbloop.cli.client",
    CheckSettings: "hbloop.cli.check",
    CheckClientSettings: "hbloop.cli.check_client",
    WhoSettings: "hbloop.cli.who",
    WatchSettings: "hbloop.cli.watch",
}


def run(settings: Settings) -> int:
    """Run the command that ``settings`` are for; its exit code."""
    runner = importlib.import_module(RUNNERS[type(settings)])
    code: int = runner.run(settings)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse(argv))
    except (UsageError, ConfigError) as exc:
        return fail(str(exc), EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
