"""The code base stays ruff clean (lint and format), type-checks under mypy --strict,
and keeps its layers (the import-linter contracts in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import ROOT

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
