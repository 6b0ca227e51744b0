"""Bytes tether writes on the wire that do not depend on a request: status lines,
the Date header, the default response headers, canned error responses, and
response-header validation.

Must never allocate per request what can be computed once (status lines, the
Date header, which changes once a second).
"""

from __future__ import annotations

import re
from email.utils import formatdate
from http import HTTPStatus

STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in HTTPStatus
}
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

# RFC 9110 section 5.6.2: a field name is a token. Anything else (CR, LF, space, colon)
# would let an application split the response, so it is refused.
_INVALID_NAME = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
# RFC 9110 section 5.5: field values are visible characters, spaces and tabs; CR, LF and
# NUL in particular must never reach the wire.
_INVALID_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def date_header() -> bytes:
    """The ``date`` header line for now; the worker refreshes it once a second."""
    return b"date: " + formatdate(usegmt=True).encode("ascii") + b"\r\n"


def invalid_header(name: bytes, value: bytes) -> str | None:
    """Return why an application-supplied header may not be sent, or None if it may."""
    if not name or _INVALID_NAME.search(name):
        return f"invalid header name {name!r}"
    if _INVALID_VALUE.search(value):
        return f"invalid value for header {name!r}"
    return None


# What a response header means to the framing; see render_header.
HEADER_PLAIN = 0
HEADER_CONTENT_LENGTH = 1
HEADER_TRANSFER_ENCODING = 2
HEADER_CONNECTION = 3
#: a header tether would add itself (date, server, a --header name): the application's
#: own wins, so the cycle leaves tether's out; the argument is the name's bit
HEADER_DEFAULTED = 4

# Every header name tether may add by default has one bit; render_header returns it so
# the cycle learns which defaults the application overrode by OR-ing ints (no name
# comparisons per response). --header names get the next bits at startup.
DATE_BIT = 1
SERVER_BIT = 2
#: the bit of each default header name (updated in place at startup, when ``--header``
#: names get theirs: a reference to it stays valid)
DEFAULT_BITS: dict[bytes, int] = {b"date": DATE_BIT, b"server": SERVER_BIT}
#: what ``--server-header`` sends (no version: it would tell scanners what to try)
SERVER_HEADER = b"server: tether\r\n"
#: names ``--header`` may not set: tether frames every response and manages the
#: connection itself, and the date is ``--date-header``'s
FORBIDDEN_DEFAULTS = frozenset({"content-length", "transfer-encoding", "connection", "date"})

#: A key of ``http.response.start`` that tether's own proxy uses instead of
#: ``headers``: (header lines, Content-Length or None, bits of DEFAULT_BITS those
#: lines set). The lines are rendered ("name: value\r\n", names lower-cased) and
#: already checked (they come from tether's client parser, which refuses what
#: render_header would, and the proxy drops Transfer-Encoding and Connection); the
#: server writes them as they are. Internal: not an ASGI extension for applications.
CHECKED_HEAD = "tether.checked_head"
CheckedHead = tuple[bytes, "int | None", int]

RenderedHeader = tuple[int, bytes, int]
_rendered: dict[tuple[bytes, bytes], RenderedHeader] = {}
_RENDERED_MAX = 4096


def render_header(name: bytes, value: bytes) -> RenderedHeader:
    """(kind, wire line, argument) for an application header; raises ValueError if it
    may not be sent. ``argument`` is the Content-Length, or 1 when Transfer-Encoding
    says chunked / Connection says close.

    Applications send the same header objects again and again, so the validated
    result is cached by value: most responses skip the regexes entirely.
    """
    key = (name, value)
    try:
        hit = _rendered.get(key)
    except TypeError:  # unhashable (a bytearray): validate without caching
        return _render(name, value)
    if hit is None:
        hit = _render(name, value)
        if len(_rendered) >= _RENDERED_MAX:
            _rendered.clear()
        _rendered[key] = hit
    return hit


def _render(name: bytes, value: bytes) -> RenderedHeader:
    reason = invalid_header(name, value)
    if reason is not None:
        raise ValueError(reason)
    lname = name.lower()
    line = bytes(name) + b": " + bytes(value) + b"\r\n"
    if lname == b"content-length":
        try:
            length = int(value)
        except ValueError:
            raise ValueError(f"invalid Content-Length {value!r}") from None
        if length < 0:
            raise ValueError(f"invalid Content-Length {value!r}")
        return HEADER_CONTENT_LENGTH, line, length
    if lname == b"transfer-encoding":
        return HEADER_TRANSFER_ENCODING, line, int(b"chunked" in value.lower())
    if lname == b"connection":
        return HEADER_CONNECTION, line, int(b"close" in value.lower())
    bit = DEFAULT_BITS.get(lname)
    if bit is not None:
        return HEADER_DEFAULTED, line, bit
    return HEADER_PLAIN, line, 0


#: what tether's own error responses are made of: :func:`error_response` here, and the
#: answers server/frameworks.py gives in a Starlette app on tether's behalf
ERROR_CONTENT_TYPE = b"text/plain; charset=utf-8"
#: seconds a 503's ``Retry-After`` asks the client to wait
RETRY_AFTER = b"1"


def error_body(detail: str) -> bytes:
    return detail.encode("utf-8", "replace") + b"\n"


class ResponseDefaults:
    """The header lines tether adds to every response it writes (``--server-header``,
    ``--header``; the ``date`` line is the worker's, refreshed once a second).

    Rendered to bytes once at startup: a response whose application sent none of
    these names gets :attr:`static` appended whole. The rare response that sets one
    itself gets :meth:`without` (the application's header wins, never a duplicate).
    """

    __slots__ = ("date", "lines", "static")

    def __init__(
        self, *, server: bool = True, date: bool = True,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        #: tether adds a ``date`` header (``--date-header``)
        self.date = date
        lines: list[tuple[int, bytes]] = []
        names = {name.lower() for name, _ in headers}
        if server and "server" not in names:  # --header server:X replaces ours
            lines.append((SERVER_BIT, SERVER_HEADER))
        for name, value in headers:
            reason = invalid_default_header(name, value)
            if reason is not None:
                raise ValueError(reason)
            lname = name.lower().encode("ascii")
            lines.append((_default_bit(lname), f"{name}: {value}\r\n".encode("latin-1")))
        #: (bit of the name, wire line) of each default header, in order
        self.lines = tuple(lines)
        #: every line at once: what almost every response gets
        self.static = b"".join(line for _, line in lines)

    def without(self, overridden: int) -> bytes:
        """The default lines whose names are not in the ``overridden`` bit set."""
        return b"".join(line for bit, line in self.lines if not bit & overridden)


def invalid_default_header(name: str, value: str) -> str | None:
    """Why ``--header NAME:VALUE`` may not be sent with every response, or None."""
    try:
        raw_name, raw_value = name.encode("ascii"), value.encode("latin-1")
    except UnicodeEncodeError:
        return f"header {name!r} must be ASCII (name) and Latin-1 (value)"
    reason = invalid_header(raw_name, raw_value)
    if reason is not None:
        return reason
    if name.lower() in FORBIDDEN_DEFAULTS:
        return f"tether sets {name!r} itself" + (
            " (use --date-header/--no-date-header)" if name.lower() == "date" else "")
    return None


def _default_bit(lname: bytes) -> int:
    """The bit of a default header name, given a new one at startup if needed."""
    bit = DEFAULT_BITS.get(lname)
    if bit is None:
        bit = DEFAULT_BITS[lname] = 1 << len(DEFAULT_BITS)
        _rendered.clear()  # results cached before may have this name as a plain header
    return bit


def error_response(status: int, detail: str, defaults: bytes, extra: bytes = b"") -> bytes:
    """A complete ``text/plain`` response that closes the connection. ``defaults``
    are the header lines every response carries (ServerState.default_head: date,
    server, ``--header``)."""
    body = error_body(detail)
    return b"".join(
        (
            status_line(status),
            b"content-type: " + ERROR_CONTENT_TYPE + b"\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
            extra,
            defaults,
            b"\r\n",
            body,
        )
    )
