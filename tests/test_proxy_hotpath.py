"""The proxy's fast path (one header pass, a small response read whole and answered
in two sends) keeps the guarantees speed must never come from skipping (issue 18):
an idempotent request that a provider drops is retried on another one, and a small
response cut short by its upstream is a clean ``502``, never a short body that looks
complete. The deadline travelling upstream (504) and a client disconnect cancelling
the upstream handler are tests/test_proxy.py's
``test_client_deadline_is_504_and_travels_upstream`` and
``test_client_disconnect_cancels_upstream_handler``, whose small JSON answers take
this same path.
"""

from __future__ import annotations

from pathlib import Path

import httpx

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
