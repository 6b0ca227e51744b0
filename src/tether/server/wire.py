"""Bytes tether writes on the wire that do not depend on a request: status lines,
the Date header, canned error responses, and response-header validation.

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
HEADER_DATE = 4

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
    if lname == b"date":
        return HEADER_DATE, line, 0
    return HEADER_PLAIN, line, 0


#: what tether's own error responses are made of: :func:`error_response` here, and the
#: answers server/frameworks.py gives in a Starlette app on tether's behalf
ERROR_CONTENT_TYPE = b"text/plain; charset=utf-8"
#: seconds a 503's ``Retry-After`` asks the client to wait
RETRY_AFTER = b"1"


def error_body(detail: str) -> bytes:
    return detail.encode("utf-8", "replace") + b"\n"


def error_response(status: int, detail: str, date: bytes, extra: bytes = b"") -> bytes:
    """A complete ``text/plain`` response that closes the connection."""
    body = error_body(detail)
    return b"".join(
        (
            status_line(status),
            b"content-type: " + ERROR_CONTENT_TYPE + b"\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
            extra,
            date,
            b"\r\n",
            body,
        )
    )


#: What ``OPTIONS *`` is allowed to ask about: every method tether serves.
SERVER_OPTIONS_ALLOW = b"allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"


def server_options_response(date: bytes) -> bytes:
    """The server's own answer to ``OPTIONS *`` (RFC 9110 section 9.3.7): 200, the
    methods served, no body; the connection closes after it, as after a rejection."""
    return b"".join((STATUS_LINES[200], SERVER_OPTIONS_ALLOW, b"content-length: 0\r\n",
                     b"connection: close\r\n", date, b"\r\n"))
