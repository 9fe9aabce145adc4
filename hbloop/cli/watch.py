"""``hbloop watch``: presence's join and leave events as they happen."""

from __future__ import annotations

import sys

from hbloop.cli.errors import EXIT_OK
from hbloop.cli.settings import WatchSettings
from hbloop.presence import tools


def run(settings: WatchSettings) -> int:
    """Ctrl-C is how watch is meant to end: exit 0 in every state (following the
    stream, connecting, or waiting to retry while Redis is unreachable)."""
    try:
        return tools.watch(
            settings.redis,
            settings.redis_prefix,
            settings.start,
            settings.json,
            settings.count,
            sys.stdout,
        )
    except KeyboardInterrupt:
        return EXIT_OK
