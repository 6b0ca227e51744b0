"""Proxy headers: who the client really is when a trusted proxy connected to us.

Pure rules, no I/O: :class:`TrustList` is ``--forwarded-allow-ips`` parsed once,
and :func:`resolve` turns the forwarded fields of one request into the scope's
``client``, ``scheme``, ``server`` and ``root_path``. A protocol decides once per
connection whether its peer is trusted (:meth:`TrustList.trusts`), collects the
fields named in :data:`FIELD_NAMES` while it reads the head (no extra pass), and
hands them to :meth:`TrustList.view` (:func:`resolve`, memoised) only for a
trusted peer; the request cycle applies the result (``RequestCycle.set_forwarded``).
The memoised results are shared between requests, hence immutable views.

The rules (uvicorn >= 0.30 for ``X-Forwarded-For``; RFC 7239 for ``Forwarded``):

* Each proxy appends the address it received the request from, so the chain is
  read from the right: trusted hops are skipped and the first untrusted one is
  the client. When every hop is trusted, the leftmost is the client.
* ``X-Forwarded-For`` present: it names the client and ``X-Forwarded-Proto``,
  ``X-Forwarded-Host`` and ``X-Forwarded-Prefix`` the rest; ``Forwarded`` is then
  ignored. Most proxies (nginx, HAProxy, Envoy, cloud load balancers) write only
  ``X-Forwarded-For``, so in a mixed chain it is the complete one; ``Forwarded``
  alone is used when no ``X-Forwarded-For`` came.
* ``Forwarded``: the element whose ``for=`` is the client also gives the scheme
  (``proto=``) and host (``host=``): it describes the request the client made.
* A value that cannot be read is ignored, never an error: a malformed chain
  leaves the client as it was, a bad proto, host or prefix leaves that part as
  it was. A client identified as ``unknown`` or by an obfuscated name (RFC 7239
  section 6.3) leaves the address as it was, since it is not an address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from functools import lru_cache
from typing import Final, NamedTuple
from urllib.parse import unquote

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED: Final = b"forwarded"
X_FORWARDED_FOR: Final = b"x-forwarded-for"
X_FORWARDED_PROTO: Final = b"x-forwarded-proto"
X_FORWARDED_HOST: Final = b"x-forwarded-host"
X_FORWARDED_PREFIX: Final = b"x-forwarded-prefix"
#: request fields (lower-case) a protocol collects for :func:`resolve`
FIELD_NAMES: Final = (FORWARDED, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST,
                      X_FORWARDED_PREFIX)

#: forwarded protocol -> the scheme of an ``http`` scope, and of a ``websocket`` one
HTTP_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
WEBSOCKET_SCHEMES: Final = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}

#: what trusts every peer (uvicorn's spelling)
TRUST_ALL: Final = "*"
#: uvicorn's default: only a proxy on this machine's IPv4 loopback address
DEFAULT_TRUST: Final = "127.0.0.1"

# host[:port] as in a Host header: a reg-name or IPv4, or an IPv6 literal in brackets
_HOST: Final = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+;=%]+)(?::(?P<port>[0-9]{1,5}))?"
)
# a path prefix: RFC 3986 path characters only (no query, fragment, space or quote)
_PREFIX: Final = re.compile(r"(/[A-Za-z0-9\-._~!$&'()*+,;=:@%]*)+")
# RFC 7239 forwarded-pair: token "=" ( token / quoted-string )
_TOKEN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PAIR: Final = re.compile(
    rf"\s*(?P<name>{_TOKEN})=(?:(?P<token>{_TOKEN})|\"(?P<quoted>(?:[^\"\\]|\\.)*)\")\s*"
)
_ESCAPE: Final = re.compile(r"\\(.)")


class TrustList:
    """The peers whose proxy headers are believed (``--forwarded-allow-ips``):
    addresses and networks, or everyone (``*``). A peer on a Unix socket has no
    address: only ``*`` trusts it."""

    __slots__ = ("addresses", "everyone", "networks", "trusts", "view")

    def __init__(self, addresses: frozenset[IPAddress], networks: tuple[IPNetwork, ...],
                 everyone: bool) -> None:
        self.addresses = addresses
        self.networks = networks
        self.everyone = everyone
        # A chain names the same few proxies again and again, and a proxy sends the
        # same header sets for a client's every request: both memoised, bounded (a
        # client sending random values only evicts entries).
        self.trusts = lru_cache(maxsize=1024)(self._trusts)
        #: :func:`resolve` under this list, memoised (``fields`` as a tuple)
        self.view = lru_cache(maxsize=1024)(self._view)

    @classmethod
    def parse(cls, text: str) -> TrustList:
        """``"127.0.0.1, 10.0.0.0/8, ::1"`` or ``"*"``; ValueError names a bad entry."""
        addresses: set[IPAddress] = set()
        networks: list[IPNetwork] = []
        everyone = False
        for entry in (item.strip() for item in text.split(",")):
            if not entry:
                continue
            if entry == TRUST_ALL:
                everyone = True
            elif "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ValueError(f"{entry!r} is not an IP network") from None
            else:
                try:
                    addresses.add(ipaddress.ip_address(entry))
                except ValueError:
                    raise ValueError(
                        f"{entry!r} is not an IP address, a network or '*'") from None
        return cls(frozenset(addresses), tuple(networks), everyone)

    def _trusts(self, host: str | None) -> bool:
        """Whether ``host`` (an address as text; None: a Unix socket peer) is trusted."""
        if self.everyone:
            return True
        address = _address(host) if host else None
        if address is None:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
        return address in self.addresses or any(address in net for net in self.networks)

    def _view(self, fields: tuple[tuple[bytes, bytes], ...], scheme: str
              ) -> ForwardedView | None:
        return resolve(self, fields, scheme)


class ForwardedView(NamedTuple):
    """What the proxy headers say about a request; None: leave that part as it is.
    (Immutable, so one memoised view serves many requests.)"""

    client: tuple[str, int] | None = None
    scheme: str | None = None
    server: tuple[str, int | None] | None = None
    #: the path prefix the proxy removed (``X-Forwarded-Prefix``): decoded, and as sent
    prefix: str | None = None
    raw_prefix: bytes | None = None
    #: ``client`` as log lines show it (``host:port``)
    client_label: str | None = None


def resolve(trust: TrustList, fields: Sequence[tuple[bytes, bytes]],
            scheme: str = "http") -> ForwardedView | None:
    """The view of one request from a trusted peer. ``fields`` are (lower-case name,
    value) pairs in the order received; names not in :data:`FIELD_NAMES` are skipped.
    ``scheme`` is the connection's own (``ws``/``wss``: a WebSocket scope). None
    when the fields change nothing."""
    xff: list[str] = []
    proto: str | None = None
    host: str | None = None
    prefix: str | None = None
    forwarded: list[str] = []
    for name, value in fields:
        if name == X_FORWARDED_FOR:
            xff.append(value.decode("latin-1"))
        elif name == X_FORWARDED_PROTO:
            proto = value.decode("latin-1")  # the last one, as uvicorn
        elif name == X_FORWARDED_HOST:
            host = value.decode("latin-1")
        elif name == X_FORWARDED_PREFIX:
            prefix = value.decode("latin-1")
        elif name == FORWARDED:
            forwarded.append(value.decode("latin-1"))
    client: tuple[str, int] | None = None
    if xff:
        hops = [hop.strip() for hop in ",".join(xff).split(",")]
        nodes = [_node(hop) for hop in hops]
        index = _client_index(trust, nodes)
        client = nodes[index]
        proto = _pick(proto, index, len(hops))
        host = _pick(host, index, len(hops))
    elif forwarded:
        elements = parse_forwarded(", ".join(forwarded))
        proto = host = None  # only the client's element says these
        if elements:
            nodes = [_node(element.get("for", "")) for element in elements]
            chosen = elements[_client_index(trust, nodes)]
            client = _node(chosen.get("for", ""))
            proto, host = chosen.get("proto"), chosen.get("host")
    schemes = WEBSOCKET_SCHEMES if scheme in ("ws", "wss") else HTTP_SCHEMES
    new_scheme = schemes.get(proto.strip().lower()) if proto else None
    server = _server(host, new_scheme or scheme) if host else None
    raw_prefix = _prefix(prefix) if prefix else None
    if client is None and new_scheme is None and server is None and raw_prefix is None:
        return None
    return ForwardedView(
        client, new_scheme, server,
        unquote(raw_prefix) if raw_prefix is not None else None,
        raw_prefix.encode("ascii") if raw_prefix is not None else None,
        f"{client[0]}:{client[1]}" if client is not None else None,
    )


def parse_forwarded(value: str) -> list[dict[str, str]] | None:
    """RFC 7239 ``Forwarded``: one dict per element (parameter names lower-case,
    quoted values unescaped), or None if any part of it cannot be read."""
    elements: list[dict[str, str]] = []
    for element in _split_outside_quotes(value, ","):
        if not element.strip():
            continue
        pairs: dict[str, str] = {}
        for pair in _split_outside_quotes(element, ";"):
            if not pair.strip():
                continue
            match = _PAIR.fullmatch(pair)
            if match is None:
                return None
            quoted = match["quoted"]
            text = match["token"] if quoted is None else _ESCAPE.sub(r"\1", quoted)
            pairs.setdefault(match["name"].lower(), text)
        elements.append(pairs)
    return elements


def _split_outside_quotes(value: str, separator: str) -> list[str]:
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    for i, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def _client_index(trust: TrustList, nodes: list[tuple[str, int] | None]) -> int:
    """Index of the client in a non-empty chain of hops (nearest last): the first
    one from the right that is not trusted, the leftmost when all are. A hop that
    is not an address (``unknown``, an obfuscated name, garbage) is never trusted."""
    for index in range(len(nodes) - 1, 0, -1):
        node = nodes[index]
        if node is None or not trust.trusts(node[0]):
            return index
    return 0


def _node(text: str) -> tuple[str, int] | None:
    """An address with an optional port: ``1.2.3.4``, ``1.2.3.4:80``, ``::1``,
    ``[::1]``, ``[::1]:80``; None for anything else."""
    text = text.strip()
    port = 0
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        rest = text[end + 1:]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
                return None
            port = int(rest[1:])
        text = text[1:end]
    elif text.count(":") == 1:
        text, _, digits = text.partition(":")
        if not digits.isdigit() or len(digits) > 5:
            return None
        port = int(digits)
    address = _canonical(text)
    if address is None or port > 65535:
        return None
    return (address, port)


def _canonical(text: str) -> str | None:
    """``text`` as an IP address in its usual spelling, or None. (inet_pton: the
    client's address is parsed on every request, ipaddress is ten times slower.)"""
    try:
        socket.inet_pton(socket.AF_INET, text)
        return text  # inet_pton takes only dotted quads without leading zeros
    except (OSError, ValueError):  # ValueError: a NUL in the text
        pass
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
    except (OSError, ValueError):
        return None


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _pick(value: str | None, index: int, hops: int) -> str | None:
    """One value of X-Forwarded-Proto or -Host: the only one, or, when there is one
    per hop of X-Forwarded-For, the client's. Anything else cannot be matched."""
    if value is None or "," not in value:
        return value
    values = value.split(",")
    return values[index] if len(values) == hops else None


def _server(host: str, scheme: str) -> tuple[str, int | None] | None:
    """``(host, port)`` from a forwarded host; the scheme's port when none is given."""
    match = _HOST.fullmatch(host.strip())
    if match is None:
        return None
    name = match["host"]
    if name.startswith("[") and _address(name[1:-1]) is None:
        return None
    if match["port"] is not None:
        port = int(match["port"])
        return (name.strip("[]"), port) if port <= 65535 else None
    return (name.strip("[]"), DEFAULT_PORTS.get(scheme))


def _prefix(value: str) -> str | None:
    """``/api`` from ``/api`` or ``/api/``; None unless a plain path."""
    value = value.strip().rstrip("/")
    if not value or _PREFIX.fullmatch(value) is None or "//" in value:
        return None
    return value
