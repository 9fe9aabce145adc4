"""How the clients are split over worker processes and loopback source addresses."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

# Clients per load-generator process. Each client is one descriptor and the hard
# open-files limit here is 20,000; 10,000 leaves the rest for the process itself
# while keeping the number of processes (and their CPU contention with the server
# on a small machine) low.
MAX_CLIENTS_PER_WORKER = 10_000

# Connections per (source address, server address) pair. Linux hands out ephemeral
# ports from 32768-60999 (28,232 of them); stopping well short leaves room for the
# rest of the machine.
MAX_CLIENTS_PER_SOURCE = 25_000

# Loopback addresses used as extra sources: 127.0.0.1, 127.0.0.2, ...
LOOPBACK_BASE = ipaddress.IPv4Address("127.0.0.1")
LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(frozen=True)
class Share:
    """One worker's part of the load: the global indices ``first, first+step, ...``."""

    worker: int
    indices: range
    zombies: int  # how many of them go silent after the ramp


def worker_count(clients: int, requested: int | None = None) -> int:
    needed = math.ceil(clients / MAX_CLIENTS_PER_WORKER)
    if requested is None:
        return max(1, needed)
    if requested < needed:
        raise ValueError(
            f"{clients} clients need at least {needed} workers "
            f"({MAX_CLIENTS_PER_WORKER} descriptors each)"
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
