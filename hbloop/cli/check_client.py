"""``hbloop check-client -- COMMAND...`` or ``--listen PORT``: the conformance cases of
``hbloop.check_client`` against a client, one line each and a summary (or JSON)."""

from __future__ import annotations

import sys

from hbloop import check_client as cases
from hbloop.cli.errors import EXIT_FAILURE, EXIT_OK, fail
from hbloop.cli.settings import CheckClientSettings

# The exit code for an address the checker cannot listen on: a usage error.
CANNOT_LISTEN = 2


def run(settings: CheckClientSettings) -> int:
    spec = cases.Settings(
        settings.client,
        settings.host,
        settings.listen or 0,
        answer_timeout=settings.answer_timeout,
        start_timeout=settings.start_timeout,
        quiet_window=settings.quiet_window,
        handshake_timeout=settings.handshake_timeout,
        max_wait=settings.max_wait,
        cases=settings.case,
    )
    try:
        harness = cases.Harness(spec)
    except OSError as exc:
        where = f"{settings.host}:{settings.listen or 0}"
        return fail(f"cannot listen on {where}: {exc.strerror or exc}", CANNOT_LISTEN)
    if not settings.client:
        host, port = harness.server.address
        print(f"waiting for the client on {host}:{port}", file=sys.stderr, flush=True)
    report = harness.run()
    print(report.to_json() if settings.json else report.to_text())
    return EXIT_OK if report.conforms else EXIT_FAILURE
