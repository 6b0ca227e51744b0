"""``tether proxy`` with HTTP/2 clients: it is the same server, so it accepts HTTP/2
(h2c with prior knowledge here) and forwards to its HTTP/1.1 upstreams as always.

A gRPC call cannot cross an HTTP/1.1 hop (gRPC needs trailers): the proxy answers it
as gRPC does, ``grpc-status: 12`` (UNIMPLEMENTED) with a message naming the
upstream, at once: never a hang, never an HTTP error a gRPC client cannot read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import unquote

import httpx
import pytest

from tests.support import EXAMPLES, ServerProcess, tether_process

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def proxy() -> Iterator[ServerProcess]:
    env = dict(os.environ)
    with tether_process("serve", "hello:app", "--port", "0", "--no-access-log",
                        cwd=EXAMPLES, env=env, timeout=TIMEOUT) as upstream, \
            tether_process("proxy", "--listen", "127.0.0.1:0", "--no-access-log",
                           "--route", f"/=127.0.0.1:{upstream.port}",
                           cwd=EXAMPLES, env=env, timeout=TIMEOUT) as px:
        yield px


def h2_client() -> httpx.Client:
    return httpx.Client(http1=False, http2=True, timeout=TIMEOUT)


def test_an_http2_client_is_served_through_the_proxy(proxy: ServerProcess) -> None:
    with h2_client() as client:
        responses = [client.get(f"{proxy.url}/") for _ in range(3)]
        posted = client.post(f"{proxy.url}/echo", content=b"x" * 100_000)
    for response in responses:
        assert response.http_version == "HTTP/2"
        assert response.status_code == 200 and response.text == "hello, world\n"
    assert posted.status_code == 200 and posted.content == b"x" * 100_000


def test_a_grpc_call_to_an_http1_upstream_gets_a_grpc_error(proxy: ServerProcess) -> None:
    with h2_client() as client:
        response = client.post(
            f"{proxy.url}/orders.v1.Orders/Get", content=b"\x00\x00\x00\x00\x00",
            headers={"content-type": "application/grpc", "te": "trailers"})
        # and the connection goes on serving
        after = client.get(f"{proxy.url}/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/grpc"
    assert response.headers["grpc-status"] == "12"  # UNIMPLEMENTED
    message = unquote(response.headers["grpc-message"])
    assert "HTTP/1.1" in message and "cannot carry gRPC" in message
    assert after.status_code == 200
    proxy.wait_for_line("gRPC call not forwarded")
