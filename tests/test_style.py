"""The code base stays ruff clean, type-checks under mypy --strict, and keeps its layers
(the import-linter contracts in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess

from conftest import ROOT


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    assert ruff, "ruff is part of the test extra"
    result = subprocess.run(
        [ruff, "check", "hbloop", "bench", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


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
