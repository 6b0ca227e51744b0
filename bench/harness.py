"""What the benchmark scripts in ``bench/`` share: one implementation of each helper.

The scripts (``server.py``, ``reload.py``, ``client.py``, ``registry_scale.py``,
``overload.py``) all start servers as child processes, wait until they answer, stop
them (and everything they started) whatever happens, describe the machine they ran
on and write their results as text tables and JSON. Those pieces live here:

* processes: :func:`free_port`, :func:`start_process`, :func:`stop_process`,
  :func:`running` (start, and always stop), :func:`proc_stat` (``/proc/<pid>/stat``);
* readiness: :func:`http_get` (one GET on a fresh connection) and
  :func:`wait_ready` (poll until ready, the process exits, or a deadline);
* logs: :func:`tail`, :func:`quoted`;
* the machine: :func:`cpu_model`, :func:`package_versions`, :func:`machine_facts`,
  :func:`format_loadavg`, :func:`record_loadavg`;
* output: :func:`utc_timestamp`, :func:`settings_of`, :func:`json_header`,
  :func:`write_json`, :func:`print_report`, :func:`save_results`;
* the command line: :func:`count_type`, :func:`names_type`, :func:`rotated`,
  :func:`sigterm_as_interrupt`, :func:`run_interruptibly`.

Each script imports it as ``bench.harness`` (a script puts the repository root on
``sys.path`` first, so it can be run from anywhere). Nothing here prints unless its
name says so, and nothing here is specific to one script: where the scripts differ
(how a server is stopped, what a readiness check looks for, what an error says), the
difference is a parameter.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import importlib.metadata
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, Final, Literal, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ROOT: Final = Path(__file__).resolve().parent.parent
PYTHON: Final = sys.executable
HOST: Final = "127.0.0.1"
READY_TIMEOUT: Final = 30.0  # seconds a server gets to be ready, unless a script says otherwise

T = TypeVar("T")


def median_known(values: Iterable[float | None]) -> float | None:
    """The median of the values that are known (None: a round without that number)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


class BenchError(Exception):
    """A run could not be completed; the message says why (shown in the report)."""


# -- processes ---------------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def start_process(
    argv: Sequence[str],
    log: IO[Any] | None,
    *,
    name: str | None = None,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    stdin: int | None = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` from ``cwd`` (the repository root) in a session of its own.

    Its own session makes it the leader of its own process group, so that
    :func:`stop_process` stops whatever it starts (workers) with it. Its output
    (stdout and stderr) goes to ``log``, a file rather than a pipe so that a chatty
    server never blocks; ``None`` leaves both to this process's. ``stdin`` is
    ``/dev/null`` unless given (``None`` inherits). A command that cannot be run
    raises BenchError ("could not run <name, default argv[0]>: ...").
    """
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=log,
            stderr=None if log is None else subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise BenchError(f"could not run {name or argv[0]}: {exc}") from exc


def stop_process(
    proc: subprocess.Popen[bytes],
    timeout: float,
    *,
    term_group: bool = False,
    reap_timeout: float | None = None,
) -> int | None:
    """Stop a process started by :func:`start_process`, and its whole process group.

    SIGTERM (to the process while it runs, or with ``term_group`` to every process
    of its group, whether the leader still runs or not), wait up to ``timeout``
    seconds, then, whatever happened, SIGKILL whatever is left of its process group
    (the group id is its pid: this also reaps workers that outlived their parent) and
    reap it (waiting at most ``reap_timeout`` seconds, when given). Returns its exit
    status when it exited by itself, before or within ``timeout``, else None.
    """
    status: int | None = None
    try:
        status = proc.poll()
        if term_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        elif status is None:
            proc.terminate()
        if status is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = proc.wait(timeout)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(reap_timeout)
    return status


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    log: IO[Any] | None,
    *,
    stop_timeout: float,
    term_group: bool = False,
    reap_timeout: float | None = None,
    name: str | None = None,
    env: dict[str, str] | None = None,
    stdin: int | None = subprocess.DEVNULL,
) -> Iterator[subprocess.Popen[bytes]]:
    """:func:`start_process`, and :func:`stop_process` when the block exits, however."""
    proc = start_process(argv, log, name=name, env=env, stdin=stdin)
    try:
        yield proc
    finally:
        stop_process(proc, stop_timeout, term_group=term_group, reap_timeout=reap_timeout)


def proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name, from the state on
    (``[0]`` is the state, ``[11]``/``[12]`` utime/stime, ``[19]`` the start time).
    Raises OSError when there is no such process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; the fields after its ')' are plain.
    return stat.rsplit(")", 1)[1].split()


def start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot), or None if it is gone or a zombie.
    Together with the pid it names one process, whatever reuses the pid later."""
    try:
        fields = proc_stat(pid)
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


class ProcessFamily:
    """A supervisor and every worker of it seen so far, each as (pid, start time): a
    pid is only ever signalled while it is still the same process. Workers run in
    sessions of their own, so a process group would not reach them."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.started = start_time(pid)
        self.seen: set[tuple[int, str]] = set()
        self._remember(pid)

    def _supervisor_runs(self) -> bool:
        """The supervisor still runs (its pid is not yet another process's)."""
        return self.started is not None and start_time(self.pid) == self.started

    def _remember(self, pid: int) -> None:
        started = start_time(pid)
        if started is not None:
            self.seen.add((pid, started))

    def pids(self) -> set[int]:
        """The supervisor and its children, as they are now (and remember them)."""
        found = set()
        if self._supervisor_runs():
            found.add(self.pid)
            for task in Path(f"/proc/{self.pid}/task").glob("*"):
                with contextlib.suppress(OSError):
                    found.update(int(c) for c in (task / "children").read_text().split())
        for pid in found:
            self._remember(pid)
        return found

    def _freeze_supervisor(self, timeout: float = 5.0) -> None:
        if not self._supervisor_runs():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if proc_stat(self.pid)[0] in ("T", "t", "Z", "X"):
                    return  # stopped (or already dead): it forks no more
            except OSError:
                return
            time.sleep(0.001)

    def alive(self) -> bool:
        """Any process of the family ever seen still runs."""
        return any(start_time(pid) == started for pid, started in self.seen)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to every process of the family still running.

        SIGKILL is "the machine died": the supervisor is stopped (SIGSTOP) first and
        its children read only once it is stopped, so that it cannot start a
        replacement worker between one kill and the next, which would outlive the
        family and serve on its sockets."""
        if sig == signal.SIGKILL:
            self._freeze_supervisor()
        self.pids()
        for pid, started in self.seen:
            if start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)


# -- readiness ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A complete HTTP response: status, headers and body."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (several joined by ", "), None when absent."""
        values = self.headers.get_all(name)
        return None if values is None else ", ".join(values)


def http_get(port: int, path: str = "/", *, host: str = HOST, timeout: float = 2.0) -> Reply:
    """One GET ``path`` on a fresh connection to ``host:port``, read to the end.

    Raises OSError or http.client.HTTPException while nothing answers (yet)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return Reply(response.status, response.msg, body)


def wait_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    exited: Callable[[int], str],
    timed_out: Callable[[str], str],
    timeout: float = READY_TIMEOUT,
    interval: float = 0.05,
) -> None:
    """Poll ``ready()`` every ``interval`` seconds until it returns True.

    ``ready`` raising OSError or http.client.HTTPException (see :func:`http_get`)
    counts as not ready yet. Raises BenchError(``exited(status)``) as soon as
    ``proc`` has exited, and BenchError(``timed_out(last)``) once ``timeout`` seconds
    have passed, ``last`` naming the last connection error seen. ``ready`` raises
    BenchError itself when the answer is wrong (then waiting longer would not help).
    """
    deadline = time.monotonic() + timeout
    last = "no connection error"
    while True:
        status = proc.poll()
        if status is not None:
            raise BenchError(exited(status))
        try:
            if ready():
                return
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise BenchError(timed_out(last))
        time.sleep(interval)  # polling a child process's readiness


# -- logs --------------------------------------------------------------------------------


def tail(log: Path | IO[str], lines: int) -> list[str]:
    """The last ``lines`` lines of a log: a file by path (none when it cannot be read),
    or an open text file (flushed, then read again from its start)."""
    if isinstance(log, Path):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            return []
    else:
        log.flush()
        log.seek(0)
        text = log.read()
    return text.splitlines()[-lines:]


def quoted(lines: Iterable[str]) -> list[str]:
    """Lines of a server's output, indented and marked as quoted in a report."""
    return [f"    | {line}" for line in lines]


# -- the machine -------------------------------------------------------------------------


def cpu_model(default: str = "unknown") -> str:
    """The CPU's model name from /proc/cpuinfo, or ``default``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return default


def package_versions(names: Iterable[str], missing: T) -> dict[str, str | T]:
    """The installed version of each distribution, ``missing`` for one not installed."""
    versions: dict[str, str | T] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = missing
    return versions


def machine_facts(versioned: Iterable[str]) -> dict[str, Any]:
    """CPUs, CPU model, Python, platform and the versions of ``versioned``
    ("not installed" for a missing one); a script adds its own keys after these."""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(versioned, "not installed"),
    }


def format_loadavg(values: Iterable[float]) -> str:
    """A load average as printed: ``0.52 0.61 0.70``."""
    return " ".join(f"{v:.2f}" for v in values)


def record_loadavg(facts: dict[str, Any], when: str) -> str:
    """Keep the load average of now in ``facts["loadavg_<when>"]``; return it as printed."""
    facts[f"loadavg_{when}"] = os.getloadavg()
    return format_loadavg(facts[f"loadavg_{when}"])


# -- output ------------------------------------------------------------------------------


def utc_timestamp() -> str:
    """Now, in UTC, to the second (ISO 8601)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def settings_of(options: DataclassInstance) -> dict[str, Any]:
    """A script's parsed options as JSON-ready settings (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}


def json_header(
    options: DataclassInstance, facts: dict[str, Any], argv: Sequence[str]
) -> dict[str, Any]:
    """The first keys of a results file: date, command, settings, machine."""
    return {
        "date": utc_timestamp(),
        "command": [PYTHON, *argv],
        "settings": settings_of(options),
        "machine": facts,
    }


def write_json(
    path: Path,
    data: Any,
    *,
    trailing_newline: bool = True,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write ``data`` to ``path`` as indented JSON."""
    text = json.dumps(data, indent=2, default=default)
    path.write_text(text + "\n" if trailing_newline else text)


def print_report(facts: dict[str, Any], report: str, skewed: str) -> None:
    """Print the final report, after keeping the load average of now in ``facts``, and
    then that load average, noting that other load skews ``skewed``."""
    load_after = record_loadavg(facts, "after")
    print(report, flush=True)
    print(f"\nload average after: {load_after} "
          f"(on {facts['nproc']} CPUs; other load skews {skewed})", flush=True)


def save_results(path: Path, data: Any) -> None:
    """:func:`write_json`, then say where the raw results went."""
    write_json(path, data)
    print(f"\nraw results written to {path}")


# -- the command line --------------------------------------------------------------------


def count_type(minimum: Literal[0, 1], name: str) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least ``minimum`` (0 or 1).

    ``name`` is what argparse calls it when the value is not a number at all
    ("invalid <name> value: 'x'")."""

    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(
                f"must be at least 1, got {number}" if minimum == 1
                else f"must be 0 or more, got {number}"
            )
        return number

    parse.__name__ = name
    return parse


def names_type(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse ``type``: a comma list of some of ``choices``, duplicates dropped."""

    def parse(value: str) -> list[str]:
        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"expected a comma list of {', '.join(choices)}; got {value!r}"
            )
        return list(dict.fromkeys(names))  # drop duplicates, keep order

    return parse


def rotated(items: Sequence[T], by: int) -> list[T]:
    """``items`` starting at position ``by`` (mod len): round r runs item r first."""
    k = by % len(items)
    return [*items[k:], *items[:k]]


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def sigterm_as_interrupt() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every server is stopped on the way out."""
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)


def run_interruptibly(work: Callable[[], None]) -> bool:
    """Run ``work``; True when Ctrl-C (or SIGTERM) ended it, after saying so."""
    try:
        work()
    except KeyboardInterrupt:
        print("\ninterrupted: every server was stopped; results so far:", flush=True)
        return True
    return False


# -- result tables --------------------------------------------------------------------------


def errors_text(non_2xx: int, socket_errors: int, prefix: str = "") -> str:
    """wrk's non-2xx responses and socket errors, as a table cell ("" when none)."""
    parts = []
    if non_2xx:
        parts.append(f"non-2xx {non_2xx}")
    if socket_errors:
        parts.append(f"socket {socket_errors}")
    return prefix + ", ".join(parts) if parts else ""


def num_text(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def range_text(values: list[float], fmt: str) -> str:
    """``min-max`` of several runs; empty for fewer than two."""
    if len(values) < 2:
        return ""
    return f"{format(min(values), fmt)}-{format(max(values), fmt)}"
