"""An HPACK encoder for responses that never uses the dynamic table.

The ``hpack`` library's encoder (what ``h2`` uses by default) searches and grows the
dynamic table field by field on every header block: a sixth of the server's time
per HTTP/2 response. RFC 7541 lets an encoder index nothing (section 6.2.2,
"literal header field without indexing"), and a response's fields are the same
few again and again (the application's, ``server``, ``date`` for a second), so
this encoder renders each distinct field once and a header block is a join of
cached bytes. It keeps no state that a header block changes, so the cache is
always right.

Rules:

* a field in the static table with its value is one indexed byte (6.1);
* a field whose name is in the static table is a literal without indexing that
  names it by index (6.2.2); any other field a literal without indexing with its
  name spelled out; strings are sent raw, not Huffman-coded (5.2: both allowed);
* the first block of a connection begins with a dynamic table size update to 0
  (6.3): the client's decoder may then free its table, and nothing here refers
  to one. Later SETTINGS_HEADER_TABLE_SIZE changes need no update: an encoder may
  use any size up to the decoder's limit, and 0 always is.

The connection swaps it in for h2's (``H2Connection.encoder``); h2 calls only
:meth:`encode` and sets :attr:`header_table_size`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from hpack.table import HeaderTable

_STATIC_FIELDS: Final = {
    (name, value): index for index, (name, value) in enumerate(HeaderTable.STATIC_TABLE, 1)}
_STATIC_NAMES: Final[dict[bytes, int]] = {}
for _index, (_name, _) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_NAMES.setdefault(_name, _index)

#: a dynamic table size update to 0 (001 prefix, 5-bit integer 0)
TABLE_SIZE_ZERO: Final = b"\x20"

_cache: dict[tuple[bytes, bytes], bytes] = {}
_CACHE_MAX: Final = 4096


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1: ``value`` in a ``prefix_bits`` prefix of a byte whose other
    bits are ``first``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes) -> bytes:
    return _integer(len(value), 7, 0) + value


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field as this encoder writes it (see the rules above)."""
    index = _STATIC_FIELDS.get((name, value))
    if index is not None:
        return bytes([0x80 | index])
    name_index = _STATIC_NAMES.get(name)
    if name_index is not None:
        return _integer(name_index, 4, 0) + _string(value)
    return b"\x00" + _string(name) + _string(value)


class StaticTableEncoder:
    """What h2 needs of an HPACK encoder, without a dynamic table."""

    __slots__ = ("_first", "header_table_size")

    def __init__(self) -> None:
        self._first = True
        #: set by h2 when the client's SETTINGS_HEADER_TABLE_SIZE changes (unused:
        #: nothing is ever indexed)
        self.header_table_size = 4096

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        cache = _cache
        parts = []
        if self._first:
            self._first = False
            parts.append(TABLE_SIZE_ZERO)
        for field in headers:
            encoded = cache.get(field)
            if encoded is None:
                name, value = field
                encoded = encode_field(bytes(name), bytes(value))
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[(bytes(name), bytes(value))] = encoded
            parts.append(encoded)
        return b"".join(parts)
