"""Choose the event loop implementation: uvloop when present, stdlib asyncio otherwise.

Must never install a global event loop policy: callers get a factory and decide.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

from tether.errors import ConfigError

LoopName = Literal["auto", "asyncio", "uvloop"]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def loop_factory(name: LoopName) -> LoopFactory:
    """Return a callable that creates a new event loop of the requested kind."""
    if name == "asyncio" or (name == "auto" and not uvloop_available()):
        return asyncio.new_event_loop
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError as exc:
            raise ConfigError("--loop uvloop was requested but uvloop is not installed") from exc
        factory: LoopFactory = uvloop.new_event_loop
        return factory
    raise ConfigError(f"--loop must be auto, asyncio or uvloop, not {name!r}")
