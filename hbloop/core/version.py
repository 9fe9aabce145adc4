"""The installed distribution's version: pyproject.toml is its single source."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hbloop")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
