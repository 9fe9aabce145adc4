"""The client examples of docs/howto/embedding.md, run as programs: the EventLoop one closes cleanly
on Ctrl-C, the asyncio one when it leaves its ``async with`` block."""

from __future__ import annotations

import re
import signal
import sys

from conftest import ROOT, LoggedProcess

MARKER = "<!-- tests/test_embedding.py runs this example -->"
ASYNCIO_MARKER = "<!-- tests/test_embedding.py runs this asyncio example -->"
EMBEDDING = "docs/howto/embedding.md"  # the page that shows them


def readme_example(marker: str = MARKER) -> str:
    page = (ROOT / EMBEDDING).read_text()
    block = re.search(re.escape(marker) + r"\n```python\n(.*?)```", page, re.DOTALL)
    assert block, f"no Python block after {marker} in {EMBEDDING}"
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


def test_the_asyncio_example_round_trips_and_closes_normally(serve):
    server = serve("--interval", "5", "--timeout", "15")
    code = readme_example(ASYNCIO_MARKER).replace("7878", str(server.port))
    example = LoggedProcess([sys.executable, "-u", "-c", code])
    try:
        example.wait_line(r"^stopped: ", which="stdout")
        assert example.wait() == 0
        assert example.lines("stdout") == [
            "connected: interval 5s",
            "got b'online'",  # echoed by the server
            "stopped: closed_locally NORMAL",
        ]
        assert example.lines("stderr") == []
        server.wait_line(r"connect .* name=sensor-8 interval=5s")
        server.wait_line(r"disconnect .* name=sensor-8 .*reason=peer_closed NORMAL")
    finally:
        example.stop()
