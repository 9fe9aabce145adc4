"""``hbloop who [NAME]``: who is online across the servers sharing a Redis."""

from __future__ import annotations

import sys

from hbloop.cli.settings import WhoSettings
from hbloop.presence import tools


def run(settings: WhoSettings) -> int:
    return tools.who(
        settings.redis, settings.redis_prefix, settings.name, settings.json, sys.stdout
    )
