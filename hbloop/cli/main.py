"""The ``hbloop`` command: ``serve``, ``client``, ``check``, ``check-client``, ``who``
and ``watch``.

The command line becomes the command's settings (``hbloop.cli.parser``, from the
option table of ``hbloop.cli.settings``), which its module runs. Exit codes and
errors are those of ``hbloop.cli.errors``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hbloop.cli import check, check_client, client, serve, watch, who
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


def run(settings: Settings) -> int:
    """Run the command that ``settings`` are for; its exit code."""
    match settings:
        case ServeSettings():
            return serve.run(settings)
        case ClientSettings():
            return client.run(settings)
        case CheckSettings():
            return check.run(settings)
        case CheckClientSettings():
            return check_client.run(settings)
        case WhoSettings():
            return who.run(settings)
        case WatchSettings():
            return watch.run(settings)
    raise AssertionError(f"no command runs {type(settings).__name__}")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse(argv))
    except (UsageError, ConfigError) as exc:
        return fail(str(exc), EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
