"""HTTP/1.1 response framing and the keep-alive decision: pure functions, no I/O.

Rules (RFC 9112 section 6): a response that may not have a body (1xx, 204, 304, a
reply to HEAD) is never framed; a body the application declared (Content-Length,
or Transfer-Encoding: chunked) is framed as declared; a body whose whole length
is known when the head goes out gets a Content-Length (one write, reusable
connection); an open-ended body is chunked on HTTP/1.1 and delimited by the close
on HTTP/1.0. This file never decides *what* to send, only how it is delimited,
and never touches a socket. HTTP/2 frames bodies itself and does not use it.
"""

from __future__ import annotations

import enum
from typing import Final

NO_BODY_STATUS: Final = frozenset({204, 304})


class Framing(enum.Enum):
    """How a response body is delimited on an HTTP/1.1 connection."""

    DECLARED = "declared"  # no body allowed, or the application chose the framing
    LENGTH = "length"  # the whole body is known: tether adds Content-Length
    CHUNKED = "chunked"  # open-ended body on HTTP/1.1: tether adds chunked coding
    CLOSE = "close"  # open-ended body on HTTP/1.0: the close delimits it
    NONE = "none"  # a reply to HEAD whose length is unknown: nothing to delimit


# Enum members bound once: attribute access on an Enum class costs ~90 ns on 3.11,
# and the framing is chosen for every response.
DECLARED: Final = Framing.DECLARED
LENGTH: Final = Framing.LENGTH
CHUNKED: Final = Framing.CHUNKED
CLOSE: Final = Framing.CLOSE
NONE: Final = Framing.NONE


def may_have_body(status: int, head_request: bool) -> bool:
    """RFC 9110 section 6.4.1: 1xx, 204, 304 and replies to HEAD carry no body."""
    return not (status < 200 or status in NO_BODY_STATUS or head_request)


def choose_framing(
    status: int,
    declared: bool,
    head_request: bool,
    http_version: str,
    first_body: bytes,
    more: bool,
) -> Framing:
    """The framing, chosen when the head goes out with the first body chunk known.

    ``declared``: the application sent Content-Length or Transfer-Encoding itself.
    (Positional arguments: this runs once per response.)
    """
    if declared or status < 200 or status in NO_BODY_STATUS:
        return DECLARED
    if not more and not (head_request and not first_body):
        return LENGTH
    if head_request:
        return NONE
    if http_version == "1.1":
        return CHUNKED
    return CLOSE


def keeps_alive(
    requested: bool, framing: Framing, body_unsent_for_100: bool, draining: bool
) -> bool:
    """Whether the connection may carry another request after this response.

    ``requested``: the request allowed it (version, ``Connection``) and the
    application did not ask to close. ``body_unsent_for_100``: the client is
    holding its body back for a ``100 Continue`` that was never sent, so its next
    bytes may be that body, not a request. A draining worker closes every
    connection after its current response (``Connection: close``).
    """
    return requested and framing is not CLOSE and not body_unsent_for_100 and not draining


def chunk(body: bytes, more: bool) -> bytes:
    """One chunk of a chunked body; the last one carries the terminating zero chunk."""
    if body:
        body = b"%x\r\n%s\r\n" % (len(body), body)
    return body if more else body + b"0\r\n\r\n"
