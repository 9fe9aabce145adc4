"""Names as identities (hbloop.core.names; protocol.md N1-N3) against the names section
of tests/vectors.json: the PRECIS profile at HELLO, on the server's side (parse_hello)
and the client's (it refuses to send such a name), and the UTS #39 skeletons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hbloop.client import Client
from hbloop.core.names import name_problem, skeleton
from hbloop.core.protocol import LocalProtocolError, RemoteProtocolError, parse_hello
from hbloop.core.wire import Code, encode_hello

NAMES = json.loads((Path(__file__).with_name("vectors.json")).read_text("utf-8"))["names"]


def label(case: dict[str, Any]) -> str:
    return str(case["label"])


@pytest.mark.parametrize("case", NAMES["accepted"], ids=label)
def test_n1_n2_a_prepared_name_is_accepted_as_sent(case: dict[str, Any]) -> None:
    name = case["name"]
    assert name_problem(name) is None
    assert parse_hello(encode_hello(name, 0)[6:]).name == name  # byte for byte


@pytest.mark.parametrize("case", NAMES["refused"], ids=label)
def test_n1_n2_a_refused_name_gets_bad_name_on_both_sides(case: dict[str, Any]) -> None:
    name = case["name"]
    with pytest.raises(RemoteProtocolError) as refused:
        parse_hello(encode_hello(name, 0)[6:])
    assert refused.value.code == Code.BAD_NAME
    with pytest.raises(LocalProtocolError) as local:
        Client("127.0.0.1", 1, name)
    assert local.value.code == Code.BAD_NAME


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("bob\u00a0", "U+00A0 NO-BREAK SPACE, which usernames exclude"),
        ("\u3164", "U+3164 HANGUL FILLER, which usernames exclude"),
        ("\u2800", "U+2800 BRAILLE PATTERN BLANK, which usernames exclude (symbols)"),
        ("bob age=1", "U+0020 SPACE, which usernames exclude (spaces)"),
        ("cafe\u0301", "not in its PRECIS prepared form (width-mapped, NFC)"),
        ("\uff42\uff4f\uff42", "not in its PRECIS prepared form (width-mapped, NFC)"),
    ],
)
def test_n1_n2_the_refusal_names_the_character_or_the_form(name: str, says: str) -> None:
    problem = name_problem(name)
    assert problem is not None and says in problem
    assert problem.isascii() and len(problem.encode()) <= 200  # F5: an ERROR message


def test_n1_every_issue_case_is_a_refused_vector() -> None:
    refused = {case["name"] for case in NAMES["refused"]}
    for name in ("bob\u00a0", "cafe\u0301", "\uff42\uff4f\uff42", "\u3164", "bob age=999.0s"):
        assert name in refused
    assert any("\u2800" in name for name in refused)


@pytest.mark.parametrize("case", NAMES["skeletons"], ids=label)
def test_n3_look_alike_names_share_a_skeleton(case: dict[str, Any]) -> None:
    first, second = case["names"]
    assert name_problem(first) is None and name_problem(second) is None
    assert (skeleton(first) == skeleton(second)) is case["same"]
