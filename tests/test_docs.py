"""The documentation site (docs/, mkdocs.yml): it builds with --strict, its generated
reference pages match the declarations, and its runnable blocks still do what they show.

A runnable block is a ``console`` block right after ``<!-- run -->`` (or ``<!-- run:
server ARGS -->``, which first starts ``hbloop serve ARGS`` for it), or an ``sh`` block
there, run as one script that must succeed (a recipe). Each ``$ `` line is
a command, run with bash in a directory of the page's own (shared by the page's blocks,
in order), its stdout and stderr together; the lines after it up to the next command
are what it must print. In a shown line ``...`` stands for any text, and a line that is
only ``...`` for any number of lines. The server of a block listens on a free port,
which replaces 7878 in the block's commands and output, as a free metrics port replaces
9100. A plain block right after ``<!-- log of the server above -->`` holds lines that
the server of the block before it must have logged, in that order (each the end of a
log line: the timestamp is left out).
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, ServerProcess, wait_for

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

BLOCK = re.compile(
    r"<!-- (?P<kind>run|log of the server above)(?:: server(?P<args>[^>]*?))? -->\n"
    r"```(?P<lang>console|text|sh)?\n(?P<body>.*?)```",
    re.S,
)
ANY_LINES = "..."

# A documented command that takes longer than this has hung (a server left running).
COMMAND_TIMEOUT = 60.0

# The ports the docs use: the server's default, and the metrics port of their examples.
DOC_PORT, DOC_METRICS_PORT = "7878", "9100"


@dataclass
class Block:
    page: Path
    kind: str
    body: str
    server_args: list[str] | None = None
    script: bool = False  # an sh block: run as one script, which must succeed
    logs: list[str] = field(default_factory=list)  # lines its server must log

    @property
    def steps(self) -> list[tuple[str, list[str]]]:
        """(command, the lines it shows) for each ``$ `` line."""
        steps: list[tuple[str, list[str]]] = []
        for line in self.body.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                assert steps, f"{self.page}: output before any command: {line!r}"
                steps[-1][1].append(line)
        return steps


def blocks(page: Path) -> list[Block]:
    found: list[Block] = []
    for match in BLOCK.finditer(page.read_text()):
        if match["kind"] == "run":
            args = None if match["args"] is None else match["args"].split()
            found.append(Block(page, "run", match["body"], args, match["lang"] == "sh"))
        else:
            assert found and found[-1].server_args is not None, f"{page}: a log without server"
            found[-1].logs = match["body"].splitlines()
    return found


RUNNABLE = [page for page in PAGES if blocks(page)]


def line_pattern(shown: str) -> str:
    return ".*".join(re.escape(part) for part in shown.split("..."))


def matches(shown: list[str], printed: list[str]) -> bool:
    """Whether ``printed`` is what ``shown`` shows, ``...`` standing for any text."""
    pattern = "".join(
        r"(?:.*\n)*?" if line == ANY_LINES else line_pattern(line) + r"\n" for line in shown
    )
    return re.fullmatch(pattern, "".join(f"{line}\n" for line in printed)) is not None


def in_order(shown: list[str], logged: list[str]) -> list[str]:
    """The lines of ``shown`` not found at the end of ``logged`` lines, in order."""
    at = 0
    for line in shown:
        pattern = re.compile(line_pattern(line) + "$")
        while at < len(logged) and not pattern.search(logged[at]):
            at += 1
        if at == len(logged):
            return [line]
        at += 1
    return []


def run_block(block: Block, cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = None
    ports = {}
    if block.server_args is not None:
        # The files that the page's earlier blocks made, where the server finds them.
        args = [str(cwd / a) if (cwd / a).is_file() else a for a in block.server_args]
        args += ["--metrics-port", "0"]
        server = ServerProcess(*args)
        metrics = server.wait_line(r"metrics on http://[\d.]+:(\d+)/")
        ports = {DOC_PORT: str(server.port), DOC_METRICS_PORT: metrics.group(1)}

    def local(text: str) -> str:
        for documented, real in ports.items():
            text = re.sub(rf"\b{documented}\b", real, text)
        return text

    try:
        if block.script:
            done = subprocess.run(
                ["bash", "-c", block.body], cwd=cwd, env=env, timeout=COMMAND_TIMEOUT
            )
            assert done.returncode == 0, f"{block.page.relative_to(ROOT)}: {block.body}"
            return
        for command, shown in block.steps:
            done = subprocess.run(
                ["bash", "-c", local(command)],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=COMMAND_TIMEOUT,
            )
            printed = done.stdout.splitlines()
            expected = [local(line) for line in shown]
            assert matches(expected, printed), (
                f"{block.page.relative_to(ROOT)}: `$ {command}` printed:\n"
                + "\n".join(printed)
                + "\n\nwhere the page shows:\n"
                + "\n".join(shown)
            )
        if server is not None and block.logs:
            expected = [local(line) for line in block.logs]
            assert wait_for(lambda: not in_order(expected, server.lines())), (
                f"{block.page.relative_to(ROOT)}: the server did not log "
                f"{in_order(expected, server.lines())}; it logged:\n" + "\n".join(server.lines())
            )
    finally:
        if server is not None:
            server.stop()


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(DOCS)) for p in RUNNABLE])
def test_the_runnable_blocks_print_what_the_page_shows(page: Path, tmp_path: Path) -> None:
    for block in blocks(page):
        run_block(block, tmp_path)


def test_the_pages_mark_blocks_to_run() -> None:
    """The marker is spelled right wherever it is used: a misspelt one would leave its
    block untested without a word."""
    for page in PAGES:
        text = page.read_text()
        assert text.count("<!-- run") == sum(b.kind == "run" for b in blocks(page)), page
    assert len(RUNNABLE) >= 3


def test_the_matcher_reads_ellipses() -> None:
    assert matches(["a ... c", "...", "z"], ["a b c", "x", "y", "z"])
    assert matches(["a", "...", "b"], ["a", "b"])
    assert not matches(["a ... c"], ["a b d"])
    assert not matches(["a"], ["a", "b"])


PYTHON_BLOCK = re.compile(r"```python\n(?P<body>.*?)```", re.DOTALL)
SNIPPETS = [
    (page, match["body"])
    for page in [*PAGES, ROOT / "README.md"]
    for match in PYTHON_BLOCK.finditer(page.read_text())
]


@pytest.mark.parametrize(
    ("page", "body"), SNIPPETS, ids=[str(p.relative_to(ROOT)) for p, _ in SNIPPETS]
)
def test_the_python_samples_parse_and_import_what_hbloop_has(page: Path, body: str) -> None:
    """A sample a reader copies must at least compile and find every hbloop name it
    imports: modules moved when the package was layered, and two pages kept the old
    paths (hbloop.tls, hbloop.redis_link) without any run to notice."""
    tree = ast.parse(body, filename=str(page))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hbloop"):
            module = importlib.import_module(node.module or "")
            missing = [a.name for a in node.names if not hasattr(module, a.name)]
            assert not missing, f"{page}: {node.module} has no {missing}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hbloop"):
                    importlib.import_module(alias.name)
    assert SNIPPETS


def test_the_generated_reference_pages_match_the_declarations() -> None:
    done = subprocess.run(
        [sys.executable, str(DOCS / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "reference" / "protocol" / "index.html").exists()


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    [command] = re.findall(r"# install and run the tests .*\n(.*)\n", readme)
    assert (ROOT / ".ci" / "run").read_text().splitlines()[-1] == command
