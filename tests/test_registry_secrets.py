"""Registry URLs with secrets: etcd authentication works, and the password never
shows (the registry's url, errors, logs). A private etcd with auth enabled."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator

import pytest

from tests.etcd import EtcdServer, throwaway_etcd
from tests.support import opened, server_process
from tether.errors import ConfigError
from tether.registry.base import RegistryError
from tether.registry.urls import etcd_credentials, etcd_endpoints, open_registry, redact

PASSWORD = "s3cr%t/pw"  # percent-encoded in the URL as s3cr%25t%2Fpw
QUOTED = "s3cr%25t%2Fpw"


def test_redact_and_parse() -> None:
    url = f"etcd://root:{QUOTED}@127.0.0.1:2379,127.0.0.2:2379/svc"
    assert redact(url) == "etcd://root:***@127.0.0.1:2379,127.0.0.2:2379/svc"
    assert etcd_credentials(url) == ("root", PASSWORD)
    assert etcd_endpoints(url) == ([("127.0.0.1", 2379), ("127.0.0.2", 2379)], "/svc")
    assert redact("etcd://127.0.0.1:2379/x") == "etcd://127.0.0.1:2379/x"
    assert redact("sqlite:///a.db") == "sqlite:///a.db"
    assert redact("etcd://root:pa/ss@w:rd@127.0.0.1:2379/x") == "etcd://root:***@127.0.0.1:2379/x"
    with pytest.raises(ConfigError) as unencoded:
        etcd_endpoints("etcd://root:pa/ss@127.0.0.1:2379/x")
    assert "pa/ss" not in str(unencoded.value)
    assert etcd_credentials("etcd://127.0.0.1:2379") is None
    with pytest.raises(ConfigError) as info:
        etcd_endpoints(f"etcd://root:{QUOTED}@127.0.0.1:notaport/x")
    assert QUOTED not in str(info.value) and PASSWORD not in str(info.value)


def _gateway(etcd: EtcdServer, path: str, body: dict[str, str]) -> None:
    """etcd's JSON gateway (no etcdctl needed)."""
    request = urllib.request.Request(
        f"{etcd.http}/v3/{path}", data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200, answer.read()


@pytest.fixture(scope="module")
def etcd_with_auth() -> Iterator[EtcdServer]:
    with throwaway_etcd() as etcd:
        _gateway(etcd, "auth/user/add", {"name": "root", "password": PASSWORD})
        _gateway(etcd, "auth/role/add", {"name": "root"})
        _gateway(etcd, "auth/user/grant", {"user": "root", "role": "root"})
        _gateway(etcd, "auth/enable", {})
        yield etcd


async def test_etcd_with_credentials_registers_and_never_shows_them(
    etcd_with_auth: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"etcd://root:{QUOTED}@{etcd_with_auth.endpoint}/authed"
    async with opened(url) as registry:
        assert PASSWORD not in registry.url and QUOTED not in registry.url
        registration = await registry.register("orders", "127.0.0.1:9", {}, 5.0)
        try:
            listed = await registry.list("orders")
            assert [provider.address for provider, _ in listed] == ["127.0.0.1:9"]
        finally:
            await registry.deregister(registration)
    assert PASSWORD not in caplog.text and QUOTED not in caplog.text


async def test_etcd_without_credentials_fails_clearly(etcd_with_auth: EtcdServer) -> None:
    registry = open_registry(f"etcd://{etcd_with_auth.endpoint}/authed")
    try:
        with pytest.raises(RegistryError):
            await registry.register("orders", "127.0.0.1:9", {}, 5.0)
    finally:
        await registry.close()


def test_a_server_registers_with_credentials_and_logs_them_redacted(
    etcd_with_auth: EtcdServer,
) -> None:
    url = f"etcd://root:{QUOTED}@{etcd_with_auth.endpoint}/served"
    with server_process("hello:app", "--registry", url, "--service", "hello") as server:
        line = server.wait_for_line("registered hello at")
        assert "root:***@" in line
        lines = "".join(server.lines)
        assert PASSWORD not in lines and QUOTED not in lines
