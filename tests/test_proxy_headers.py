"""Proxy headers (``--proxy-headers``, ``--forwarded-allow-ips``) on real processes.

Clients are httpx bound to a loopback source address of our choosing: 127.0.0.1
is a trusted proxy by default (as in uvicorn), 127.0.0.2 is an ordinary client.
Every server runs ``tests/apps/forwarded_app.py``, which answers with the scope's
``client``, ``scheme``, ``server``, ``root_path`` and ``path``.

Proved here: behind ``tether proxy``, ``tether serve`` out of the box gives the app
the original client (and the scheme a TLS-ending proxy in front saw); spoofed
headers from an untrusted peer change nothing; ``*`` (via uvicorn's
``FORWARDED_ALLOW_IPS``), a network (``TETHER_FORWARDED_ALLOW_IPS`` winning over
``FORWARDED_ALLOW_IPS``), ``--no-proxy-headers``; RFC 7239 ``Forwarded``;
``X-Forwarded-Prefix``; the access log names the real client, per request even
on one pipelined connection; malformed headers answer 200 with nothing changed;
a bad ``--forwarded-allow-ips`` exits 2 naming the option.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apps.forwarded_app import app as forwarded_app
from tests.support import ServerProcess, raw_exchange, run_tether, serve, tether_process
from tests.test_cli import spawn

TESTS = Path(__file__).resolve().parent
APP = "apps.forwarded_app:app"
TIMEOUT = 30.0
SPOOF = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
         "X-Forwarded-Host": "shop.example", "X-Forwarded-Prefix": "/shop",
         "Forwarded": "for=198.51.100.1;proto=https"}


def _env(**extra: str) -> dict[str, str]:
    """This environment without anything that would change the trust settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TETHER_") and k != "FORWARDED_ALLOW_IPS"}
    env.update(extra)
    return env


@contextlib.contextmanager
def tether(*args: str, **env: str) -> Iterator[ServerProcess]:
    with tether_process(*args, cwd=TESTS, env=_env(**env), timeout=TIMEOUT) as running:
        yield running


def served(*args: str, **env: str) -> contextlib.AbstractContextManager[ServerProcess]:
    return tether("serve", APP, "--port", "0", "--no-access-log", *args, **env)


def get(url: str, source: str = "127.0.0.1", headers: dict[str, str] | None = None
        ) -> dict[str, Any]:
    """GET ``url`` from the loopback address ``source``; the app's JSON."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
        response = client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


@pytest.fixture(scope="module")
def default_server() -> Iterator[ServerProcess]:
    """``tether serve`` with no proxy-header options at all."""
    with served() as running:
        yield running


# -- tether proxy in front of tether serve ---------------------------------------------------


def test_behind_tether_proxy_the_app_sees_the_original_client(
        default_server: ServerProcess) -> None:
    with tether("proxy", "--listen", "127.0.0.1:0", "--no-access-log",
                "--route", f"/=127.0.0.1:{default_server.port}") as px:
        seen = get(f"{px.url}/who", source="127.0.0.2")
        assert seen["client"][0] == "127.0.0.2"
        assert seen["scheme"] == "http"
        assert seen["transport"]["client"][0] == "127.0.0.1"  # the proxy's connection
        assert seen["path"] == "/who" and seen["root_path"] == ""

        # A client of the proxy cannot claim another address or scheme.
        seen = get(f"{px.url}/who", source="127.0.0.2", headers=SPOOF)
        assert seen["client"][0] == "127.0.0.2" and seen["scheme"] == "http"

        # A trusted proxy in front (127.0.0.1, say nginx ending TLS) is believed by
        # tether proxy, and what it said reaches the app through the second hop.
        seen = get(f"{px.url}/who", source="127.0.0.1",
                   headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
        assert seen["client"] == ["203.0.113.7", 0]
        assert seen["scheme"] == "https"


# -- tether serve directly -------------------------------------------------------------------


def test_a_trusted_peer_names_the_client_scheme_host_and_prefix(
        default_server: ServerProcess) -> None:
    url = f"{default_server.url}/items?x=1"
    seen = get(url, headers={"X-Forwarded-For": "203.0.113.7, 127.0.0.1",
                             "X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example",
                             "X-Forwarded-Prefix": "/shop"})
    assert seen["client"] == ["203.0.113.7", 0]
    assert seen["scheme"] == "https"
    assert seen["server"] == ["shop.example", 443]
    assert seen["root_path"] == "/shop"
    assert seen["path"] == "/shop/items" and seen["raw_path"] == "/shop/items"
    assert seen["transport"]["scheme"] == "http"
    assert seen["transport"]["server"] == ["127.0.0.1", default_server.port]


def test_rfc_7239_forwarded(default_server: ServerProcess) -> None:
    seen = get(f"{default_server.url}/", headers={
        "Forwarded": 'for="[2001:db8::7]:4711";proto=https;host="shop.example:8443", '
                     "for=127.0.0.1;proto=http"})
    assert seen["client"] == ["2001:db8::7", 4711]
    assert seen["scheme"] == "https"
    assert seen["server"] == ["shop.example", 8443]


def test_headers_from_an_untrusted_peer_change_nothing(default_server: ServerProcess) -> None:
    plain = get(f"{default_server.url}/p", source="127.0.0.2")
    spoofed = get(f"{default_server.url}/p", source="127.0.0.2", headers=SPOOF)
    assert spoofed["client"][0] == "127.0.0.2"
    for key in ("scheme", "server", "root_path", "path", "transport"):
        assert spoofed[key] == plain[key], key
    assert spoofed["transport"] is None


@pytest.mark.parametrize("header", [
    {"X-Forwarded-For": "not-an-address, <script>"},
    {"X-Forwarded-For": "203.0.113.7:99999999"},
    {"Forwarded": 'for="203.0.113.7;proto=https'},
    {"Forwarded": "for=;;;=,,"},
    {"X-Forwarded-Proto": "javascript"},
    {"X-Forwarded-Host": "a b/c"},
])
def test_a_malformed_header_is_ignored(default_server: ServerProcess,
                                       header: dict[str, str]) -> None:
    """The unreadable value changes nothing; a readable one beside it still applies."""
    seen = get(f"{default_server.url}/m", headers={**header, "X-Forwarded-Prefix": "/ok"})
    assert seen["client"][0] == "127.0.0.1"
    assert seen["scheme"] == "http"
    assert seen["server"] == ["127.0.0.1", default_server.port]
    assert seen["root_path"] == "/ok" and seen["path"] == "/ok/m"
    seen = get(f"{default_server.url}/m", headers={"X-Forwarded-Prefix": "../etc",
                                                   "X-Forwarded-For": "203.0.113.7"})
    assert seen["root_path"] == "" and seen["path"] == "/m"
    assert seen["client"] == ["203.0.113.7", 0]
    assert "Traceback" not in default_server.output()


def test_peers_not_in_the_list_are_not_trusted() -> None:
    with served("--forwarded-allow-ips", "10.0.0.1") as server:
        seen = get(f"{server.url}/", headers=SPOOF)
    assert seen["client"][0] == "127.0.0.1" and seen["scheme"] == "http"
    assert seen["transport"] is None


def test_star_from_uvicorns_environment_variable_trusts_everyone() -> None:
    with served(FORWARDED_ALLOW_IPS="*") as server:
        seen = get(f"{server.url}/", source="127.0.0.2",
                   headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.1"})
    assert seen["client"] == ["203.0.113.7", 0]  # everyone trusted: the leftmost


def test_a_network_and_tethers_variable_wins_over_uvicorns() -> None:
    with served(TETHER_FORWARDED_ALLOW_IPS="127.0.0.0/8",
                FORWARDED_ALLOW_IPS="10.0.0.1") as server:
        seen = get(f"{server.url}/", source="127.0.0.2",
                   headers={"X-Forwarded-For": "203.0.113.7, 127.0.0.5"})
    assert seen["client"] == ["203.0.113.7", 0]


def test_no_proxy_headers_turns_it_off() -> None:
    with served("--no-proxy-headers") as server:
        seen = get(f"{server.url}/", headers=SPOOF)
    assert seen["client"][0] == "127.0.0.1" and seen["scheme"] == "http"
    assert seen["root_path"] == "" and seen["transport"] is None


def test_a_bad_trust_list_exits_2_naming_the_option() -> None:
    result = run_tether("serve", APP, "--port", "0", "--forwarded-allow-ips",
                        "127.0.0.1,localhost", cwd=TESTS)
    assert result.returncode == 2, result.stderr
    assert "--forwarded-allow-ips" in result.stderr and "'localhost'" in result.stderr


# -- the access log --------------------------------------------------------------------------


def test_the_access_log_shows_the_real_client() -> None:
    with spawn(APP, "--port", "0", cwd=TESTS, env={"FORWARDED_ALLOW_IPS": "127.0.0.1"}
               ) as server:
        get(f"{server.url}/logged", headers={"X-Forwarded-For": "203.0.113.7"})
        line = server.stdout.wait_for(r'"GET /logged" 200').string
        assert ' 203.0.113.7:0 "GET /logged"' in line, line
        get(f"{server.url}/direct", source="127.0.0.2", headers={"X-Forwarded-For": "6.6.6.6"})
        line = server.stdout.wait_for(r'"GET /direct" 200').string
        assert re.search(r' 127\.0\.0\.2:\d+ "GET /direct"', line), line
        assert server.stop() == 0


async def test_each_pipelined_request_has_its_own_client(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    """One connection from a trusted proxy carries requests of different clients:
    each scope and each access-log line names its own."""
    caplog.set_level(logging.INFO, logger="tether.access")
    async with serve(forwarded_app, access_log=True) as server:
        requests = b"".join(
            b"GET /%d HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.%d\r\n\r\n" % (i, i)
            for i in (1, 2)) + b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        raw = await raw_exchange(server.port, requests, timeout=TIMEOUT)
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1])
              for part in raw.split(b"HTTP/1.1 200 OK\r\n")[1:]]
    assert [b["client"][0] for b in bodies] == ["203.0.113.1", "203.0.113.2", "127.0.0.1"]
    lines = [r.getMessage() for r in caplog.records if r.name == "tether.access"]
    assert [line.split(" ", 1)[0].rsplit(":", 1)[0] for line in lines] == [
        "203.0.113.1", "203.0.113.2", "127.0.0.1"], lines
