"""tether: a reliability-first service runtime for Python asyncio services.

``tether serve MODULE:ATTR`` runs an ASGI 3 application over HTTP/1.1. See the
README and ``docs/`` for the subsystems.
"""

from __future__ import annotations

from tether.config import RequestLimits, ServerConfig
from tether.errors import (
    AppImportError,
    ClientDisconnected,
    ConfigError,
    LifespanFailure,
    TetherError,
)

__version__ = "0.1.0"

__all__ = [
    "AppImportError",
    "ClientDisconnected",
    "ConfigError",
    "LifespanFailure",
    "RequestLimits",
    "ServerConfig",
    "TetherError",
    "__version__",
]
