"""Issue 13: what an attacker sends to ``tether proxy`` decides nothing about where it
connects, and cannot take a provider out for everyone. Raw bytes on a real socket,
a real proxy process, raw upstreams that record every request they get.

The upstream request is built from parts (the provider's address from the cluster,
an origin-form path), so a target such as ``*@127.0.0.1:S/secret`` (which glued to
``http://127.0.0.1:U`` made U the userinfo of a URL pointing at S) never reaches S.
nginx answers that target with 400; so does tether.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import free_port, status_of
from tests.test_proxy import RawUpstream, Tether, headers_of, proxy, upstream


def answer(name: str) -> bytes:
    body = name.encode()
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body))


@pytest.fixture(scope="module")
def routed() -> Iterator[RawUpstream]:
    """The only upstream a route points at."""
    with RawUpstream(lambda method, target: answer("routed")) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def secret() -> Iterator[RawUpstream]:
    """A service on the same machine that no route points at."""
    with RawUpstream(lambda method, target: answer("SECRET")) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def edge(routed: RawUpstream, secret: RawUpstream) -> Iterator[Tether]:
    with proxy("--route", f"/={routed.address}") as running:
        yield running


def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the proxy closes (requests say Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def get(target: bytes, method: bytes = b"GET") -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n"



def test_userinfo_and_absolute_targets_never_reach_another_service(
    edge: Tether, routed: RawUpstream, secret: RawUpstream
) -> None:
    """nginx: 400 for ``*@host:port/path``; absolute-form is routed by its path."""
    raw = exchange(edge.port, get(b"*@" + secret.address.encode() + b"/secret"))
    assert status_of(raw) == 400
    raw = exchange(edge.port, get(b"http://" + secret.address.encode() + b"/x"))
    assert status_of(raw) == 200 and raw.endswith(b"routed")
    assert ("GET", "/x") in routed.requests
    assert secret.requests == []


def test_options_asterisk_is_answered_by_the_proxy(edge: Tether) -> None:
    raw = exchange(edge.port, get(b"*", b"OPTIONS"))
    assert status_of(raw) == 200
    assert b"allow: get, head, post, put, patch, delete, options" in raw.lower()
    assert b"Traceback" not in "\n".join(edge.process.lines).encode()


def test_bad_targets_aimed_at_a_closed_port_leave_the_provider_serving(
    edge: Tether, routed: RawUpstream
) -> None:
    """Once, such a request put the route's real provider into backoff (every client
    got 503 for about a second). Interleaved with normal requests, each of those is
    answered by the provider."""
    closed = free_port()
    for _ in range(20):
        raw = exchange(edge.port, get(b"*@127.0.0.1:%d/x" % closed))
        assert status_of(raw) == 400
        raw = exchange(edge.port, get(b"/normal"))
        assert status_of(raw) == 200 and raw.endswith(b"routed"), raw[:200]


_PIECES = [b"*", b"@", b":", b"/", b"//", b"?", b"#", b"%40", b"127.0.0.1", b"[::1]",
           b"http://", b"https://", b"evil.example", b"..", b"a", b"~", b"%00", b";"]


@given(target=st.one_of(
    st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8).map(b"".join),
    st.binary(min_size=1, max_size=30).filter(
        lambda b: not any(c in b for c in b" \r\n")),
))
@settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_no_target_makes_the_proxy_connect_anywhere_else(
    edge: Tether, secret: RawUpstream, target: bytes
) -> None:
    """Whatever the target (the secret service's address placed in every position a
    URL parser might read a host from), the secret service gets nothing, and the
    answer is the routed upstream's or the proxy's own 4xx."""
    target = target.replace(b"evil.example", secret.address.encode())
    raw = exchange(edge.port, get(target))
    status = status_of(raw)
    assert status == 400 or (status == 200 and raw.endswith(b"routed")) or status == 404, raw
    assert secret.requests == []



def test_an_absurd_deadline_travels_as_one_the_next_hop_accepts(tmp_path: Path) -> None:
    """``grpc-timeout: 99999999H`` once became a 15-digit ``x-request-timeout-ms`` that
    the upstream tether refused with 400. Deadlines from the wire are capped (an hour
    by default, ``--max-deadline``), so what the proxy writes is read upstream."""
    with upstream("A", tmp_path) as up, \
            proxy("--route", f"/={up.address}", "--max-deadline", "5") as px:
        for header in ("grpc-timeout", "x-request-timeout-ms"):
            value = "99999999H" if header == "grpc-timeout" else "999999999999"
            answer = httpx.get(f"{px.url}/echo", headers={header: value}, timeout=30)
            assert answer.status_code == 200, answer.text
            (sent,) = headers_of(answer.json())["x-request-timeout-ms"]
            assert sent.isdigit() and 0 < int(sent) <= 5000
