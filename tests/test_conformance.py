"""Every MUST of protocol.md has an identifier and a case of `hbloop check` or
`hbloop check-client` (hbloop.conformance)."""

from __future__ import annotations

from hbloop.conformance import UNOBSERVABLE, cases_by_statement, must_statements, uncovered

from conftest import ROOT

PROTOCOL = (ROOT / "protocol.md").read_text(encoding="utf-8")


def test_every_must_has_an_identifier_and_a_case() -> None:
    assert uncovered(PROTOCOL) == []


def test_the_statements_are_found() -> None:
    found = {s.ident for s in must_statements(PROTOCOL)}
    assert {"F1", "F8", "H1", "H10", "T6", "C4", "R7", "N1", "K1", "A1", "S1", "P4"} <= found


def test_a_new_must_without_a_case_is_caught() -> None:
    text = PROTOCOL + "\n- Z9. A side MUST do something no case checks.\n"
    assert uncovered(text) == ["Z9"]


def test_a_must_without_an_identifier_is_caught() -> None:
    text = PROTOCOL + "\nA peer MUST also do this, said in passing.\n"
    assert uncovered(text) == ["A peer MUST also do this, said in passing."]


def test_the_keywords_paragraph_binds_no_one() -> None:
    assert None not in {s.ident for s in must_statements(PROTOCOL)}


def test_the_unobservable_musts_are_still_musts_without_a_case() -> None:
    """An exemption outlives neither its statement nor a case that learns to check it."""
    idents = {s.ident for s in must_statements(PROTOCOL)}
    covered = cases_by_statement()
    for ident in UNOBSERVABLE:
        assert ident in idents, ident
        assert ident not in covered, ident
