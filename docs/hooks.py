"""MkDocs hooks (mkdocs.yml's ``hooks``): the site shows the repository's protocol.md,
which stays where implementers look for it, as ``reference/protocol.md``; links in it
to source files of the repository, which the site does not hold, become their text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).parent.parent
PROTOCOL = "reference/protocol.md"

# [text](path) where path is relative (no scheme, no anchor-only).
LINK = re.compile(r"\[([^\]]+)\]\((?![a-z]+:|#)([^)#\s]+)(#[^)\s]*)?\)")


def on_files(files: Files, config: Any) -> Files:
    text = (ROOT / "protocol.md").read_text()
    files.append(File.generated(config, PROTOCOL, content=text))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri != PROTOCOL:
        return markdown

    def unlink(match: re.Match[str]) -> str:
        return match.group(1) if (ROOT / match.group(2)).exists() else match.group(0)

    return LINK.sub(unlink, markdown)
