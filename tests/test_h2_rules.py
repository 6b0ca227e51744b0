"""The pure HTTP/2 rules: which request fields are well-formed (``h2_fields``), and
the HPACK encoder without a dynamic table (``hpack_encoder``), decoded by the
``hpack`` library's decoder (the one h2, httpx and hypercorn use) as a real peer."""

from __future__ import annotations

import pytest
from hpack import Decoder

from tether.server import h2_fields
from tether.server.hpack_encoder import StaticTableEncoder, encode_field


@pytest.mark.parametrize("field", [
    (b"content-type", b"application/grpc"),
    (b"x-request-timeout-ms", b"250"),
    (b"te", b"trailers"),
    (b":path", b"/a?b=c"),
    (b"accept", b""),
])
def test_well_formed_fields_pass(field: tuple[bytes, bytes]) -> None:
    assert h2_fields.invalid_field(field) is None
    assert h2_fields.invalid_field(field) is None  # and again, from the cache


@pytest.mark.parametrize(("field", "why"), [
    ((b"Content-Type", b"x"), "invalid field name"),  # upper case (RFC 9113 8.2)
    ((b"x foo", b"x"), "invalid field name"),
    ((b"", b"x"), "invalid field name"),
    ((b":bogus", b"x"), "invalid field name"),
    ((b"connection", b"keep-alive"), "connection-specific"),
    ((b"transfer-encoding", b"chunked"), "connection-specific"),
    ((b"upgrade", b"h2c"), "connection-specific"),
    ((b"te", b"gzip"), "te other than"),
    ((b"x-a", b"evil\r\nx-b: 1"), "invalid value"),
    ((b"x-a", b"nul\x00"), "invalid value"),
    ((b"x-a", b" padded"), "invalid value"),
    ((b"x-a", b"padded\t"), "invalid value"),
])
def test_malformed_fields_are_named(field: tuple[bytes, bytes], why: str) -> None:
    reason = h2_fields.invalid_field(field)
    assert reason is not None and why in reason
    assert h2_fields.invalid_field(field) is not None  # never cached as valid


FIELDS = [
    (b":status", b"200"),  # static table, name and value: one byte
    (b":status", b"418"),  # static name, other value
    (b"content-type", b"application/grpc"),
    (b"content-length", b"13"),
    (b"server", b"tether"),
    (b"grpc-status", b"4"),  # not in the static table at all
    (b"x-long-" + b"n" * 300, b"v" * 5000),  # multi-byte integers
    (b"www-authenticate", b"Basic"),  # static index 61, past the 4-bit prefix
]


def test_the_encoder_is_read_back_by_a_real_decoder_block_after_block() -> None:
    encoder, decoder = StaticTableEncoder(), Decoder()
    first = encoder.encode(FIELDS)
    assert first[:1] == b"\x20"  # dynamic table size update to 0, once
    for block in (first, encoder.encode(FIELDS), encoder.encode(list(reversed(FIELDS)))):
        decoded = [tuple(field) for field in decoder.decode(block, raw=True)]
        assert decoded in (FIELDS, list(reversed(FIELDS)))
    assert decoder.header_table_size == 0  # nothing was ever indexed
    assert encode_field(b":status", b"200") == b"\x88"
