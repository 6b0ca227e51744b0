"""The proxy-header rules of ``tether.server.forwarded`` (pure: no sockets).

Proved here: ``--forwarded-allow-ips`` parsing (addresses, networks, ``*``, bad
entries refused by name, IPv4-mapped IPv6 peers); the X-Forwarded-For walk from
the right (trusted hops skipped, first untrusted is the client, all trusted: the
leftmost, uvicorn's rule); X-Forwarded-Proto/-Host/-Prefix; RFC 7239 Forwarded
(quoted values, IPv6, ports, ``unknown``, the client's element gives proto and
host); X-Forwarded-For wins over Forwarded; malformed values change nothing and
never raise (hypothesis).
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.config import ServerConfig
from tether.errors import ConfigError
from tether.server.forwarded import (
    FIELD_NAMES,
    ForwardedView,
    TrustList,
    parse_forwarded,
    resolve,
)

LOCAL = TrustList.parse("127.0.0.1")


def expected(client: tuple[str, int] | None = None, scheme: str | None = None,
         server: tuple[str, int | None] | None = None, prefix: str | None = None,
         raw_prefix: bytes | None = None) -> ForwardedView:
    """The view expected, its log label derived from ``client``."""
    label = f"{client[0]}:{client[1]}" if client is not None else None
    return ForwardedView(client, scheme, server, prefix, raw_prefix, label)


def xff(value: str, **others: str) -> list[tuple[bytes, bytes]]:
    fields = [(b"x-forwarded-for", value.encode("latin-1"))]
    for name, text in others.items():
        fields.append((b"x-forwarded-" + name.encode(), text.encode("latin-1")))
    return fields


def fwd(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"forwarded", value.encode("latin-1"))]


# -- the trust list ------------------------------------------------------------------------


def test_trust_list_addresses_networks_and_everyone() -> None:
    trust = TrustList.parse(" 10.0.0.1 , 192.168.0.0/16,::1,fd00::/8 ")
    assert trust.trusts("10.0.0.1") and trust.trusts("192.168.7.9")
    assert trust.trusts("::1") and trust.trusts("fd12::3")
    assert not trust.trusts("10.0.0.2") and not trust.trusts("127.0.0.1")
    assert not trust.trusts(None)  # a Unix socket peer: only "*" trusts it
    assert not trust.trusts("not-an-address")
    everyone = TrustList.parse("*")
    assert everyone.trusts("203.0.113.9") and everyone.trusts(None)
    # A network written with host bits is taken as its network (as ipaddress strict=False).
    assert TrustList.parse("127.0.0.1/8").trusts("127.9.9.9")


def test_a_dual_stack_socket_sees_ipv4_peers_as_mapped_addresses() -> None:
    assert LOCAL.trusts("::ffff:127.0.0.1")
    assert not LOCAL.trusts("::ffff:127.0.0.2")


@pytest.mark.parametrize("text", ["localhost", "10.0.0.300", "10.0.0.0/33", "1.2.3.4,nope"])
def test_a_bad_entry_is_a_config_error_naming_the_option(text: str) -> None:
    with pytest.raises(ValueError):
        TrustList.parse(text)
    with pytest.raises(ConfigError, match="--forwarded-allow-ips"):
        ServerConfig(app="m:a", forwarded_allow_ips=text)


def test_the_settings_survive_the_trip_to_a_worker() -> None:
    config = ServerConfig(app="m:a", proxy_headers=False, forwarded_allow_ips="10.0.0.0/8")
    again = ServerConfig.from_json(config.to_json())
    assert again.proxy_headers is False and again.forwarded_allow_ips == "10.0.0.0/8"
    assert again.forwarded_trust is None
    assert ServerConfig(app="m:a").forwarded_trust is not None


# -- X-Forwarded-* -------------------------------------------------------------------------


def test_the_client_is_the_first_untrusted_hop_from_the_right() -> None:
    trust = TrustList.parse("127.0.0.1, 10.0.0.0/8")
    view = resolve(trust, xff("203.0.113.7, 198.51.100.1, 10.1.1.1, 127.0.0.1"))
    assert view is not None and view.client == ("198.51.100.1", 0)
    # A client cannot prepend its way past the hops: the spoofed left part is ignored.
    view = resolve(trust, xff("6.6.6.6, 203.0.113.7"))
    assert view is not None and view.client == ("203.0.113.7", 0)


def test_all_hops_trusted_means_the_leftmost_and_star_trusts_all() -> None:
    view = resolve(LOCAL, xff("127.0.0.1, 127.0.0.1"))
    assert view is not None and view.client == ("127.0.0.1", 0)
    view = resolve(TrustList.parse("*"), xff("203.0.113.7, 198.51.100.1"))
    assert view is not None and view.client == ("203.0.113.7", 0)


def test_several_x_forwarded_for_lines_are_one_chain() -> None:
    fields = [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-for", b"127.0.0.1")]
    view = resolve(LOCAL, fields)
    assert view is not None and view.client == ("203.0.113.7", 0)


def test_ports_and_ipv6_in_x_forwarded_for() -> None:
    assert resolve(LOCAL, xff("203.0.113.7:4711")) == expected(client=("203.0.113.7", 4711))
    assert resolve(LOCAL, xff("[2001:db8::1]:80")) == expected(client=("2001:db8::1", 80))
    assert resolve(LOCAL, xff("2001:db8::1")) == expected(client=("2001:db8::1", 0))


def test_proto_host_and_prefix() -> None:
    view = resolve(LOCAL, xff("203.0.113.7", proto="HTTPS", host="shop.example",
                              prefix="/api/v1/"))
    assert view == expected(("203.0.113.7", 0), "https", ("shop.example", 443),
                                 "/api/v1", b"/api/v1")
    view = resolve(LOCAL, [(b"x-forwarded-host", b"shop.example:8080"),
                           (b"x-forwarded-proto", b"wss")])
    assert view == expected(None, "https", ("shop.example", 8080))
    # a WebSocket connection gets ws/wss
    view = resolve(LOCAL, [(b"x-forwarded-proto", b"https")], scheme="ws")
    assert view is not None and view.scheme == "wss"
    # a percent-encoded prefix: decoded for root_path, as sent for raw_path
    view = resolve(LOCAL, [(b"x-forwarded-prefix", b"/my%20app")])
    assert view is not None and (view.prefix, view.raw_prefix) == ("/my app", b"/my%20app")


def test_one_proto_per_hop_picks_the_clients() -> None:
    trust = TrustList.parse("127.0.0.1, 10.0.0.1")
    view = resolve(trust, xff("203.0.113.7, 10.0.0.1", proto="https, http"))
    assert view is not None and view.scheme == "https"
    # a list that does not match the hops cannot be matched: left as it was
    view = resolve(trust, xff("203.0.113.7, 10.0.0.1", proto="https, http, http"))
    assert view is not None and view.scheme is None


@pytest.mark.parametrize("fields", [
    xff("unknown"),
    xff("not an address"),
    xff("203.0.113.7:99999"),
    xff(""),
    [(b"x-forwarded-proto", b"gopher")],
    [(b"x-forwarded-host", b"bad host")],
    [(b"x-forwarded-host", b"[zz::1]")],
    [(b"x-forwarded-prefix", b"no-slash")],
    [(b"x-forwarded-prefix", b"/a?b")],
    [(b"x-forwarded-prefix", b"//evil.example")],
    [(b"x-request-timeout-ms", b"100")],  # another protocol field in the same list
])
def test_values_that_cannot_be_read_change_nothing(fields: list[tuple[bytes, bytes]]) -> None:
    assert resolve(LOCAL, fields) is None


def test_an_unknown_client_keeps_the_address_but_not_the_rest() -> None:
    # The client's hop is "unknown": no address to set, but its proto still applies.
    view = resolve(LOCAL, xff("unknown, 127.0.0.1", proto="https"))
    assert view == expected(None, "https")


# -- Forwarded (RFC 7239) ------------------------------------------------------------------


def test_forwarded_elements_are_walked_like_x_forwarded_for() -> None:
    view = resolve(LOCAL, fwd('for=203.0.113.7;proto=https;host="shop.example", '
                              "for=127.0.0.1;proto=http;host=internal"))
    assert view == expected(("203.0.113.7", 0), "https", ("shop.example", 443))


def test_forwarded_quoted_ipv6_with_port_and_case() -> None:
    view = resolve(LOCAL, fwd('For="[2001:db8:cafe::17]:4711";Proto=HTTPS'))
    assert view == expected(("2001:db8:cafe::17", 4711), "https")


def test_forwarded_unknown_and_obfuscated_clients() -> None:
    assert resolve(LOCAL, fwd("for=unknown;proto=https")) == expected(None, "https")
    assert resolve(LOCAL, fwd("for=_hidden, for=127.0.0.1")) is None


@pytest.mark.parametrize("value", [
    'for="203.0.113.7', "for=203.0.113.7;proto", "for=a b", "=x", 'for=1.2.3.4;x="\\',
])
def test_a_forwarded_header_that_cannot_be_read_is_ignored_whole(value: str) -> None:
    assert parse_forwarded(value) is None
    assert resolve(LOCAL, fwd(value)) is None


def test_quoted_commas_and_semicolons_stay_inside_their_value() -> None:
    elements = parse_forwarded('for=1.2.3.4;host="a,b;c", for=5.6.7.8')
    assert elements == [{"for": "1.2.3.4", "host": "a,b;c"}, {"for": "5.6.7.8"}]


def test_x_forwarded_for_wins_over_forwarded() -> None:
    fields = [*fwd("for=198.51.100.1;proto=http"), *xff("203.0.113.7", proto="https")]
    view = resolve(LOCAL, fields)
    assert view == expected(("203.0.113.7", 0), "https")


# -- never an exception --------------------------------------------------------------------

_field = st.tuples(st.sampled_from(FIELD_NAMES), st.binary(max_size=60))
_text_field = st.tuples(
    st.sampled_from(FIELD_NAMES),
    st.lists(st.sampled_from(['for=', '"', "[", "]", ":", ",", ";", "=", "proto", "host",
                              "1.2.3.4", "::1", "127.0.0.1", "unknown", "https", " ", "/",
                              "\\", "80"]), max_size=12).map(lambda p: "".join(p).encode()),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_field, _text_field), max_size=5))
def test_any_field_values_resolve_without_raising(fields: list[tuple[bytes, bytes]]) -> None:
    view = resolve(LOCAL, fields)
    if view is not None and view.client is not None:
        ipaddress.ip_address(view.client[0])  # a client is always a real address
        assert 0 <= view.client[1] <= 65535
    if view is not None and view.scheme is not None:
        assert view.scheme in ("http", "https")
