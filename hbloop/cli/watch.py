"""``hbloop watch``: presence's join and leave events as they happen."""

from __future__ import annotations

import sys

from hbloop.cli.settings import WatchSettings
from hbloop.presence import tools


def run(settings: WatchSettings) -> int:
    return tools.watch(
        settings.redis,
        settings.redis_prefix,
        settings.start,
        settings.json,
        settings.count,
        sys.stdout,
    )
