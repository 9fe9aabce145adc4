"""Exit codes, the same for every command, and the one-line errors behind them.

0 success; 1 a failure at run time (a port in use, a client whose connection ended
for good, ``check``: a MUST failed); 2 a usage or configuration error (a bad option,
an inconsistent setting, a bad ``--config`` file; ``check``: the target is
unreachable). Every error is one line on stderr, ``hbloop: error: ...``.
"""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_FAILURE = 1  # at run time: a port in use, a connection that ended for good
EXIT_USAGE = 2  # a bad option or config file, an inconsistent setting


class UsageError(Exception):
    """A bad option or an inconsistent setting: exit code 2. The message is one line."""


def fail(message: str, code: int = EXIT_FAILURE) -> int:
    """Say ``message`` as hbloop's one-line error; return the exit code ``code``."""
    print(f"hbloop: error: {message}", file=sys.stderr)
    return code
