"""The duplicate policy of one server without Redis: ``LocalRegistry``.

A server alone needs no cluster to refuse or replace a name that is already connected:
its own table of names is the whole truth. ``hbloop serve --on-duplicate refuse`` (or
``replace``) without ``--redis`` uses this registry in place of ``Presence``; it speaks
the same three calls of the server's ``Registry`` protocol, answers them at once, and
lists nothing anywhere (``hbloop who`` needs Redis). Names are compared by key
(``Policy.key``): look-alike names are one identity (protocol.md N3). Several
``--workers`` are separate processes, each with its own table, so they need Redis for
the policy.
"""

from __future__ import annotations

from collections.abc import Callable

from hbloop.core.wire import Code
from hbloop.presence.node import Policy, taken_message


class LocalMember:
    __slots__ = ("name", "key", "evict")

    def __init__(self, name: str, key: str, evict: Callable[[Code, str], None]) -> None:
        self.name = name
        self.key = key  # Policy.key of the name
        self.evict = evict


class LocalRegistry:
    """The names connected to this server, and ``policy`` applied to them at HELLO:
    refuse the newcomer (ERROR NAME_TAKEN) or close the older connection (CLOSE
    TAKEN_OVER)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._online: dict[str, list[LocalMember]] = {}  # key -> its connections

    def check(self, name: str) -> tuple[Code, str] | None:
        if self.policy is Policy.ALLOW:
            return None
        held = self._online.get(self.policy.key(name))
        if not held:
            return None
        if self.policy is Policy.REFUSE:
            return Code.NAME_TAKEN, taken_message(name, held[0].name)
        for member in list(held):  # each eviction ends in ``left``, which edits ``held``
            member.evict(Code.TAKEN_OVER, "a newer connection took this name")
        return None

    def joined(
        self, name: str, address: str, since: float, evict: Callable[[Code, str], None]
    ) -> LocalMember:
        member = LocalMember(name, self.policy.key(name), evict)
        self._online.setdefault(member.key, []).append(member)
        return member

    def left(self, member: LocalMember, reason: str) -> None:
        held = self._online.get(member.key)
        if held is None or member not in held:
            return
        held.remove(member)
        if not held:
            del self._online[member.key]

    def __len__(self) -> int:
        """The names connected (look-alikes counted once)."""
        return len(self._online)
