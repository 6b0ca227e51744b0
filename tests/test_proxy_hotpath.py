"""The proxy's fast path (one header pass, a small response read whole and answered
in two sends) keeps the guarantees speed must never come from skipping (issue 18):
an idempotent request that a provider drops is retried on another one; a small
response cut short by its upstream is a clean ``502``, never a short body that looks
complete; the client's deadline travels upstream as the time left and ends in a
``504``; a client that hangs up while a small answer is awaited cancels the upstream
handler. Every request here takes the small-response path.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.support import wait_for
from tests.test_proxy import HTTP_TIMEOUT, RawUpstream, _healthz_or, proxy, upstream


async def test_a_dropped_get_is_retried_on_another_provider(tmp_path: Path) -> None:
    with RawUpstream(_healthz_or(None)) as dropping, upstream("good", tmp_path) as good, \
            proxy("--route", f"/={dropping.address},127.0.0.1:{good.port}") as px:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            answers = [await client.get(f"{px.url}/who", params={"n": str(i)})
                       for i in range(12)]
    assert [r.status_code for r in answers] == [200] * 12, [r.text for r in answers]
    assert all(r.json()["name"] == "good" for r in answers)
    # The balancer sent some of them to the provider that drops requests first:
    # every one of those was retried on the good one, none reached the client.
    assert any(target.startswith("/who") for _, target in dropping.requests), dropping.requests


async def test_a_small_response_cut_short_is_a_clean_502() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it"
    with RawUpstream(_healthz_or(cut), close_after=True) as raw, \
            proxy("--route", f"/={raw.address}") as px:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            r = await client.post(f"{px.url}/cut", content=b"x")  # POST: never resent
    assert r.status_code == 502, (r.status_code, r.text)
    assert b"only part" not in r.content
    assert ("POST", "/cut") in raw.requests


async def test_a_deadline_travels_upstream_and_ends_in_504(tmp_path: Path) -> None:
    with upstream("A", tmp_path) as up, proxy("--route", f"/=127.0.0.1:{up.port}") as px:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            started = time.monotonic()
            r = await client.get(f"{px.url}/slow", params={"token": "hot", "s": "5"},
                                 headers={"x-request-timeout-ms": "300"})
            elapsed = time.monotonic() - started
    assert r.status_code == 504, (r.status_code, r.text)
    assert elapsed < 3.0, elapsed  # well before the upstream's 5 s
    seen = (tmp_path / "deadline-hot").read_text()
    assert seen != "none" and 0 < int(seen) <= 300, seen  # the time left, not the client's


async def test_a_client_that_leaves_cancels_the_upstream_handler(tmp_path: Path) -> None:
    """The client hangs up while the proxy waits for a small answer: the upstream
    handler is cancelled (its connection closed at once), not left to run 60 s."""
    with upstream("A", tmp_path) as up, proxy("--route", f"/=127.0.0.1:{up.port}") as px:
        _reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        try:
            writer.write(b"GET /wait?token=gone HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            await wait_for(lambda: (tmp_path / "started-gone").exists(), 10,
                           "the upstream handler to start")
        finally:
            writer.close()
        await wait_for(lambda: (tmp_path / "cancelled-gone").exists(), 10,
                       "the upstream handler's cancellation")


async def test_the_upstreams_head_reaches_the_client_by_rule_2() -> None:
    """The server writes the proxied head as the proxy rendered it (no second check):
    hop-by-hop headers, and those Connection names, stay behind; the upstream's Date
    and Server replace the proxy's own, never doubled; Via gets this hop."""
    answer = (b"HTTP/1.1 200 OK\r\nServer: upstream-app\r\n"
              b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nConnection: keep-alive, X-Hop\r\n"
              b"X-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-App: a\r\nContent-Length: 2\r\n\r\nok")
    with RawUpstream(_healthz_or(answer)) as raw, proxy("--route", f"/={raw.address}") as px:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            r = await client.get(f"{px.url}/page")
    assert r.status_code == 200 and r.content == b"ok", (r.status_code, r.text)
    assert r.headers.get_list("server") == ["upstream-app"]
    assert r.headers.get_list("date") == ["Mon, 01 Jan 2024 00:00:00 GMT"]
    assert r.headers["x-app"] == "a" and r.headers["content-length"] == "2"
    assert "x-hop" not in r.headers and "keep-alive" not in r.headers
    assert r.headers["via"] == "1.1 tether"


async def test_an_upstream_header_the_server_would_refuse_is_a_502() -> None:
    """The proxied head is written unchecked because tether's client parser refuses
    what the server's check would (here a control character in a value): the client
    gets a clean 502, and nothing of that head."""
    answer = b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\nok"
    with RawUpstream(_healthz_or(answer)) as raw, proxy("--route", f"/={raw.address}") as px:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            r = await client.post(f"{px.url}/bad", content=b"x")
    assert r.status_code == 502, (r.status_code, r.text)
    assert "x-bad" not in r.headers
    assert ("POST", "/bad") in raw.requests
