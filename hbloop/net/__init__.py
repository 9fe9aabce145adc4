"""The I/O layer: the epoll event loop (``loop``) and a mock clock for it (``clock``),
the shell that carries one session's bytes over a socket (``channel``), TLS over
memory BIOs (``tls``), the frame trace (``trace``), accepting (``acceptor``) and
socket options (``sockets``).

It knows sockets and time, and of the protocol only what ``hbloop.core`` tells it.
"""
