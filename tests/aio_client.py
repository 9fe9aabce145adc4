"""A client on hbloop.aio.Client for `hbloop check-client`: it connects to
$HBLOOP_HOST:$HBLOOP_PORT (the checker's environment) and reads until it stops."""

from __future__ import annotations

import asyncio
import os

from hbloop.aio import Client, ClientStopped

# Short, so that check-client's H9 case (--handshake-timeout 2) takes seconds.
HANDSHAKE_TIMEOUT = 2.0


async def main() -> None:
    host, port = os.environ["HBLOOP_HOST"], int(os.environ["HBLOOP_PORT"])
    async with Client(host, port, "aio-check", handshake_timeout=HANDSHAKE_TIMEOUT) as client:
        try:
            async for _ in client:
                pass
        except ClientStopped:
            pass


if __name__ == "__main__":
    asyncio.run(main())
