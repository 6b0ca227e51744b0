"""The proxy's header rules (rule 2 of tether.proxy) as pure functions: what goes
upstream, the request's framing read in the same pass, and what comes back."""

from __future__ import annotations

from typing import Any

import pytest

from tether.client.errors import LocalProtocolError
from tether.errors import ConfigError
from tether.proxy import (
    BUFFER_LIMIT,
    VIA,
    HopFields,
    framed_fields,
    request_line,
    response_head,
    response_headers,
    upstream_request_head,
)
from tether.proxy_config import Route
from tether.server import wire

NO_HOP = HopFields((), b"")


def upstream_head(
    scope: dict[str, Any], host_override: str | None
) -> tuple[list[tuple[bytes, bytes]], bytes | None, bool]:
    """upstream_request_head's headers in the order they go upstream."""
    copied, hop, length, chunked = upstream_request_head(scope, host_override)
    lines = b"".join(b"%s: %s\r\n" % field for field in hop.pairs)
    assert hop.lines == lines  # the rendered lines say what the pairs say
    return [*copied, *hop.pairs], length, chunked


def scope(*headers: tuple[bytes, bytes], client: str = "10.0.0.7") -> dict[str, Any]:
    return {"type": "http", "scheme": "http", "client": (client, 5555),
            "headers": list(headers)}


def test_hop_by_hop_and_connection_named_headers_stay_behind() -> None:
    head, length, chunked = upstream_head(scope(
        (b"host", b"shop.example"), (b"connection", b"keep-alive, X-Secret"),
        (b"x-secret", b"1"), (b"keep-alive", b"timeout=5"), (b"te", b"trailers"),
        (b"transfer-encoding", b"chunked"), (b"x-request-timeout-ms", b"900"),
        (b"accept", b"*/*"), (b"accept", b"text/html"), (b"x-forwarded-proto", b"https"),
    ), None)
    names = [n for n, _ in head]
    assert names == [b"host", b"accept", b"accept", b"x-forwarded-proto",
                     b"x-forwarded-host", b"x-forwarded-for", b"forwarded", b"via"]
    assert dict(head)[b"x-forwarded-proto"] == b"http"  # set, never the client's
    assert (length, chunked) == (None, True)


def test_chains_get_this_hop_last_and_the_host_override_replaces_host() -> None:
    head, length, chunked = upstream_head(scope(
        (b"Host", b"shop.example"), (b"X-Forwarded-For", b"1.2.3.4"),
        (b"forwarded", b"for=1.2.3.4"), (b"via", b"1.1 edge"), (b"content-length", b"12"),
        (b"content-length", b"13"),
    ), "orders.internal")
    fields = dict(head)
    assert fields[b"x-forwarded-for"] == b"1.2.3.4, 10.0.0.7"
    assert fields[b"forwarded"] == b'for=1.2.3.4, for=10.0.0.7;proto=http;host="shop.example"'
    assert fields[b"via"] == b"1.1 edge, " + VIA
    assert [v for n, v in head if n == b"host"] == [b"orders.internal"]
    assert (length, chunked) == (b"12", False)  # the first Content-Length


def test_a_chain_named_in_connection_is_dropped_but_this_hop_still_added() -> None:
    head, _, _ = upstream_head(scope(
        (b"connection", b"X-Forwarded-For"), (b"x-forwarded-for", b"6.6.6.6")), None)
    assert dict(head)[b"x-forwarded-for"] == b"10.0.0.7"


def test_response_headers_drop_hop_by_hop_and_append_via() -> None:
    out = response_headers([(b"Content-Type", b"text/plain"),
                            (b"Connection", b"close, X-Resp"), (b"X-Resp", b"1"),
                            (b"Keep-Alive", b"timeout=5"), (b"Via", b"1.1 app"),
                            (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")])
    assert out == [(b"content-type", b"text/plain"), (b"set-cookie", b"a=1"),
                   (b"set-cookie", b"b=2"), (b"via", b"1.1 app, " + VIA)]


def test_the_upstream_head_carries_the_framing_the_client_sent() -> None:
    fields = [(b"host", b"shop.example"), (b"accept", b"*/*")]
    lines, declared = framed_fields(fields, NO_HOP, "GET", None, False)
    assert lines == b"host: shop.example\r\naccept: */*\r\n" and declared is None
    # a streamed body the client sent chunked goes chunked (its Transfer-Encoding was
    # hop-by-hop); a POST without a body says so
    assert framed_fields(fields, NO_HOP, "POST", None, True)[0].endswith(
        b"transfer-encoding: chunked\r\n")
    assert framed_fields(fields, NO_HOP, "POST", None, False)[0].endswith(b"content-length: 0\r\n")
    # a body over the buffer limit streams with its length, which it must then match
    length = [*fields, (b"content-length", b"100000")]
    assert framed_fields(length, NO_HOP, "PUT", b"100000", False)[1] == 100000
    held = [*length[:2], (b"content-length", b"12")]
    assert framed_fields(held, NO_HOP, "PUT", b"12", False)[1] \
        is None  # read whole before sending: no length to hold it to


@pytest.mark.parametrize("field", [
    (b"x-a", b"1\r\nx-injected: 1"), (b"x-a", b"1\nx-injected: 1"), (b"x-a\r\nx-b", b"1"),
])
def test_a_field_that_could_end_its_line_is_refused(field: tuple[bytes, bytes]) -> None:
    # (CR alone and NUL never get this far: both servers' parsers refuse them)
    with pytest.raises(LocalProtocolError):
        framed_fields([(b"host", b"h"), field], NO_HOP, "GET", None, False)


@pytest.mark.parametrize("host", ["", "a b", "a\r\nx-injected: 1", "nul\0"])
def test_a_route_host_that_is_no_host_name_is_a_config_error(host: str) -> None:
    with pytest.raises(ConfigError, match="host"):
        Route("/", "up", host=host)


def test_the_request_line_is_origin_form_only() -> None:
    assert request_line("GET", "/a/b?x=1") == b"GET /a/b?x=1 HTTP/1.1\r\n"
    for bad in ("http://elsewhere/", "/a b", "/a\r\nx"):
        with pytest.raises(LocalProtocolError):
            request_line("GET", bad)


def test_the_response_head_is_rendered_with_its_length_and_the_defaults_it_replaces() -> None:
    (lines, length, overridden), small = response_head([
        (b"Content-Type", b"text/plain"), (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
        (b"Server", b"app"), (b"Content-Length", b"5"), (b"Transfer-Encoding", b"x")])
    assert lines == (b"content-type: text/plain\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
                     b"server: app\r\ncontent-length: 5\r\nvia: " + VIA + b"\r\n")
    assert length == 5 and small
    assert overridden == wire.DATE_BIT | wire.SERVER_BIT  # the server leaves its own out
    # a length Connection names is hop-by-hop: no length, and the body streams
    (lines, length, overridden), small = response_head([
        (b"Connection", b"content-length, server"), (b"Content-Length", b"5"),
        (b"Server", b"app")])
    assert (lines, length, overridden, small) == (b"via: " + VIA + b"\r\n", None, 0, False)
    # over the buffer limit: streamed
    assert response_head([(b"content-length", b"%d" % (BUFFER_LIMIT + 1))])[1] is False


def test_this_hops_fields_are_rendered_once_per_peer_and_host() -> None:
    first = upstream_request_head(scope((b"host", b"a.example")), None)[1]
    again = upstream_request_head(scope((b"host", b"a.example")), None)[1]
    other = upstream_request_head(scope((b"host", b"a.example"), client="10.0.0.8"), None)[1]
    assert again is first and other is not first
    assert dict(other.pairs)[b"x-forwarded-for"] == b"10.0.0.8"
