"""HTTP/2 on ``tether serve`` driven by clients no one here wrote: curl (libcurl with
nghttp2), httpx with ``http2=True`` (the ``h2`` library), and nghttp2's ``h2load``.

One server process per protocol setup, shared by the tests of this module, serving
``apps.h2_clients_app:app`` (tests/apps/h2_clients_app.py): a plain listener with the default
``--http auto`` (HTTP/1.1 and h2c with prior knowledge on one port) and a TLS listener
(ALPN ``h2``, with ``http/1.1`` as the fallback) whose certificate is issued by a
throwaway CA (``trustme``); ``--http 1`` and ``--http 2`` each get a server of their own.
Every request is bounded (curl ``--max-time``, httpx and h2load time limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from bench.h2load import run_h2load
from tests.support import ServerProcess, raw_exchange, server_process, status_of

TESTS = Path(__file__).resolve().parent
APP = "apps.h2_clients_app:app"
TIMEOUT = 30.0
#: the connection preface of HTTP/2 (RFC 9113 3.4) and an empty SETTINGS frame
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
#: bigger than the default initial window (65,535): the upload needs WINDOW_UPDATEs
UPLOAD = bytes(range(256)) * 1200  # 307,200 bytes
TRAILER_CHUNKS = (b"first chunk\n", b"second chunk\n")
CHECKSUM = hashlib.sha256(b"".join(TRAILER_CHUNKS)).hexdigest()

pytestmark = [
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
    pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed "
                       "(scripts/system-deps.sh installs Debian's nghttp2-client)"),
]


# -- servers and clients --------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: str  # the throwaway CA clients trust
    cert: str  # 127.0.0.1 and localhost, signed by it
    key: str


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("h2-tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    paths = Certs(ca=str(directory / "ca.pem"), cert=str(directory / "server.pem"),
                  key=str(directory / "server.key"))
    ca.cert_pem.write_to_path(paths.ca)
    Path(paths.cert).write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(paths.key)
    return paths


def serving(*args: str) -> contextlib.AbstractContextManager[ServerProcess]:
    """``tether serve apps.h2_clients_app:app ARGS`` from tests/, one worker, no access log."""
    return server_process(APP, "--workers", "1", "--no-access-log", *args, cwd=TESTS,
                          timeout=TIMEOUT)


@pytest.fixture(scope="module")
def plain() -> Iterator[ServerProcess]:
    with serving() as server:
        yield server


@pytest.fixture(scope="module")
def tls(certs: Certs) -> Iterator[ServerProcess]:
    with serving("--ssl-certfile", certs.cert, "--ssl-keyfile", certs.key) as server:
        yield server


def https_url(server: ServerProcess, path: str) -> str:
    return f"https://127.0.0.1:{server.port}{path}"


@dataclass(frozen=True)
class CurlResult:
    returncode: int
    body: bytes
    stderr: str
    http_version: str  # curl's %{http_version}: "2", "1.1", or "0" when nothing came back
    status: int


def curl(*args: str, check: bool = True) -> CurlResult:
    """curl ARGS, bounded; the body, and the protocol version and status it reports."""
    marker = b"\n--curl-write-out--"
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args,
         "-w", marker.decode() + "%{http_version} %{http_code}"],
        capture_output=True, timeout=30)
    body, _, written = done.stdout.rpartition(marker)
    version, status = written.decode().split()
    result = CurlResult(done.returncode, body, done.stderr.decode(errors="replace"),
                        version, int(status))
    if check:
        assert result.returncode == 0, result.stderr
    return result


def echoed(result: CurlResult) -> dict[str, Any]:
    assert result.status == 200, (result.status, result.body[:300], result.stderr)
    document: dict[str, Any] = json.loads(result.body)
    return document


def header(document: dict[str, Any], name: str) -> list[str]:
    return [value for field, value in document["headers"] if field == name]


# -- curl, h2c with prior knowledge -----------------------------------------------------------


def test_curl_h2c_prior_knowledge_get_and_post(plain: ServerProcess,
                                               tmp_path: Path) -> None:
    got = curl("--http2-prior-knowledge", "-H", "x-echo: hello", f"{plain.url}/echo?q=1")
    assert got.http_version == "2"
    document = echoed(got)
    assert (document["http_version"], document["method"], document["path"],
            document["query_string"]) == ("2", "GET", "/echo", "q=1")
    assert header(document, "x-echo") == ["hello"]
    assert header(document, "host") == [f"127.0.0.1:{plain.port}"]  # from :authority
    assert "http.response.trailers" in document["extensions"]

    upload = tmp_path / "upload.bin"
    upload.write_bytes(UPLOAD)
    posted = curl("--http2-prior-knowledge", "--data-binary", f"@{upload}",
                  "-H", "content-type: application/octet-stream", "-H", "x-echo: body",
                  "-D", str(tmp_path / "headers.txt"), f"{plain.url}/echo")
    assert posted.http_version == "2"
    document = echoed(posted)
    assert document["method"] == "POST"
    assert (document["body_length"], document["body_sha256"]) == (
        len(UPLOAD), hashlib.sha256(UPLOAD).hexdigest())
    assert "x-echoed: body" in (tmp_path / "headers.txt").read_text().splitlines()


def test_curl_asking_for_an_h2c_upgrade_is_answered_in_http1(plain: ServerProcess) -> None:
    # curl --http2 on http:// sends "Upgrade: h2c"; tether does not switch protocols
    # that way (prior knowledge and ALPN do), so the request is answered in HTTP/1.1.
    got = curl("--http2", f"{plain.url}/echo")
    assert got.http_version in ("1.1", "2")
    assert echoed(got)["method"] == "GET"


def test_curl_shows_the_trailers_of_an_http2_response(plain: ServerProcess) -> None:
    got = curl("-v", "--http2-prior-knowledge", f"{plain.url}/trailers")
    assert (got.http_version, got.status) == ("2", 200)
    assert got.body == b"".join(TRAILER_CHUNKS)
    lines = got.stderr.splitlines()
    data = next(i for i, line in enumerate(lines) if line.startswith("{ ["))  # the body
    trailers = [line.rstrip() for line in lines[data:] if line.startswith("< ")]
    assert trailers == [f"< x-checksum: {CHECKSUM}", "< x-outcome: complete"], got.stderr


# -- curl over TLS: ALPN ----------------------------------------------------------------------


def test_curl_over_tls_chooses_h2_by_alpn(tls: ServerProcess, certs: Certs) -> None:
    got = curl("--http2", "--cacert", certs.ca, "-H", "x-echo: tls",
               https_url(tls, "/echo"))
    assert got.http_version == "2"
    document = echoed(got)
    assert (document["http_version"], document["scheme"]) == ("2", "https")
    assert header(document, "x-echo") == ["tls"]
    trailers = curl("-v", "--http2", "--cacert", certs.ca, https_url(tls, "/trailers"))
    assert trailers.http_version == "2" and f"< x-checksum: {CHECKSUM}" in trailers.stderr


def test_curl_http1_on_the_same_tls_port_still_works(tls: ServerProcess,
                                                     certs: Certs) -> None:
    got = curl("--http1.1", "--cacert", certs.ca, https_url(tls, "/echo"))
    assert got.http_version == "1.1"
    document = echoed(got)
    assert (document["http_version"], document["scheme"]) == ("1.1", "https")


# -- httpx: many streams on one TLS connection ------------------------------------------------


async def test_httpx_runs_many_concurrent_streams_on_one_tls_connection(
        tls: ServerProcess, certs: Certs) -> None:
    count = 50  # under the default limit of 100 concurrent streams
    context = ssl.create_default_context(cafile=certs.ca)
    one_connection = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(http1=False, http2=True, verify=context,
                                 limits=one_connection, timeout=TIMEOUT) as client:
        first = await client.get(https_url(tls, "/echo"))
        # /gather answers none of them before all 50 are in flight: concurrent streams
        gathered = await asyncio.gather(*(
            client.get(https_url(tls, "/gather"), params={"n": count, "batch": "httpx"})
            for _ in range(count)))
        echoes = await asyncio.gather(*(client.get(https_url(tls, "/echo")) for _ in range(8)))
    assert first.http_version == "HTTP/2"
    assert [(r.http_version, r.status_code, r.text) for r in gathered] == (
        [("HTTP/2", 200, "gathered\n")] * count)
    ports = {tuple(r.json()["client"]) for r in [first, *echoes]}
    assert len(ports) == 1, ports  # every request on the one connection


# -- h2load ---------------------------------------------------------------------------------


def test_h2load_short_run_is_all_2xx(plain: ServerProcess, tls: ServerProcess) -> None:
    for url, protocol in ((f"{plain.url}/echo", "h2c"), (https_url(tls, "/echo"), "h2")):
        result = run_h2load(url, requests=800, connections=4, streams=16, time_limit=60)
        assert result.protocol == protocol
        assert result.problems() is None, (url, result)
        assert result.status_2xx == 800


# -- --http 1 and --http 2 ------------------------------------------------------------------


async def test_http1_only_refuses_the_h2c_preface_cleanly(certs: Certs) -> None:
    with serving("--http", "1") as server:
        refused = await raw_exchange(server.port, PREFACE, timeout=TIMEOUT)
        # an HTTP/1.1 error, then the connection closes (raw_exchange reads to EOF)
        assert 400 <= status_of(refused) < 600, refused[:200]
        h2 = curl("--http2-prior-knowledge", f"{server.url}/echo", check=False)
        assert h2.http_version != "2"  # nothing spoken in HTTP/2
        assert echoed(curl(f"{server.url}/echo"))["http_version"] == "1.1"  # still serving
    with serving("--http", "1", "--ssl-certfile", certs.cert, "--ssl-keyfile", certs.key) \
            as server:
        got = curl("--http2", "--cacert", certs.ca, https_url(server, "/echo"))
        assert got.http_version == "1.1"  # ALPN offers no h2
        assert echoed(got)["http_version"] == "1.1"


def test_http2_only_serves_h2c_and_refuses_http1() -> None:
    with serving("--http", "2") as server:
        got = curl("--http2-prior-knowledge", f"{server.url}/echo")
        assert got.http_version == "2" and echoed(got)["http_version"] == "2"
        refused = curl("--http1.1", f"{server.url}/echo")
        assert (refused.http_version, refused.status) == ("1.1", 505)
        assert b"HTTP/2 only" in refused.body
        again = curl("--http2-prior-knowledge", f"{server.url}/echo")  # still serving
        assert again.http_version == "2"
