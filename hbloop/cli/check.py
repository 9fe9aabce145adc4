"""``hbloop check HOST:PORT``: the conformance cases of ``hbloop.check`` against a
server, one line each and a summary (or JSON)."""

from __future__ import annotations

import ssl

from hbloop import check as cases
from hbloop.cli.errors import EXIT_FAILURE, EXIT_OK, UsageError, fail
from hbloop.cli.security import client_security
from hbloop.cli.settings import CheckSettings
from hbloop.net.tls import describe_ssl_error

# `hbloop check`'s documented exit code for a target it cannot reach.
CHECK_UNREACHABLE = 2


def run(settings: CheckSettings) -> int:
    host, port = settings.target
    tls, token = client_security(settings)
    if token is not None and settings.duplicates is not None:
        raise UsageError(
            "--duplicates needs probes with names of their own, and a token binds them "
            f"to one ({cases.CHECK_NAME})"
        )
    probe = cases.Settings(
        host,
        port,
        settings.interval,
        settings.max_wait,
        settings.handshake_timeout,
        answer_timeout=settings.answer_timeout,
        duplicates=settings.duplicates,
        tls=tls,
        token=token,
        max_handshakes=settings.max_handshakes,
        shutdown_within=settings.shutdown_within,
        cases=settings.case,
    )
    try:
        report = cases.run_checks(probe)
    except ssl.SSLError as exc:
        failure = describe_ssl_error(exc)
        return fail(f"TLS with {probe.target} failed: {failure}", CHECK_UNREACHABLE)
    except OSError as exc:
        return fail(f"cannot reach {probe.target}: {exc.strerror or exc}", CHECK_UNREACHABLE)
    print(report.to_json() if settings.json else report.to_text())
    return EXIT_OK if report.conforms else EXIT_FAILURE
