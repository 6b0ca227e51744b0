"""The rules a request head must satisfy before any application sees it: pure
functions from header bytes to values or a :class:`RequestRejected`, no I/O.

Rules of this file (h11's habit: the rules first, then the code):

* Every rule cites the RFC section it enforces and the status it answers with;
  each returns a value or raises :class:`RequestRejected`, nothing else.
* This file does not know which protocol carried the head: HTTP/1.1 applies the
  framing rules (Content-Length, Transfer-Encoding, versions); every protocol
  applies the target, Host and deadline rules.
* Nothing here allocates on the common path that it can avoid: an origin-form
  target without ``%`` or ``#`` is split with two ``partition`` calls.

    request line   -> check_version (505), split_target (400 unless origin-,
                      absolute- or asterisk-form; fragment dropped; OPTIONS * is
                      ServerOptions: 200 from the server itself)
    header fields  -> field_value (OWS trimmed), content_length (400/413),
                      transfer_coding (501 unknown), check_framing (400 on HTTP/1.0),
                      check_hosts (400: none on 1.1, or two), check_host (400)
    deadline       -> request_deadline (400 on a bad value, narrowed by the server)
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

import httptools

from tether.deadline import MAX_WIRE_SECONDS, NO_DEADLINE, Deadline, deadline_from_headers

#: HTTP versions an HTTP/1.x connection speaks (RFC 9112 section 2.3)
HTTP1_VERSIONS: Final = frozenset({"1.0", "1.1"})
_OWS: Final = b" \t"
_SCHEMES: Final = frozenset({b"http", b"https", b"HTTP", b"HTTPS"})
#: uri-host [ ":" port ]: IP-literal, or reg-name / IPv4 (RFC 3986 section 3.2.2)
_HOST: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?"
)


class RequestRejected(Exception):
    """Input the server answers itself, before or instead of the application."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        #: the refused request's method and target for the access log, when the
        #: protocol had read them (filled in by the connection, not by the rules)
        self.method: str | None = None
        self.target: str | None = None


class ServerOptions(Exception):
    """``OPTIONS *``: a question to the server itself, not to a resource (RFC 9110
    section 9.3.7, "a ping"). Not an error: the protocol answers it with
    ``cycle.ServerOptionsCycle`` (200, keep-alive, no application, no access line).
    Raised by :func:`split_target` because it has no path to return."""


def check_version(http_version: str) -> None:
    """RFC 9110 section 15.6.6: a version this connection does not speak is 505
    (an ``HTTP/2.0`` request line over HTTP/1.1 framing is not HTTP/2)."""
    if http_version not in HTTP1_VERSIONS:
        raise RequestRejected(505, f"HTTP version {http_version} not supported")


def field_value(value: bytes) -> bytes:
    """RFC 9110 section 5.5: leading and trailing whitespace (SP, HTAB) around a
    field value is not part of it."""
    if value and (value[-1] in _OWS or value[0] in _OWS):
        return value.strip(_OWS)
    return value


def content_length(value: bytes, limit: int | None) -> int:
    """RFC 9112 section 6.3: a Content-Length that is not a number is faulty framing
    (400); one above the configured body limit is refused before the body (413)."""
    try:
        length = int(value)
    except ValueError:
        raise RequestRejected(400, "Invalid Content-Length") from None
    if limit is not None and length > limit:
        raise RequestRejected(413, f"Request body larger than {limit} bytes")
    return length


def transfer_coding(value: bytes) -> None:
    """RFC 9112 section 6.1: a server that does not understand a transfer coding
    answers 501 (httptools would decode ``gzip, chunked`` as plain chunked)."""
    for coding in value.lower().split(b","):
        if coding.strip() not in (b"chunked", b""):
            raise RequestRejected(
                501, f"Transfer-Encoding {value.decode('latin-1')!r} not implemented"
            )


def check_framing(http_version: str, chunked: bool) -> None:
    """RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0 request is faulty
    framing (a 1.0 intermediary may have ignored it): 400, and the connection closes."""
    if chunked and http_version == "1.0":
        raise RequestRejected(400, "Transfer-Encoding in an HTTP/1.0 request")


def check_hosts(http_version: str, host_count: int) -> None:
    """RFC 9112 section 3.2: an HTTP/1.1 request without Host, or any request with
    more than one, is answered 400 (two hosts let a proxy and an origin disagree on
    where a request goes)."""
    if host_count > 1:
        raise RequestRejected(400, "More than one Host header")
    if host_count == 0 and http_version == "1.1":
        raise RequestRejected(400, "Missing Host header")


def check_host(value: bytes) -> None:
    """RFC 9112 section 3.2 and RFC 3986 section 3.2.2: Host is ``host[:port]`` (a
    name, an IPv4 address or a bracketed IPv6 address; empty is allowed); anything
    else (userinfo, a path, spaces, a second colon) is 400."""
    if _HOST.fullmatch(value) is None:
        raise RequestRejected(400, "Invalid Host header")


def check_head(http_version: str, chunked: bool, host_count: int) -> None:
    """The request-line and framing rules above, in one call (the caller skips it
    for the common HTTP/1.1 request with exactly one Host)."""
    check_version(http_version)
    check_framing(http_version, chunked)
    check_hosts(http_version, host_count)


def split_target(target: bytes, method: bytes) -> tuple[str, bytes, bytes]:
    """(path, raw_path, query_string) of a request target (RFC 9112 section 3.2).

    Origin-form (``/a?b``) is by far the common case: the parser has checked its
    characters already. Absolute-form (``http://h/a``, section 3.2.2) is accepted,
    as a server must, and yields only its path: the host it names is never used to
    decide where anything connects, and one with userinfo (``http://u@h/``) is
    refused. Asterisk-form (``*``) is for OPTIONS only, and the server answers it
    (:class:`ServerOptions`): it never reaches the application. Anything else, such as
    ``*@127.0.0.1:9/secret`` (which a proxy gluing strings would have turned into
    userinfo), is 400, as nginx answers. A ``#fragment`` is never part of a target
    (clients must not send it, servers drop it): it reaches neither path nor query.
    """
    if target[:1] == b"/":
        # (find, not ``b"#" in target``: bytes containment first tries the needle as
        # an int and builds a TypeError for every request)
        fragment = target.find(b"#")
        if fragment != -1:
            target = target[:fragment]
        raw_path, _, query = target.partition(b"?")
    elif target == b"*":
        if method != b"OPTIONS":
            raise RequestRejected(400, "Invalid request target: '*' is for OPTIONS only")
        raise ServerOptions()
    else:
        try:
            url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            raise RequestRejected(400, "Invalid request target") from None
        if url.schema not in _SCHEMES or not url.host or url.userinfo:
            raise RequestRejected(400, "Invalid request target")
        raw_path = url.path or b"/"
        query = url.query or b""
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        path = raw_path.decode("utf-8", "replace")
    if "%" in path:
        path = unquote(path)
    return path, raw_path, query


def request_deadline(
    deadline_headers: list[tuple[bytes, bytes]], cap: float | None,
    maximum: float = MAX_WIRE_SECONDS,
) -> Deadline:
    """The request's deadline: its headers' (``x-request-timeout-ms``,
    ``grpc-timeout``, at most ``maximum``), narrowed by the server's own limit
    (``cap``, --request-timeout). A value that cannot be read is 400: guessing
    would either drop the deadline or invent one."""
    seconds = None
    if deadline_headers:
        try:
            seconds = deadline_from_headers(deadline_headers, maximum)
        except ValueError as exc:
            raise RequestRejected(400, str(exc)) from None
    if cap is not None and (seconds is None or cap < seconds):
        seconds = cap
    return NO_DEADLINE if seconds is None else Deadline.after(seconds)
