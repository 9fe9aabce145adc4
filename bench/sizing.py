"""How the clients are split over worker processes and loopback source addresses, and
how many processes a spawned ``hbloop serve`` needs to hold them."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.config import DEFAULT_MAX_IN_FLIGHT
from hbloop.net.sockets import default_max_connections, open_files_ceiling

# Heartbeats a second one load-generator process is given: what each had when the
# bench gave them 10,000 clients at the default 1 s interval, and kept up with. At
# interval 30 the descriptors bind first (19,936 clients, 665 heartbeats a second).
MAX_HEARTBEATS_PER_WORKER = 10_000

# Connections per (source address, server address) pair. Linux hands out ephemeral
# ports from 32768-60999 (28,232 of them), but connect() tries the even half first
# and, once those 14,116 are taken, scans them all on every connect before the odd
# ones: at 20,000 a source, 74% of the machine's CPU went to __inet_check_established
# (perf) and the ramp fell from 2,000 to 500 connects/s. 10,000 stays in the even half.
MAX_CLIENTS_PER_SOURCE = 10_000

# Loopback addresses used as extra sources: 127.0.0.1, 127.0.0.2, ...
LOOPBACK_BASE = ipaddress.IPv4Address("127.0.0.1")
LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(frozen=True)
class Share:
    """One worker's part of the load: the global indices ``first, first+step, ...``."""

    worker: int
    indices: range
    zombies: int  # how many of them go silent after the ramp


def clients_per_worker(interval: float) -> int:
    """Clients one load-generator process is given: as many as its descriptors hold
    (the open-files limit, less the reserve a server keeps too) and heartbeat at most
    ``MAX_HEARTBEATS_PER_WORKER`` a second at ``interval``."""
    return max(1, min(server_capacity(), int(MAX_HEARTBEATS_PER_WORKER * interval)))


def worker_count(clients: int, requested: int | None = None, interval: float = 1.0) -> int:
    each = clients_per_worker(interval)
    needed = math.ceil(clients / each)
    if requested is None:
        return max(1, needed)
    if requested < needed:
        raise ValueError(
            f"{clients} clients need at least {needed} workers "
            f"({each} clients each at interval {interval:g}s)"
        )
    return requested


def split(clients: int, workers: int, zombies: int) -> list[Share]:
    """Interleave clients over workers so each worker's phases cover the interval."""
    shares = []
    zombies_left = zombies
    for worker in range(workers):
        indices = range(worker, clients, workers)
        # The remaining zombies are spread over the remaining workers.
        mine = min(len(indices), round(zombies_left / (workers - worker)))
        zombies_left -= mine
        shares.append(Share(worker, indices, mine))
    return shares


def source_addresses(clients: int, host: str) -> list[str]:
    """Loopback source addresses enough for ``clients`` connections to one server.

    Empty for a non-loopback server: the kernel then picks the source itself.
    """
    try:
        if ipaddress.ip_address(host) not in LOOPBACK_NET:
            return []
    except ValueError:
        return []
    count = max(1, math.ceil(clients / MAX_CLIENTS_PER_SOURCE))
    return [str(LOOPBACK_BASE + i) for i in range(count)]


# A server the bench sizes (more clients than one process holds) gets a whole-server
# --max-connections this much above the clients: the kernel spreads connections over
# SO_REUSEPORT workers by a hash of their addresses, not evenly, and each worker
# refuses past its even share; a 25% margin keeps the fullest of 20+ workers, a few
# standard deviations above its mean, below its cap.
SERVER_HEADROOM = 1.25


def server_capacity() -> int:
    """Connections one ``hbloop serve`` process holds: its open-files limit, raised to
    the hard one, less what the server keeps back."""
    return default_max_connections(open_files_ceiling())


def max_in_flight(clients: int, capacity: int | None = None) -> int:
    """Connects the load generator keeps awaiting WELCOME at once, by default:
    ``DEFAULT_MAX_IN_FLIGHT`` for each process a server needs to hold ``clients`` (of
    ``capacity`` each, default ``server_capacity()``), each with its accept queue
    (SO_REUSEPORT). A ramp goes at most this fast over a handshake's time: one 1,024
    for 400,000 clients (48 a generator process) held a 2,000/s ramp to 1,650/s, its
    handshakes taking 0.6 s on a loaded machine."""
    each = server_capacity() if capacity is None else capacity
    return DEFAULT_MAX_IN_FLIGHT * math.ceil(clients / each)


def _given(args: Sequence[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(f"{flag}=") for arg in args)


def server_args(
    clients: int, given: Sequence[str], least_workers: int = 1, capacity: int | None = None
) -> tuple[str, ...]:
    """What the bench adds to a spawned ``hbloop serve`` (with the user's ``given``
    arguments) so that it holds ``clients`` with at least ``least_workers`` workers:
    ``--workers auto`` and a whole-server ``--max-connections`` when one process's
    ``capacity`` (default: ``server_capacity()``) is too small. A user-given
    ``--workers`` wins; a user-given ``--max-connections`` is kept."""
    if _given(given, "--workers"):
        return ()
    if clients <= (server_capacity() if capacity is None else capacity):
        return () if least_workers == 1 else ("--workers", str(least_workers))
    if _given(given, "--max-connections"):
        return ("--workers", "auto")
    return ("--workers", "auto", "--max-connections", str(math.ceil(clients * SERVER_HEADROOM)))


def describe_server_args(clients: int, added: Sequence[str]) -> str | None:
    """The line that says the bench sized the server, or None if it did not."""
    if "auto" not in added:
        return None
    return (
        f"bench: {clients:,} clients need more than one process's {server_capacity():,} "
        f"descriptors: hbloop serve {' '.join(added)}"
    )
