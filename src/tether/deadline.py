"""Deadlines as values: one small type, the current one in a contextvar, a wire codec.

Field report 1 (docs/incidents.md, Boulder) is why: a request's remaining time must travel with it,
server -> handler -> outbound calls -> database, and everything it started must
stop when it runs out. A :class:`Deadline` is an absolute point on the monotonic
clock (or none); scopes only ever *narrow* it, never extend it, as trio's cancel
scopes do. On the wire it travels as the time *remaining*
(``x-request-timeout-ms``), so clock skew between machines does not matter.

Must never extend a deadline, and never read the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final

from tether.asgi import ASGIApp, Receive, Scope, Send
from tether.errors import TetherError

#: the deadline header tether reads and writes (integer milliseconds remaining)
HEADER: Final = "x-request-timeout-ms"
HEADER_BYTES: Final = b"x-request-timeout-ms"
GRPC_HEADER_BYTES: Final = b"grpc-timeout"

#: the longest deadline accepted from the wire by default (longer ones are narrowed
#: to it; the server's ``--max-deadline``)
MAX_WIRE_SECONDS: Final = 3600.0
#: the most milliseconds tether writes: 12 digits, the most any tether reads (a
#: longer local deadline still travels, and the next hop narrows it to its own
#: maximum). Without a cap ``grpc-timeout: 99999999H`` became a 15-digit header the
#: next hop refused with 400.
MAX_HEADER_MS: Final = 10**12 - 1

_GRPC_UNITS: Final = {
    ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0,
    ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9,
}


class DeadlineExceeded(TetherError, TimeoutError):
    """The current deadline passed before the work finished."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """A point on ``time.monotonic()``'s clock by which work must finish; ``at=None``
    means no deadline."""

    at: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    def remaining(self) -> float | None:
        """Seconds left (may be negative once passed), or None for no deadline."""
        return None if self.at is None else self.at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def narrow(self, other: Deadline) -> Deadline:
        """The earlier of the two: a deadline can only ever get shorter."""
        if other.at is None:
            return self
        if self.at is None or other.at < self.at:
            return other
        return self

    def loop_time(self, loop: asyncio.AbstractEventLoop) -> float | None:
        """This deadline on ``loop.time()``'s clock (uvloop's differs from monotonic)."""
        remaining = self.remaining()
        return None if remaining is None else loop.time() + remaining

    def header_value(self, margin: float = 0.0) -> bytes | None:
        """Milliseconds remaining for the next hop, minus ``margin`` seconds: at least
        1, at most :data:`MAX_HEADER_MS` (a value the next hop can read)."""
        remaining = self.remaining()
        if remaining is None:
            return None
        return b"%d" % min(MAX_HEADER_MS, max(1, int((remaining - margin) * 1000)))


NO_DEADLINE: Final = Deadline()

_current: ContextVar[Deadline] = ContextVar("tether.deadline", default=NO_DEADLINE)


def current_deadline() -> Deadline:
    """The deadline of the work running in this context (``Deadline(None)`` if none)."""
    return _current.get()


def time_remaining() -> float | None:
    """Seconds left before the current deadline, or None if there is none."""
    return _current.get().remaining()


def set_deadline(deadline: Deadline) -> None:
    """Make ``deadline`` (narrowed by the current one) current for this context.

    For the server, at the start of a request's task; application code uses
    :func:`deadline_after` / :func:`deadline_at`, which also enforce it.
    """
    _current.set(_current.get().narrow(deadline))


@contextlib.asynccontextmanager
async def deadline_at(at: float | None) -> AsyncIterator[Deadline]:
    """Run the block under a deadline at monotonic time ``at`` (narrowed, never
    extended); raise :class:`DeadlineExceeded` if it passes inside the block."""
    deadline = _current.get().narrow(Deadline(at))
    token = _current.set(deadline)
    loop = asyncio.get_running_loop()
    try:
        if deadline.at is None:
            yield deadline
            return
        if deadline.expired:
            raise DeadlineExceeded("deadline already passed")
        scope = asyncio.timeout_at(deadline.loop_time(loop))
        try:
            async with scope:
                yield deadline
        except TimeoutError as exc:
            if isinstance(exc, DeadlineExceeded) or not scope.expired():
                raise  # someone else's timeout (an inner scope, a driver): not ours
            raise DeadlineExceeded(
                f"deadline exceeded ({_age(deadline):.3f}s past it)"
            ) from exc
    finally:
        _current.reset(token)


def deadline_after(seconds: float | None) -> contextlib.AbstractAsyncContextManager[Deadline]:
    """``async with deadline_after(2.0):`` -- at most 2 s more, and never past the
    deadline already in force."""
    return deadline_at(None if seconds is None else time.monotonic() + seconds)


def _age(deadline: Deadline) -> float:
    remaining = deadline.remaining()
    return 0.0 if remaining is None else -remaining


def no_cancel_on_disconnect(app: ASGIApp) -> ASGIApp:
    """Wrap an ASGI app (or one route's app) so tether does not cancel it when its
    client disconnects: for work that must finish once started (a payment, a write
    that is not idempotent). Its deadline still applies."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        extension = scope.get("extensions", {}).get("tether")
        if extension is not None:
            extension["cancel_on_disconnect"] = False
        await app(scope, receive, send)

    return wrapped


# -- wire codec ---------------------------------------------------------------------------


def parse_timeout_ms(value: bytes) -> float:
    """``x-request-timeout-ms: 250`` -> 0.25 seconds. Raises ValueError if malformed."""
    if not value.isdigit() or len(value) > 12:
        raise ValueError(f"invalid {HEADER} value {value[:32]!r}: expected milliseconds")
    return int(value) / 1000.0


def parse_grpc_timeout(value: bytes) -> float:
    """gRPC's ``grpc-timeout``: 1-8 digits and a unit (H M S m u n). Raises ValueError."""
    digits, unit = value[:-1], value[-1:] if value else b""
    if not (1 <= len(digits) <= 8 and digits.isdigit() and unit and unit[0] in _GRPC_UNITS):
        raise ValueError(f"invalid grpc-timeout value {value[:32]!r}")
    return int(digits) * _GRPC_UNITS[unit[0]]


def deadline_from_headers(
    headers: Iterable[tuple[bytes, bytes]], maximum: float = MAX_WIRE_SECONDS
) -> float | None:
    """Seconds allowed by the request's deadline headers (the smaller if both, and at
    most ``maximum``), or None.

    Header names must be lowercase (as in an ASGI scope). Raises ValueError.
    """
    seconds: float | None = None
    for name, value in headers:
        if name == HEADER_BYTES:
            found = parse_timeout_ms(value.strip())
        elif name == GRPC_HEADER_BYTES:
            found = parse_grpc_timeout(value.strip())
        else:
            continue
        seconds = found if seconds is None else min(seconds, found)
    return seconds if seconds is None or seconds <= maximum else maximum
