"""The code base stays ruff clean (lint and format), type-checks under mypy --strict,
keeps its layers (the import-linter contracts in pyproject.toml), and a process
imports only what its command needs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from hbloop.core.wire import PING_FRAME, FrameType

from conftest import HBLOOP, ROOT, START_TIMEOUT, LoggedProcess, RawPeer

CHECKED = ("hbloop", "bench", "tests")


def run_ruff(*args: str) -> subprocess.CompletedProcess[str]:
    ruff = shutil.which("ruff")
    assert ruff, "ruff is part of the test extra"
    return subprocess.run([ruff, *args, *CHECKED], cwd=ROOT, capture_output=True, text=True)


def test_ruff_is_clean():
    result = run_ruff("check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean():
    result = run_ruff("format", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean():
    mypy = shutil.which("mypy")
    assert mypy, "mypy is part of the test extra"
    # Strictness and the files checked are set in pyproject.toml ([tool.mypy]).
    result = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found" in result.stdout


def test_the_package_is_marked_typed():
    assert (ROOT / "hbloop" / "py.typed").is_file()


def test_lower_layers_never_import_higher_ones():
    lint_imports = shutil.which("lint-imports")
    assert lint_imports, "import-linter is part of the test extra"
    result = subprocess.run([lint_imports], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


# A module ``-X importtime`` reports: "import time: self | cumulative | <indent>name",
# after a header line whose columns read "self [us] | cumulative | imported package".
IMPORT_TIME_LINE = "import time:"
IMPORT_TIME_HEADER = "[us]"


def modules_in(importtime_lines: list[str]) -> set[str]:
    """The modules a process imported, from its ``-X importtime`` report on stderr."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_lines
        if line.startswith(IMPORT_TIME_LINE) and IMPORT_TIME_HEADER not in line
    }


def test_importing_hbloop_imports_no_submodule():
    # ``hbloop``'s public names are imported on first use (PEP 562), so that every
    # ``hbloop.x`` import, which imports the package first, pays only for ``x``.
    probe = "import sys, hbloop; print(sorted(m for m in sys.modules if m.startswith('hbloop.')))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
    names = "from hbloop import Server, Client, Peer, EventLoop, __version__; print(Server)"
    result = subprocess.run(
        [sys.executable, "-c", names], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "hbloop.server.Server" in result.stdout


def test_a_server_never_imports_the_client_the_checkers_or_construct():
    # What a serving process loads is start-up every worker and every restart pays:
    # construct alone adds about 20 ms, and the schema it declares is for documents
    # and tests (hbloop.core.wire is the server's).
    server = LoggedProcess(
        [*HBLOOP, "serve", "--port", "0", "--log-level", "info"],
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
    )
    try:
        address = server.wait_line(r"listening on ([\d.]+):(\d+)", timeout=START_TIMEOUT)
        with RawPeer((address.group(1), int(address.group(2)))) as peer:
            assert peer.hello("imports")[0] == FrameType.WELCOME
            peer.send(PING_FRAME)
            assert peer.recv() == (FrameType.PONG, b"")
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    finally:
        server.stop()
    imported = modules_in(server.lines())
    assert "hbloop.server" in imported, "the report lists what the server imported"
    never = {"construct", "hbloop.core.schema", "hbloop.client", "hbloop.cli.client"}
    never |= {"hbloop.check", "hbloop.check_client", "hbloop.aio", "asyncio"}
    assert imported.isdisjoint(never), sorted(imported & never)
