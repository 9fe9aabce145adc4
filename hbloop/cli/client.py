"""``hbloop client``: connect, heartbeat, send stdin lines as DATA and print what comes
back (``hbloop.cli.client_app``)."""

from __future__ import annotations

from hbloop.cli.client_app import ClientApp
from hbloop.cli.errors import UsageError
from hbloop.cli.security import client_security
from hbloop.cli.settings import ClientSettings
from hbloop.client import ClientConfigError
from hbloop.core.protocol import ProtocolError
from hbloop.ops import logs


def run(settings: ClientSettings) -> int:
    logs.configure(settings.level, settings.log_format)
    try:
        app = ClientApp(settings, *client_security(settings))
    except ProtocolError as exc:  # a name HELLO cannot carry
        raise UsageError(exc.message) from None
    except ClientConfigError as exc:  # R4, R5: refused before any packet
        raise UsageError(str(exc)) from None
    return app.run()
