"""hbloop: a TCP heartbeat server and client on a hand-rolled epoll loop."""

from importlib.metadata import PackageNotFoundError, version

from hbloop.client import Backoff, Client
from hbloop.loop import EventLoop, Timer
from hbloop.policy import ServerPolicy, TcpKeepalive
from hbloop.protocol import LocalProtocolError, ProtocolError, RemoteProtocolError
from hbloop.server import Peer, Server
from hbloop.session import Disconnect, Reason
from hbloop.wire import Code, FrameType, Scheme, Welcome

try:  # pyproject.toml is the single source of the version
    __version__ = version("hbloop")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

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
]
