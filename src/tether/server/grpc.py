"""What tether says to a gRPC client when tether itself ends its call.

gRPC runs over HTTP/2 and reports every outcome in ``grpc-status`` trailers, with
HTTP status 200; an HTTP error status means "the server is not a gRPC server" to
a gRPC client. So when tether answers a gRPC request itself (the deadline passed,
the worker is stopping, the request was refused), it answers as gRPC does: a
trailers-only response (one HEADERS frame that ends the stream) carrying the
code below and the reason in ``grpc-message``.

Rules of this file (the table is the gRPC spec's "HTTP to gRPC status code
mapping", doc/http-grpc-status-mapping.md, except where tether knows better):

* 504 is tether's deadline (a grpc-timeout or x-request-timeout-ms that ran out):
  DEADLINE_EXCEEDED, as the issue of field report 1 demands end to end.
* 503 is overload or a stop: UNAVAILABLE, which gRPC clients retry elsewhere.
* 499 (the client left first) is CANCELLED; nobody reads it, but logs agree.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

#: gRPC status codes tether sends (google.rpc.Code)
OK: Final = 0
CANCELLED: Final = 1
UNKNOWN: Final = 2
INVALID_ARGUMENT: Final = 3
DEADLINE_EXCEEDED: Final = 4
RESOURCE_EXHAUSTED: Final = 8
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14
UNAUTHENTICATED: Final = 16
PERMISSION_DENIED: Final = 7

#: HTTP status of an answer tether gives itself -> the gRPC code a gRPC client gets
_BY_HTTP_STATUS: Final = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    408: DEADLINE_EXCEEDED,
    413: RESOURCE_EXHAUSTED,
    429: UNAVAILABLE,
    431: RESOURCE_EXHAUSTED,
    499: CANCELLED,
    501: UNIMPLEMENTED,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: DEADLINE_EXCEEDED,
}

GRPC_CONTENT_TYPE: Final = b"application/grpc"


def is_grpc(content_type: bytes | None) -> bool:
    """``application/grpc`` or ``application/grpc+proto`` etc. (not grpc-web)."""
    return content_type is not None and (
        content_type == GRPC_CONTENT_TYPE
        or content_type.startswith(b"application/grpc+")
        or content_type.startswith(b"application/grpc;"))


def code_for(http_status: int) -> int:
    """The gRPC code for an answer tether would otherwise give with ``http_status``."""
    return _BY_HTTP_STATUS.get(http_status, UNKNOWN if http_status < 500 else INTERNAL)


def status_fields(http_status: int, detail: str) -> list[tuple[bytes, bytes]]:
    """``grpc-status`` and ``grpc-message`` for an answer tether would otherwise give
    with ``http_status``."""
    return code_fields(code_for(http_status), detail)


def code_fields(code: int, message: str) -> list[tuple[bytes, bytes]]:
    """``grpc-status: code`` and ``grpc-message`` (percent-encoded, as the spec says)."""
    return [(b"grpc-status", b"%d" % code),
            (b"grpc-message", quote(message, safe=" !#$&'()*+,/:;=?@[]~").encode("ascii"))]
