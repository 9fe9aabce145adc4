"""Which MUST statements of protocol.md the conformance cases judge.

A statement is a block of protocol.md (a bullet, or a paragraph) that starts with its
identifier: ``- H3. ...``, ``**The credential.** S1. ...`` or ``S2. ...``. Every block
with a MUST (or MUST NOT) must have one, and every identifier of such a block at least
one case of ``hbloop check`` (server-side) or ``hbloop check-client`` (client-side):
``tests/test_conformance.py`` holds the spec to that, and ``docs/generate.py`` writes
the table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hbloop import check, check_client

# A statement's identifier at the start of its block: a bullet's, a bold title's or
# a paragraph's own (section letter(s), number, an optional letter: H2a).
STATEMENT_ID = re.compile(r"^(?:- |\*\*[^*]+\*\* )?([A-Z]+\d+[a-z]?)\. ")

# The RFC 2119 keywords a statement binds with.
MUST_WORD = re.compile(r"\bMUST\b")

# The paragraph that explains the keywords uses them without binding anyone.
KEYWORDS_PARAGRAPH = "RFC 2119"


@dataclass(frozen=True)
class Statement:
    ident: str | None  # None: a MUST block without an identifier (a spec bug)
    text: str


def blocks(text: str) -> list[str]:
    """protocol.md's bullets and paragraphs, each on one line; tables, headings and
    code left out (tables name statements, they do not make them)."""
    found: list[str] = []
    current: list[str] = []
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        breaks = in_code or not line.strip() or line.startswith(("|", "#", "- ", "```"))
        if breaks:
            if current:
                found.append(" ".join(current))
                current = []
            if line.startswith("- ") and not in_code:
                current = [line]
            continue
        current.append(line.strip())
    if current:
        found.append(" ".join(current))
    return found


def must_statements(text: str) -> list[Statement]:
    """The blocks of protocol.md that hold a MUST, with their identifiers."""
    statements = []
    for block in blocks(text):
        if MUST_WORD.search(block) and KEYWORDS_PARAGRAPH not in block:
            match = STATEMENT_ID.match(block)
            statements.append(Statement(match.group(1) if match else None, block))
    return statements


def cases_by_statement() -> dict[str, list[str]]:
    """Every statement a case judges, with its cases: ``check`` or ``check-client``
    and the case's title."""
    covered: dict[str, list[str]] = {}
    for command, cases in (("check", check.CASES), ("check-client", check_client.CASES)):
        for spec in cases:
            covered.setdefault(spec.statement, []).append(f"{command}: {spec.title}")
    return covered


# MUSTs that no exchange with one peer can show kept or broken, each with the reason:
# they are kept by the implementation's tests, not by a checker. A statement listed
# here that gains a checkable part belongs in a case instead.
UNOBSERVABLE = {
    "N4": "a rule for a cluster's configuration (the same confusables data on every "
    "node): one server's answers cannot show which data its neighbours use",
    "A5": "its MUST NOT is about the server's own cost (no per-heartbeat work for "
    "expiry), which a peer cannot measure; the close it SHOULD send is in the tests",
}


def uncovered(text: str) -> list[str]:
    """The MUST statements without a case (or without an identifier), as protocol.md
    says them, cut short; the ``UNOBSERVABLE`` ones are covered by their reason."""
    covered = {**cases_by_statement(), **{k: [v] for k, v in UNOBSERVABLE.items()}}
    return [
        s.text[:100] if s.ident is None else s.ident
        for s in must_statements(text)
        if s.ident is None or s.ident not in covered
    ]
