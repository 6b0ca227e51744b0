"""Exceptions a tether user can catch, in one place.

Every error here carries a message a person can act on; none wraps another silently.
"""

from __future__ import annotations


class TetherError(Exception):
    """Base class of every error tether raises on purpose."""


class ConfigError(TetherError, ValueError):
    """A configuration value is invalid; the message names the option and the rule."""


class AppImportError(TetherError):
    """The application named by ``MODULE:ATTR`` could not be loaded."""


class LifespanFailure(TetherError):
    """The application's lifespan startup (or shutdown) reported failure or raised."""


class ServiceUnavailable(TetherError):
    """The work cannot be done now, but may succeed later: a handler that lets it
    propagate answers ``503`` with ``Retry-After``."""


class Overloaded(ServiceUnavailable):
    """Work refused because a queue in front of a scarce resource (the server's
    admission queue, a database pool) has been standing too long. A handler that
    lets it propagate answers ``503`` with ``Retry-After``."""


class ClientDisconnected(OSError):
    """Raised by ASGI ``send()`` once the client has gone away.

    ASGI 2.4 asks servers to raise an ``OSError`` subclass here so that a
    streaming application stops producing a body nobody will read.
    """


class ResponseAborted(TetherError):
    """Raised by an application that gives up on a response it may have started (the
    proxy, when its upstream fails mid-body). The server closes the connection, so
    the client sees a truncated response rather than a complete-looking one, and
    answers ``502`` instead if nothing was sent yet. The application has logged why;
    the server does not log it again as a crash."""
