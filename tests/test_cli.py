"""The ``tether`` command as a user runs it: help, validation, environment variables,
every way of listening (TCP, ``--uds``, ``--fd``), app loading errors, lifespan
failures, signals, and the access log on stdout.

Every server here is a real ``python -m tether serve`` process.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.support import EXAMPLES, run_tether, server_process, tether_command
from tether import __version__

TESTS = Path(__file__).resolve().parent
SCOPE_APP = "apps.cli_apps:scope_app"
EXIT_USAGE = 2
EXIT_STARTUP_FAILED = 3
QUICK = 10.0  # seconds within which a failing start must have exited

SERVE_FLAGS = (
    "--host", "--port", "--uds", "--fd", "--backlog", "--factory", "--lifespan",
    "--root-path", "--loop", "--keep-alive-timeout", "--header-timeout",
    "--limit-request-line", "--limit-request-fields", "--limit-request-field-size",
    "--limit-request-body", "--access-log", "--no-access-log", "--log-level",
)


# -- a process with both output streams collected --------------------------------------


class Lines:
    """Collects one text stream of a process line by line, on a reader thread."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lines: list[str] = []
        self.eof = False
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.stream:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.eof = True
            self.changed.notify_all()

    def text(self) -> str:
        with self.changed:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Return the first match of ``pattern`` in a line; fail after ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines:
                    found = regex.search(line)
                    if found:
                        return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.eof:
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout}s:\n{''.join(self.lines)}"
                    )
                self.changed.wait(min(remaining, 0.1))

    def close(self) -> None:
        self.thread.join(5)
        self.stream.close()


@dataclass
class Tether:
    proc: subprocess.Popen[str]
    stdout: Lines
    stderr: Lines
    address: str = ""

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20.0) -> str:
        self.address = self.stderr.wait_for(r"serving on (\S+)", timeout).group(1)
        return self.address

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"tether still running after {timeout}s:\n{self.stderr.text()}"
            ) from None


@contextlib.contextmanager
def spawn(
    *args: str,
    cwd: Path = EXAMPLES,
    env: dict[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Iterator[Tether]:
    """Run ``tether serve ARGS`` (exactly these: no ``--port`` is added) and wait until
    it serves; stdout and stderr are both collected.

    The supervisor and its workers get a process group of their own, killed on exit
    if anything of it is still running (a failed test must leave no worker behind).
    """
    proc = subprocess.Popen(
        tether_command("serve", *args), cwd=cwd, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=pass_fds,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    running = Tether(proc, Lines(proc.stdout), Lines(proc.stderr))
    try:
        running.wait_ready()
        yield running
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        running.stdout.close()
        running.stderr.close()


def run_serve(*args: str, cwd: Path = EXAMPLES, timeout: float = 30.0) -> tuple[
    subprocess.CompletedProcess[str], float
]:
    started = time.monotonic()
    result = run_tether("serve", *args, cwd=cwd, timeout=timeout)
    return result, time.monotonic() - started


def get_json(url: str, **kwargs: Any) -> Any:
    with httpx.Client(timeout=10.0, **kwargs) as client:
        r = client.get(url)
    assert r.status_code == 200, r.text
    return r.json()


# -- help and validation ---------------------------------------------------------------


def test_help() -> None:
    result = run_tether("--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert "serve" in result.stdout
    version = run_tether("--version")
    assert version.returncode == 0
    assert __version__ in version.stdout


def test_serve_help_lists_every_flag() -> None:
    result = run_tether("serve", "--help")
    assert result.returncode == 0, result.stderr
    listed = set(re.findall(r"--[a-z][a-z-]*", result.stdout))
    missing = [flag for flag in SERVE_FLAGS if flag not in listed]
    assert not missing, f"serve --help does not list {missing}:\n{result.stdout}"
    assert "APP" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--port", "70000"], "--port"),
        (["--port", "-1"], "--port"),
        (["--port", "http"], "--port"),
        (["--header-timeout", "0"], "--header-timeout"),
        (["--keep-alive-timeout", "-1"], "--keep-alive-timeout"),
        (["--root-path", "api"], "--root-path"),
        (["--root-path", "/api/"], "--root-path"),
        (["--loop", "bogus"], "--loop"),
        (["--lifespan", "maybe"], "--lifespan"),
        (["--log-level", "loud"], "--log-level"),
        (["--backlog", "0"], "--backlog"),
        (["--limit-request-body", "-5"], "--limit-request-body"),
        (["--limit-request-line", "0"], "--limit-request-line"),
        (["--uds", "/tmp/x.sock", "--fd", "3"], "mutually exclusive"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_invalid_values_are_usage_errors(args: list[str], needle: str) -> None:
    result, elapsed = run_serve("hello:app", *args)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "Error" in result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < QUICK


def test_app_must_be_module_colon_attr() -> None:
    result, _ = run_serve("hello")
    assert result.returncode == EXIT_USAGE
    assert "MODULE:ATTR" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_environment_value_is_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_HEADER_TIMEOUT", "0")
    result, _ = run_serve("hello:app")
    assert result.returncode == EXIT_USAGE
    assert "--header-timeout" in result.stderr


# -- environment variables -------------------------------------------------------------


def test_env_root_path_and_flag_precedence() -> None:
    env = {"TETHER_ROOT_PATH": "/api"}
    with server_process(SCOPE_APP, cwd=TESTS, env=env) as proc:
        scope = get_json(f"{proc.url}/items?x=1")
        assert scope["root_path"] == "/api"
        assert scope["path"] == "/api/items"
        assert scope["raw_path"] == "/api/items"
    with server_process(SCOPE_APP, "--root-path", "/v2", cwd=TESTS, env=env) as proc:
        assert get_json(f"{proc.url}/items")["root_path"] == "/v2"


def test_env_app_argument() -> None:
    with server_process(cwd=TESTS, env={"TETHER_APP": SCOPE_APP}) as proc:
        assert get_json(f"{proc.url}/")["path"] == "/"


def test_limit_flags_are_applied() -> None:
    with server_process(
        SCOPE_APP, "--limit-request-body", "10", "--limit-request-line", "100", cwd=TESTS
    ) as proc, httpx.Client(base_url=proc.url, timeout=10.0) as client:
        assert client.post("/", content=b"x" * 10).json()["body_length"] == 10
        assert client.post("/", content=b"x" * 11).status_code == 413
        assert client.get("/" + "a" * 200).status_code == 414


@pytest.mark.parametrize(("loop", "module"), [
    ("asyncio", "asyncio.unix_events"), ("uvloop", "uvloop"), ("auto", "uvloop"),
])
def test_loop_choice(loop: str, module: str) -> None:
    pytest.importorskip("uvloop")
    with server_process(SCOPE_APP, "--loop", loop, cwd=TESTS) as proc:
        assert get_json(f"{proc.url}/")["loop"] == module


# -- ways of listening -----------------------------------------------------------------


def test_uds_serves_on_a_unix_socket() -> None:
    # A short directory: a Unix socket path must fit in about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="tt-", dir="/tmp") as tmp:
        path = os.path.join(tmp, "s.sock")
        with spawn(SCOPE_APP, "--uds", path, cwd=TESTS) as server:
            assert server.address == f"unix:{path}"
            assert Path(path).is_socket()
            scope = get_json("http://tether/some/path",
                             transport=httpx.HTTPTransport(uds=path))
            assert scope["path"] == "/some/path"
            assert scope["client"] is None
            assert scope["server"] == [path, None]
            assert server.stop() == 0


def test_fd_serves_on_an_inherited_listening_socket() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        # --port 0 as well: --fd must take precedence over it.
        with spawn("hello:app", "--fd", str(fd), "--port", "0", pass_fds=(fd,)) as server:
            assert server.address == f"http://127.0.0.1:{port}"
            with httpx.Client(timeout=10.0) as client:
                assert client.get(f"http://127.0.0.1:{port}/").text == "hello, world\n"
            assert server.stop() == 0


def test_fd_that_is_not_a_socket_fails_clearly() -> None:
    result, elapsed = run_serve("hello:app", "--fd", "987")
    assert result.returncode != 0
    assert "--fd 987" in result.stderr
    assert elapsed < QUICK


def test_port_in_use_fails_clearly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result, elapsed = run_serve("hello:app", "--port", str(port))
    assert result.returncode != 0
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < QUICK


# -- loading the application -----------------------------------------------------------


def test_factory() -> None:
    with server_process("apps.cli_apps:create_app", "--factory", cwd=TESTS) as proc:
        assert get_json(f"{proc.url}/") == {"made_by": "factory"}


def test_factory_that_raises_fails_startup() -> None:
    result, elapsed = run_serve("apps.cli_apps:broken_factory", "--factory", cwd=TESTS)
    assert result.returncode == EXIT_STARTUP_FAILED
    assert "sentinel: the factory could not build the app" in result.stderr
    assert elapsed < QUICK


@pytest.mark.parametrize(
    ("target", "needles"),
    [
        ("nosuchmodule:app", ["nosuchmodule"]),
        ("apps.cli_apps:nosuchattr", ["nosuchattr", "apps.cli_apps"]),
        ("apps.cli_apps:not_callable", ["not_callable"]),
        # The module exists; a dependency it imports does not: say which.
        ("apps.broken_import:app", ["apps.broken_import", "nosuchdependency_xyz"]),
    ],
)
def test_unloadable_app_exits_quickly(target: str, needles: list[str]) -> None:
    result, elapsed = run_serve(target, "--port", "0", cwd=TESTS)
    assert result.returncode == EXIT_STARTUP_FAILED, result.stderr
    for needle in needles:
        assert needle in result.stderr
    assert elapsed < QUICK


# -- lifespan --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_lifespan_startup_failed_message(mode: str) -> None:
    result, elapsed = run_serve(
        "apps.cli_apps:startup_failed_app", "--lifespan", mode, "--port", "0", cwd=TESTS
    )
    assert result.returncode == EXIT_STARTUP_FAILED, result.stderr
    assert "sentinel: database unreachable" in result.stderr
    assert "serving on" not in result.stderr
    assert elapsed < QUICK


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_lifespan_startup_raises(mode: str) -> None:
    result, elapsed = run_serve(
        "apps.cli_apps:startup_raises_app", "--lifespan", mode, "--port", "0", cwd=TESTS
    )
    assert result.returncode == EXIT_STARTUP_FAILED, result.stderr
    assert "RuntimeError" in result.stderr
    assert "sentinel: startup exploded" in result.stderr
    assert "serving on" not in result.stderr
    assert elapsed < QUICK


def test_app_without_lifespan_serves_in_auto_mode() -> None:
    with server_process("apps.cli_apps:no_lifespan_app", cwd=TESTS) as proc:
        assert get_json(f"{proc.url}/") == {"lifespan": "none"}
        assert proc.stop() == 0


def test_app_without_lifespan_fails_in_on_mode() -> None:
    result, _ = run_serve(
        "apps.cli_apps:no_lifespan_app", "--lifespan", "on", "--port", "0", cwd=TESTS
    )
    assert result.returncode == EXIT_STARTUP_FAILED
    assert "sentinel: unsupported scope type 'lifespan'" in result.stderr


# -- signals ---------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_on_idle_server_exits_zero_promptly(sig: signal.Signals) -> None:
    with server_process("hello:app") as proc:
        started = time.monotonic()
        assert proc.stop(sig) == 0, proc.output()
        assert time.monotonic() - started < 5.0


def test_sigterm_with_idle_keep_alive_connection() -> None:
    """An idle keep-alive connection is not closed under the client at once (its next
    request would be reset): it gets until its keep-alive timer, within the grace
    period. It is not in-flight work, so the stop is clean (exit 0), never "forced"."""
    with spawn("hello:app", "--port", "0", "--keep-alive-timeout", "1",
               "--graceful-timeout", "20") as server, httpx.Client(timeout=10.0) as client:
        assert client.get(f"{server.url}/").status_code == 200  # connection stays open
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait_exit(5.0) == 0
    with spawn("hello:app", "--port", "0", "--keep-alive-timeout", "60",
               "--graceful-timeout", "1") as server, httpx.Client(timeout=10.0) as client:
        assert client.get(f"{server.url}/").status_code == 200
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait_exit(5.0) == 0  # the grace period bounds it; nothing was cut


# -- logging ---------------------------------------------------------------------------

ACCESS_LINE = (
    r"(?P<client>\d+\.\d+\.\d+\.\d+:\d+) \"(?P<method>[A-Z]+) (?P<target>\S+)\" "
    r"(?P<status>\d{3}) (?P<bytes>\d+) (?P<ms>\d+\.\d+)ms$"
)


def raw_request(port: int, request: bytes) -> tuple[int, bytes]:
    """Send one request that closes the connection; return our port and every byte read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10.0) as sock:
        local_port = int(sock.getsockname()[1])
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return local_port, b"".join(chunks)


def test_access_log_line_on_stdout() -> None:
    with spawn("hello:app", "--port", "0") as server:
        local_port, raw = raw_request(
            server.port, b"GET /json?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        found = server.stdout.wait_for(r'"GET /json\?x=1" ')
        line = re.search(ACCESS_LINE, found.string)
        assert line is not None, found.string
        assert line["method"] == "GET"
        assert line["client"] == f"127.0.0.1:{local_port}"
        assert line["target"] == "/json?x=1"
        assert line["status"] == "200"
        assert int(line["bytes"]) == len(raw)  # everything written, head included
        assert 0.0 <= float(line["ms"]) < 10_000

        _, raw = raw_request(server.port, b"POST /nope HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 404")
        server.stdout.wait_for(r'"POST /nope" 404 \d+ ')
        assert server.stop() == 0
    # Access lines go to stdout only; lifecycle lines to stderr only.
    assert '"GET /json?x=1"' not in server.stderr.text()
    assert "serving on" not in server.stdout.text()
    assert all(re.search(ACCESS_LINE, line) for line in server.stdout.lines)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_access_log_can_be_turned_off(how: str) -> None:
    args = ["--no-access-log"] if how == "flag" else []
    env = {"TETHER_ACCESS_LOG": "false"} if how == "env" else {}
    with spawn("hello:app", "--port", "0", *args, env=env) as server:
        with httpx.Client(timeout=10.0) as client:
            for _ in range(3):
                assert client.get(f"{server.url}/json", headers={"Connection": "close"}).json()
        assert server.stop() == 0
        assert server.stdout.text() == ""
