"""hbloop: a TCP heartbeat server and client on a hand-rolled epoll loop."""

from hbloop.client import Client
from hbloop.core.backoff import Backoff
from hbloop.core.policy import ServerPolicy, TcpKeepalive
from hbloop.core.protocol import LocalProtocolError, ProtocolError, RemoteProtocolError
from hbloop.core.session import Disconnect, Reason
from hbloop.core.version import version
from hbloop.core.wire import Code, FrameType, Scheme, Welcome
from hbloop.net.loop import EventLoop, Timer
from hbloop.server import Peer, Server

__all__ = [
    "Backoff",
    "Client",
    "Code",
    "Disconnect",
    "EventLoop",
    "FrameType",
    "LocalProtocolError",
    "Peer",
    "ProtocolError",
    "Reason",
    "RemoteProtocolError",
    "Scheme",
    "Server",
    "ServerPolicy",
    "TcpKeepalive",
    "Timer",
    "Welcome",
    "__version__",
]


def __getattr__(name: str) -> str:
    """``__version__``, read when asked for (see ``hbloop.core.version``)."""
    if name == "__version__":
        return version()
    raise AttributeError(f"module 'hbloop' has no attribute {name!r}")
