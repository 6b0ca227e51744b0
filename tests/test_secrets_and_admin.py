"""Issue 13 on real processes: the TLS key password never shows in a command line or
a worker's environment, and the admin port guards itself (loopback Host names, a
token when bound beyond loopback, and a log line that says what it speaks)."""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from tests.support import EXAMPLES, free_port, server_process, tether_command
from tether.config import ServerConfig

PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def encrypted_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """(cert, encrypted key, CA) for 127.0.0.1."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSWORD.encode()),
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    ca_path = directory / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert_path))
    key_path.write_bytes(encrypted)
    ca.cert_pem.write_to_path(str(ca_path))
    yield cert_path, key_path, ca_path


def _family(pid: int) -> list[psutil.Process]:
    supervisor = psutil.Process(pid)
    return [supervisor, *supervisor.children(recursive=True)]


def _assert_password_hidden(pid: int) -> None:
    family = _family(pid)
    assert len(family) >= 3  # the supervisor and its two workers
    for process in family:
        assert not any(PASSWORD in part for part in process.cmdline()), process.cmdline()
    for worker in family[1:]:
        environ = worker.environ()
        assert not any(PASSWORD in value for value in environ.values()), "worker environment"


@pytest.mark.parametrize("via", ["file", "environment"])
def test_tls_key_password_from_a_file_or_the_environment_stays_private(
    encrypted_key: tuple[Path, Path, Path], tmp_path: Path, via: str
) -> None:
    cert, key, ca = encrypted_key
    args = ["hello:app", "--workers", "2", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    env = {}
    if via == "file":
        secret = tmp_path / "password"
        secret.write_text(PASSWORD + "\n")
        args += ["--ssl-keyfile-password-file", str(secret)]
    else:
        env["TETHER_SSL_KEYFILE_PASSWORD"] = PASSWORD
    with server_process(*args, env=env) as server:
        server.wait_for_line("2 worker(s) ready")
        context = ssl.create_default_context(cafile=str(ca))
        for _ in range(4):  # both workers, most likely
            answer = httpx.get(f"https://127.0.0.1:{server.port}/", verify=context, timeout=10)
            assert answer.status_code == 200
        _assert_password_hidden(server.proc.pid)


def test_a_password_flag_and_file_together_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD)
    result = subprocess.run(
        tether_command("serve", "hello:app", "--ssl-keyfile-password", "x",
                       "--ssl-keyfile-password-file", str(secret)),
        cwd=EXAMPLES, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "exclude each other" in result.stderr


def test_admin_beyond_loopback_needs_a_token() -> None:
    result = subprocess.run(
        tether_command("serve", "hello:app", "--port", "0", "--admin-port", "0",
                       "--admin-host", "0.0.0.0"),
        cwd=EXAMPLES, capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("TETHER_")},
    )
    assert result.returncode == 2
    assert "admin token" in result.stderr


def test_admin_token_and_allowed_names_on_a_real_supervisor(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    admin_port = free_port()
    with server_process("hello:app", "--admin-port", str(admin_port), "--admin-token-file",
                        str(token), "--admin-allow-host", "ops.internal") as server:
        server.wait_for_line("admin listening on http://")
        url = f"http://127.0.0.1:{admin_port}/status"
        assert httpx.get(url, timeout=10).status_code == 401
        good = {"Authorization": "Bearer t0ken"}
        assert httpx.get(url, headers=good, timeout=10).status_code == 200
        named = httpx.get(url, headers={**good, "Host": "ops.internal"}, timeout=10)
        assert named.status_code == 200
        rebound = httpx.get(url, headers={**good, "Host": "evil.example"}, timeout=10)
        assert rebound.status_code == 403


def test_admin_log_says_https_when_it_speaks_tls(
    encrypted_key: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    cert, key, ca = encrypted_key
    secret = tmp_path / "password"
    secret.write_text(PASSWORD)
    admin_port = free_port()
    with server_process("hello:app", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                        "--ssl-keyfile-password-file", str(secret),
                        "--admin-port", str(admin_port)) as server:
        line = server.wait_for_line("admin listening on ")
        assert f"https://127.0.0.1:{admin_port}" in line
        context = ssl.create_default_context(cafile=str(ca))
        answer = httpx.get(f"https://127.0.0.1:{admin_port}/healthz", verify=context,
                           timeout=10)
        assert answer.status_code == 200


def test_a_worker_copy_of_the_config_carries_no_supervisor_secret() -> None:
    """The worker's copy (the environment) leaves out secrets and what only the
    supervisor uses; reading it back must not fail (it did for an admin port beyond
    loopback: the token is not in the copy, and the rule wanting one ran again)."""
    config = ServerConfig(app="a:b", admin_port=9100, admin_host="0.0.0.0", admin_token="t0k",
                          registry="etcd://root:pw@127.0.0.1:2379/x", service="svc",
                          ssl_keyfile_password=PASSWORD)
    text = config.to_json()
    assert "t0k" not in text and ":pw@" not in text and PASSWORD not in text
    worker = ServerConfig.from_json(text)
    assert (worker.admin_port, worker.registry, worker.admin_token) == (None, None, None)
    assert worker.app == "a:b"
