"""``--against c``: the C reference server, built at run time and cached.

``bench/c_reference/hbref.c`` is a minimal epoll server for protocol.md's handshake and
heartbeats (see its opening comment for what it does and leaves out). The bench builds
it with the system C compiler, ``$CC`` if set, else the first of ``cc``, ``gcc`` and
``clang`` on the PATH, into a cache directory (``$XDG_CACHE_HOME/hbloop-bench``, by
default ``~/.cache/hbloop-bench``) under a name keyed by the source, the compiler and
its flags, so repeated runs do not rebuild. Without a compiler, ``--against c`` is
refused before any run (``compiler_problem``), since the comparison it asks for
cannot be made.

Standard library only: ``bench.cli`` checks for the compiler before the bench's
dependencies are known to be installed.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).parent / "c_reference" / "hbref.c"

# Optimised as a distribution would build it; every warning an error, so that a
# compiler which finds something wrong with the floor stops the bench instead of
# measuring a server it had doubts about.
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror")

# Tried in this order when $CC is not set: `cc` is POSIX's name for the system compiler.
COMPILERS = ("cc", "gcc", "clang")

NO_COMPILER = "--against c needs a C compiler (cc); none found"

# The cache key's length in hex digits: 64 bits tell the few builds a user keeps apart.
KEY_DIGITS = 16

# A build of this one small file takes well under a second; the bound is for a
# loaded machine. `cc --version` answers at once.
BUILD_TIMEOUT = 120.0
VERSION_TIMEOUT = 10.0


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Built:
    """The server binary, and whether this call built it (False: found in the cache)."""

    path: Path
    fresh: bool


def find_compiler() -> list[str] | None:
    """The compiler's argv (``$CC``, split as a shell would, else ``cc``, ``gcc`` or
    ``clang`` from the PATH), its program resolved; None if there is none."""
    configured = os.environ.get("CC", "").strip()
    if configured:
        argv = shlex.split(configured)
        program = shutil.which(argv[0])
        return None if program is None else [program, *argv[1:]]
    for name in COMPILERS:
        program = shutil.which(name)
        if program is not None:
            return [program]
    return None


def compiler_problem() -> str | None:
    """Why ``--against c`` cannot run here, or None."""
    if find_compiler() is not None:
        return None
    configured = os.environ.get("CC", "").strip()
    if configured:
        return f"{NO_COMPILER} (CC={configured!r} not found)"
    return NO_COMPILER


def cache_directory() -> Path:
    """Where built servers are kept: the user's cache, else a per-user temp directory."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    for directory in (
        Path(base) / "hbloop-bench",
        Path(tempfile.gettempdir()) / f"hbloop-bench-{os.getuid()}",
    ):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK):
            return directory
    raise BuildError("no writable cache directory for the C reference server")


def _compiler_identity(compiler: list[str]) -> bytes:
    """What ``--version`` says, so that an upgraded compiler rebuilds; empty if the
    compiler has no such option."""
    try:
        done = subprocess.run(
            [*compiler, "--version"], capture_output=True, timeout=VERSION_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return b""
    return done.stdout


def build(compiler: list[str] | None = None) -> Built:
    """The server binary for this source and compiler, built unless already cached."""
    compiler = compiler if compiler is not None else find_compiler()
    if compiler is None:
        raise BuildError(compiler_problem() or NO_COMPILER)
    argv = [*compiler, *CFLAGS]
    key = hashlib.sha256(SOURCE.read_bytes())
    key.update("\0".join(argv).encode())
    key.update(_compiler_identity(compiler))
    directory = cache_directory()
    target = directory / f"hbref-{key.hexdigest()[:KEY_DIGITS]}"
    if os.access(target, os.X_OK):
        return Built(target, fresh=False)
    # Built under a name of its own and renamed into place, so that two benches
    # building at once (or one interrupted) never run a half-written binary.
    partial = directory / f".{target.name}.{os.getpid()}.tmp"
    try:
        done = subprocess.run(
            [*argv, "-o", str(partial), str(SOURCE)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"building the C reference server failed: {exc}") from None
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BuildError(
            f"building the C reference server failed ({shlex.join(argv)} exited "
            f"{done.returncode}):\n{done.stderr.rstrip()}"
        )
    os.replace(partial, target)
    return Built(target, fresh=True)
