"""``hbloop who [NAME]``: who is online across the servers sharing a Redis."""

from __future__ import annotations

import signal
import sys

from hbloop.cli.settings import WhoSettings
from hbloop.presence import tools

# Interrupted before it could answer: the shell's convention for a death by SIGINT.
EXIT_INTERRUPTED = 128 + signal.SIGINT


def run(settings: WhoSettings) -> int:
    """Ctrl-C before the answer (Redis slow or unreachable) exits 130, without a
    traceback."""
    try:
        return tools.who(
            settings.redis, settings.redis_prefix, settings.name, settings.json, sys.stdout
        )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
