"""tether: a reliability-first service runtime for Python asyncio services.

``tether serve MODULE:ATTR`` runs an ASGI 3 application over HTTP/1.1. See the
README and ``docs/`` for the subsystems.
"""

from __future__ import annotations

from tether._version import __version__
from tether.client import Client, Response, Timeout
from tether.config import RequestLimits, ServerConfig
from tether.deadline import (
    Deadline,
    DeadlineExceeded,
    current_deadline,
    deadline_after,
    deadline_at,
    no_cancel_on_disconnect,
    time_remaining,
)
from tether.errors import (
    AppImportError,
    ClientDisconnected,
    ConfigError,
    LifespanFailure,
    Overloaded,
    ServiceUnavailable,
    TetherError,
)

__all__ = [
    "AppImportError",
    "Client",
    "ClientDisconnected",
    "ConfigError",
    "Deadline",
    "DeadlineExceeded",
    "LifespanFailure",
    "Overloaded",
    "RequestLimits",
    "Response",
    "ServerConfig",
    "ServiceUnavailable",
    "TetherError",
    "Timeout",
    "__version__",
    "current_deadline",
    "deadline_after",
    "deadline_at",
    "no_cancel_on_disconnect",
    "time_remaining",
]
