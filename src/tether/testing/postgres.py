"""A throwaway PostgreSQL: ``initdb`` + ``pg_ctl`` in a temp dir, for tests and demos.

The cluster listens on 127.0.0.1 on a free port, keeps its Unix socket under the
temp dir, trusts every local connection, and is stopped (``-m immediate``) and
deleted when the session ends, even if a test failed. ``initdb`` refuses to run
as root: as root the cluster runs as the ``postgres`` system user that Debian's
``postgresql`` package creates (``make test`` and ``make demo`` install the
package; see ``scripts/system-deps.sh``). Anything missing raises
:class:`PostgresUnavailable` naming what to install (the test suite fails on it
rather than skipping: a skipped proof is not a proof).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT = 30  # seconds pg_ctl waits for the server to accept connections
SETTINGS = (
    # speed: nothing here must survive a crash
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=100 -c shared_buffers=32MB"
)


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started here; the message says why and what to install."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_bindir() -> Path:
    """The directory of the newest installed PostgreSQL's initdb and pg_ctl."""
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if candidates:
        def version(path: str) -> tuple[int, ...]:
            part = Path(path).parent.parent.name
            return tuple(int(p) for p in part.split(".") if p.isdigit())

        return Path(max(candidates, key=version)).parent
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).parent
    raise PostgresUnavailable(
        "PostgreSQL binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on "
        "PATH: install Debian's `postgresql` package (`make test` does it through "
        "scripts/system-deps.sh)")


class _Runner:
    """Runs the PostgreSQL tools as the ``postgres`` user when we are root."""

    def __init__(self, bindir: Path, workdir: Path) -> None:
        self.bindir = bindir
        self.workdir = workdir
        self.as_postgres = os.geteuid() == 0

    def prepare(self, path: Path) -> None:
        if self.as_postgres:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root, but there is no `postgres` system user to run the "
                    "throwaway PostgreSQL as (initdb refuses root): install Debian's "
                    "`postgresql` package") from None
            os.chown(path, user.pw_uid, user.pw_gid)

    def run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(
            command, cwd=self.workdir, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def _check(result: subprocess.CompletedProcess[str], what: str, log: Path | None = None) -> None:
    if result.returncode != 0:
        extra = ""
        if log is not None and log.exists():
            extra = "\n--- server log ---\n" + log.read_text(errors="replace")[-4000:]
        raise PostgresUnavailable(
            f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}{extra}")


def _kill_postmaster(data: Path) -> None:
    """Last resort if ``pg_ctl stop`` failed: SIGQUIT the postmaster by its pid file."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGQUIT)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a private PostgreSQL; yield its DSN; stop it and delete its files."""
    bindir = find_bindir()
    tmp = Path(tempfile.mkdtemp(prefix="tether-pg-"))
    runner = _Runner(bindir, tmp)
    data = tmp / "data"
    log = tmp / "server.log"
    started = False
    try:
        runner.prepare(tmp)
        _check(
            runner.run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres",
                       "-E", "UTF8", "--no-sync"),
            "initdb",
        )
        for attempt in range(3):  # the free port may be taken between probe and bind
            port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={port} "
                f"-c unix_socket_directories={tmp} {SETTINGS}"
            )
            result = runner.run(
                "pg_ctl", "-D", str(data), "-l", str(log), "-o", options,
                "-w", "-t", str(START_TIMEOUT), "start", timeout=START_TIMEOUT + 10,
            )
            if result.returncode == 0:
                started = True
                break
            if attempt == 2:
                _check(result, "pg_ctl start", log)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started or (data / "postmaster.pid").exists():
            stopped = runner.run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
            if stopped.returncode != 0:
                _kill_postmaster(data)
        shutil.rmtree(tmp, ignore_errors=True)
