"""A throwaway etcd for the tests and the registry benchmark: Debian's ``etcd-server``.

One member in a temp data dir, client and peer ports picked free on 127.0.0.1,
``--heartbeat-interval 10 --election-timeout 100`` so that etcd's minimum lease TTL
(1.5 election timeouts, rounded up to a second) lets a 1 s TTL be honoured. Ready when
``/health`` says so (polled with a deadline); stopped by PID (SIGTERM, then SIGKILL)
and its temp dir deleted, even when a test failed. ``stop()`` and ``start()`` restart
it on the same data dir and ports (the "etcd restarted under a watcher" test).

A missing binary fails the tests that need it instead of skipping them: a skipped
proof is not a proof (``make test`` installs it through ``scripts/system-deps.sh``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port

ETCD = "/usr/bin/etcd"
START_TIMEOUT = 20.0  # seconds until /health must say true


class EtcdError(RuntimeError):
    """etcd did not start (its log is in the message)."""


class EtcdServer:
    """One etcd member on 127.0.0.1; ``url(prefix)`` is a tether registry URL for it."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_path = workdir / "etcd.log"
        self.client_port = 0
        self.peer_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def http(self) -> str:
        return f"http://{self.endpoint}"

    def url(self, prefix: str = "/tether") -> str:
        return f"etcd://{self.endpoint}/{prefix.strip('/')}"

    def command(self) -> list[str]:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary, "--name", "tether-test", "--data-dir", str(self.data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"tether-test={peer}",
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "10", "--election-timeout", "100",
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
        ]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start etcd (on new free ports the first time, the same ones after that) and
        return once ``/health`` is true."""
        assert self.proc is None or self.proc.poll() is not None, "etcd is running already"
        fresh = self.client_port == 0
        for attempt in range(3):  # a free port may be taken between probe and bind
            if fresh:
                self.client_port, self.peer_port = free_port(), free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    self.command(), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
            try:
                self._wait_healthy(timeout)
                return
            except EtcdError:
                self.stop()
                if not fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _wait_healthy(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                last = f"etcd exited with {self.proc.returncode}"
                break
            if self.healthy():
                return
            time.sleep(0.02)
        raise EtcdError(f"etcd not healthy within {timeout}s ({last}):\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http}/health", timeout=1) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def metrics(self) -> str:
        """etcd's Prometheus metrics, as text."""
        with urllib.request.urlopen(f"{self.http}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def log_tail(self, size: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-size:]
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit within ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def find_etcd() -> str:
    if Path(ETCD).exists():
        return ETCD
    found = shutil.which("etcd")
    if found is None:
        pytest.fail(
            f"etcd not found at {ETCD} or on PATH: install Debian's `etcd-server` package "
            "(`make test` does it through scripts/system-deps.sh)",
            pytrace=False,
        )
    return found


@contextlib.contextmanager
def throwaway_etcd(binary: str | None = None) -> Iterator[EtcdServer]:
    """Start a private etcd; yield it; stop it and delete its files."""
    workdir = Path(tempfile.mkdtemp(prefix="tether-etcd-"))
    server = EtcdServer(binary or find_etcd(), workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """An etcd started once for the session. A test that stops it starts it again."""
    try:
        with throwaway_etcd() as server:
            yield server
    except EtcdError as exc:
        pytest.fail(str(exc), pytrace=False)
