"""Test helpers: run tether in-process on a real loopback socket, or as a real process.

Every helper cleans up what it started, even when the test fails, and waits on
conditions with deadlines (never a bare sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import psutil

from tether.asgi import ASGIApp, Receive
from tether.config import RequestLimits, ServerConfig
from tether.registry import Registry, open_registry
from tether.server.sockets import bind_tcp
from tether.server.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
APPS = Path(__file__).resolve().parent / "apps"


@dataclass
class RunningServer:
    host: str
    port: int
    worker: Worker

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextlib.asynccontextmanager
async def serve(
    app: ASGIApp, *, limits: RequestLimits | None = None, **config: Any
) -> AsyncIterator[RunningServer]:
    """Serve ``app`` in this event loop on 127.0.0.1:<free port> until the block exits."""
    cfg = ServerConfig(
        app="tests:app",
        port=0,
        limits=limits or RequestLimits(),
        access_log=config.pop("access_log", False),
        lifespan=config.pop("lifespan", "off"),
        graceful_timeout=config.pop("graceful_timeout", 5.0),
        force_exit_timeout=config.pop("force_exit_timeout", 1.0),
        **config,
    )
    sock = bind_tcp("127.0.0.1", 0, 128)
    port = sock.getsockname()[1]
    worker = Worker(app, cfg, [sock])
    await worker.start()
    try:
        yield RunningServer("127.0.0.1", port, worker)
    finally:
        await worker.stop()


async def read_body(receive: Receive) -> bytes:
    """An ASGI request's whole body."""
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


def get_when_serving(
    url: str, timeout: float, what: str, alive: Callable[[], None] | None = None
) -> httpx.Response:
    """``GET url`` once something starts answering there (a server coming up, or back
    after a fault); ``alive`` may fail the wait early. Fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"{what}: nothing answered within {timeout}s"
            if alive is not None:
                alive()
            time.sleep(0.05)


def status_of(raw: bytes) -> int:
    """The status code of the first response in raw HTTP/1.1 bytes."""
    assert raw.startswith(b"HTTP/1.1 "), raw[:80]
    return int(raw[9:12])


async def wait_for(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


async def raw_exchange(
    port: int, data: bytes | list[bytes], *, timeout: float = 5.0, half_close: bool = False
) -> bytes:
    """Send raw bytes (in the given pieces), read until the server closes; return all."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in [data] if isinstance(data, bytes) else data:
            writer.write(piece)
            await writer.drain()
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass
class ServerProcess:
    """A ``tether`` process; its stderr is collected line by line by a reader thread."""

    proc: subprocess.Popen[str]
    port: int = 0
    lines: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for_line(self, needle: str, timeout: float = 20.0) -> str:
        """Return the first stderr line containing ``needle``; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and self._eof):
                    raise AssertionError(
                        f"no line with {needle!r} within {timeout}s:\n{''.join(self.lines)}"
                    )
                self._changed.wait(min(remaining, 0.1))

    _eof: bool = False

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def tether_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tether", *args]


@contextlib.contextmanager
def server_process(
    *args: str, cwd: Path = EXAMPLES, env: dict[str, str] | None = None, timeout: float = 20.0,
    stdout: Path | None = None,
) -> Iterator[ServerProcess]:
    """Run ``tether serve ARGS --port 0`` as a real process; yield once it listens.

    The process is killed on exit if the test did not stop it.
    """
    with tether_process("serve", *args, "--port", "0", cwd=cwd,
                        env={**os.environ, **(env or {})}, timeout=timeout,
                        stdout=stdout) as running:
        yield running


@contextlib.contextmanager
def tether_process(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 20.0,
    max_fds: int | None = None, stdout: Path | None = None,
) -> Iterator[ServerProcess]:
    """Run ``python -m tether ARGS`` (serve, proxy) with exactly ``env``; yield once it
    serves (``port`` read from its log). ``max_fds``: its ``ulimit -n``; ``stdout``:
    a file that gets its standard output (the access log), else it is dropped.

    On exit: a graceful stop, a kill if that hangs, and any worker still alive
    (workers run in sessions of their own) is killed too.
    """

    def limit_fds() -> None:
        if max_fds is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))

    with contextlib.ExitStack() as files:
        out = (subprocess.DEVNULL if stdout is None
               else files.enter_context(stdout.open("w", encoding="utf-8")))
        proc = subprocess.Popen(
            tether_command(*args),
            cwd=cwd, env=env, stdout=out, stderr=subprocess.PIPE, text=True,
            preexec_fn=limit_fds if max_fds is not None else None,
        )
    running = ServerProcess(proc)
    reader = threading.Thread(target=running._read, daemon=True)
    reader.start()
    try:
        line = running.wait_for_line("serving on http", timeout)
        # the last ":PORT" of the address (a --log-format json line goes on after it)
        served = re.search(r"serving on \S+:(\d+)", line)
        assert served is not None, line
        running.port = int(served.group(1))
        yield running
    finally:
        _stop_tree(proc)
        reader.join(5)
        if proc.stderr is not None:
            proc.stderr.close()


def _stop_tree(proc: subprocess.Popen[str]) -> None:
    try:
        workers = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    # A graceful stop first, so the workers go too; kill only if that hangs.
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=5)
    for worker in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    psutil.wait_procs(alive, timeout=5)


def run_tether(
    *args: str, cwd: Path = EXAMPLES, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run the ``tether`` command to completion (for commands expected to exit)."""
    return subprocess.run(
        tether_command(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_limits(**changes: Any) -> RequestLimits:
    return replace(RequestLimits(), **changes)


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Registry]:
    """A registry opened from ``url``, closed when the block exits."""
    registry = open_registry(url)
    try:
        yield registry
    finally:
        await registry.close()
