"""The installed distribution's version: pyproject.toml is its single source.

It is read on first use, not at import: ``importlib.metadata`` costs about 20 ms of
start-up, a tenth of ``import hbloop``, which every command and worker would pay for
a string that only ``--version``, ``/healthz`` and the metrics show.
"""

from functools import cache


@cache
def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("hbloop")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"
