"""A client on hbloop.aio.Client for `hbloop check-client`: it connects to
$HBLOOP_HOST:$HBLOOP_PORT (the checker's environment) and reads until it stops."""

from __future__ import annotations

import asyncio
import os

from hbloop.aio import Client, ClientStopped
from hbloop.core.backoff import Backoff

# Short, so that check-client's H9 case (--handshake-timeout 2) takes seconds.
HANDSHAKE_TIMEOUT = 2.0

# Quick retries, as test_check_client's QUICK_BACKOFF gives the other clients: a wrong
# reconnection comes well inside the checker's 1 s quiet window.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 0.2


async def main() -> None:
    host, port = os.environ["HBLOOP_HOST"], int(os.environ["HBLOOP_PORT"])
    backoff = Backoff(BACKOFF_BASE, BACKOFF_CAP)
    client = Client(host, port, "aio-check", handshake_timeout=HANDSHAKE_TIMEOUT, backoff=backoff)
    async with client:
        try:
            async for _ in client:
                pass
        except ClientStopped:
            pass


if __name__ == "__main__":
    asyncio.run(main())
