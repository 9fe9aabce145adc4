"""hbloop: a TCP heartbeat server and client on a hand-rolled epoll loop.

The names below are imported when first used (PEP 562), so that ``import hbloop``,
which every ``hbloop.*`` module implies, imports no submodule: a server process never
loads the client (tests/test_style.py holds it to that).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hbloop.client import Client as Client
    from hbloop.core.backoff import Backoff as Backoff
    from hbloop.core.policy import ServerPolicy as ServerPolicy
    from hbloop.core.policy import TcpKeepalive as TcpKeepalive
    from hbloop.core.protocol import LocalProtocolError as LocalProtocolError
    from hbloop.core.protocol import ProtocolError as ProtocolError
    from hbloop.core.protocol import RemoteProtocolError as RemoteProtocolError
    from hbloop.core.session import Disconnect as Disconnect
    from hbloop.core.session import Reason as Reason
    from hbloop.core.wire import Code as Code
    from hbloop.core.wire import FrameType as FrameType
    from hbloop.core.wire import Scheme as Scheme
    from hbloop.core.wire import Welcome as Welcome
    from hbloop.net.loop import EventLoop as EventLoop
    from hbloop.net.loop import Timer as Timer
    from hbloop.server import Peer as Peer
    from hbloop.server import Server as Server

# Each public name, and the module it lives in.
_HOMES = {
    "Backoff": "hbloop.core.backoff",
    "Client": "hbloop.client",
    "Code": "hbloop.core.wire",
    "Disconnect": "hbloop.core.session",
    "EventLoop": "hbloop.net.loop",
    "FrameType": "hbloop.core.wire",
    "LocalProtocolError": "hbloop.core.protocol",
    "Peer": "hbloop.server",
    "ProtocolError": "hbloop.core.protocol",
    "Reason": "hbloop.core.session",
    "RemoteProtocolError": "hbloop.core.protocol",
    "Scheme": "hbloop.core.wire",
    "Server": "hbloop.server",
    "ServerPolicy": "hbloop.core.policy",
    "TcpKeepalive": "hbloop.core.policy",
    "Timer": "hbloop.net.loop",
    "Welcome": "hbloop.core.wire",
}

__all__ = sorted([*_HOMES, "__version__"])


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use; ``__version__`` is read
    when asked for (see ``hbloop.core.version``)."""
    if name == "__version__":
        return importlib.import_module("hbloop.core.version").version()
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'hbloop' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups find it without calling here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
