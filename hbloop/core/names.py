"""Names as identities (protocol.md section 1, N1-N4): which names a server accepts,
and when two names are the same identity.

A HELLO name must be in the form the PRECIS UsernameCasePreserved profile (RFC 8265,
section 3.3) prepares: the profile refuses spaces, symbols, compatibility characters
(fullwidth letters, the Hangul filler), default-ignorable and unassigned code points,
and maps width and normalizes to NFC. A server refuses a name that the profile refuses
or that its mapping would change, rather than storing a different string: the name a
client sends is, byte for byte, the name the server logs and lists.

Two names are one identity when their confusable skeletons (Unicode UTS #39, section
4, as ICU computes it) are equal: Cyrillic U+0430 and Latin "a" have one skeleton, as do
"rn" and "m". The duplicate policy compares skeletons, here and through Redis.
"""

from __future__ import annotations

import unicodedata

import icu
import precis_i18n

# RFC 8265 section 3.3: case preserved, so "Bob" and "bob" are two users, as they are
# two keys in every store that lists them; the skeleton (below) keeps case too.
PROFILE_NAME = "UsernameCasePreserved"
_PROFILE = precis_i18n.get_profile(PROFILE_NAME)

# The Unicode versions of the tables behind each check (protocol.md section 1): PRECIS
# derives its classes from Python's tables, the skeleton comes from ICU's data.
PRECIS_UNICODE_VERSION = unicodedata.unidata_version
SKELETON_UNICODE_VERSION = icu.UNICODE_VERSION

# getSkeleton's first argument is a deprecated type selector that ICU ignores; UTS #39
# defines one skeleton.
_SKELETON_TYPE = 0
_SPOOF_CHECKER = icu.SpoofChecker()


def _code_point(text: str, index: int) -> str:
    char = text[index]
    return f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed')}"


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid HELLO name under the PRECIS profile, or None if it
    is one. Either the profile refuses a character, or the name is not in its prepared
    form (the profile would map it: a fullwidth letter, a decomposed accent)."""
    try:
        prepared: str = _PROFILE.enforce(name)
    except UnicodeEncodeError as refused:
        # precis_i18n's reason reads "DISALLOWED/spaces", "DISALLOWED/has_compat"...
        why = refused.reason.rpartition("/")[2].replace("_", " ")
        return f"name has {_code_point(name, refused.start)}, which usernames exclude ({why})"
    if prepared != name:
        return "name is not in its PRECIS prepared form (width-mapped, NFC)"
    return None


def skeleton(name: str) -> str:
    """The UTS #39 confusable skeleton of ``name``: two names with one skeleton look
    alike and are one identity to the duplicate policy."""
    result: str = _SPOOF_CHECKER.getSkeleton(_SKELETON_TYPE, name)
    return result
