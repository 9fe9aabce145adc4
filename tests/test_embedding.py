"""The embedding example of the README, run as a program: Ctrl-C closes it cleanly."""

from __future__ import annotations

import re
import signal
import sys

from conftest import ROOT, LoggedProcess

MARKER = "<!-- tests/test_embedding.py runs this example -->"


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(re.escape(MARKER) + r"\n```python\n(.*?)```", readme, re.DOTALL)
    assert block, f"no Python block after {MARKER} in README.md"
    return block.group(1)


def test_the_client_example_closes_cleanly_on_ctrl_c(serve):
    server = serve()
    code = readme_example().replace("7878", str(server.port))
    example = LoggedProcess([sys.executable, "-u", "-c", code])
    try:
        example.wait_line(r"^got b'online'$", which="stdout")  # echoed by the server
        server.wait_line(r"connect .* name=sensor-7 interval=5s")
        example.signal(signal.SIGINT)
        assert example.wait() == 0
        example.wait_line(r"^stopped: closed_locally NORMAL$", which="stdout")
        assert example.lines("stderr") == []  # no traceback
        server.wait_line(r"disconnect .* name=sensor-7 .*reason=peer_closed NORMAL")
    finally:
        example.stop()
