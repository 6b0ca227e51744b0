"""Which HTTP/2 request fields are well-formed (RFC 9113 sections 8.2 and 8.3).

The ``h2`` library can check these itself (``validate_inbound_headers``), but it
runs a chain of generators over every field of every request: a fifth of the
server's time per HTTP/2 request. Clients send the same fields again and again
(HPACK exists because they do), so here a field is checked once and remembered,
and the pseudo-header rules are checked in the loop that reads the fields anyway
(``http2.Http2Connection._on_request``). A malformed request is a stream error of
type PROTOCOL_ERROR (section 8.1.1): the stream is reset, the connection goes on.

Rules (each is refused):

* a field name with a character outside the token set, or an upper-case letter
  (8.2: names are lower case in HTTP/2);
* a connection-specific field (8.2.2): ``connection``, ``keep-alive``,
  ``proxy-connection``, ``transfer-encoding``, ``upgrade``; ``te`` other than
  ``trailers``;
* a value with NUL, CR or LF, or starting or ending with a space or tab (8.2.1);
* a pseudo-header other than ``:method``, ``:scheme``, ``:authority``, ``:path``
  (``:protocol`` belongs to extended CONNECT, which is not served), twice, or after
  a regular field (8.3); a request without ``:method``, or without ``:scheme`` or
  ``:path`` when it is not CONNECT, or with an empty ``:path`` (8.3.1).
"""

from __future__ import annotations

import re
from typing import Final

PSEUDO_HEADERS: Final = frozenset({b":method", b":scheme", b":authority", b":path"})
_CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_BAD_NAME: Final = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]")
_BAD_VALUE: Final = re.compile(rb"[\x00\r\n]")
_EDGE_WHITESPACE: Final = (b" ", b"\t")

# Fields already found well-formed. Bounded: a client sending random fields only
# clears it (as http1.py's host cache).
_valid: set[tuple[bytes, bytes]] = set()
_VALID_MAX: Final = 4096


def invalid_field(field: tuple[bytes, bytes]) -> str | None:
    """Why a request field is malformed, or None. (A pseudo-header's name is the
    caller's to check: whether it is known, placed first and not repeated.)"""
    if field in _valid:
        return None
    name, value = field
    reason = _check(name, value)
    if reason is None:
        if len(_valid) >= _VALID_MAX:
            _valid.clear()
        _valid.add((bytes(name), bytes(value)))
    return reason


def _check(name: bytes, value: bytes) -> str | None:
    if not name or (_BAD_NAME.search(name) and name not in PSEUDO_HEADERS):
        return f"invalid field name {name[:64]!r}"
    if name in _CONNECTION_SPECIFIC:
        return f"connection-specific field {name.decode('latin-1')!r}"
    if name == b"te" and value != b"trailers":
        return "te other than 'trailers'"
    if _BAD_VALUE.search(value) or value.startswith(_EDGE_WHITESPACE) \
            or value.endswith(_EDGE_WHITESPACE):
        return f"invalid value of field {name[:64]!r}"
    return None
