"""Run ``h2load`` (nghttp2's HTTP/2 load tool, Debian ``nghttp2-client``) and read its
report: one job, used by ``bench/http2.py`` and the HTTP/2 client tests.

:func:`h2load_command` builds the command line, :func:`parse_report` reads the text
h2load prints (a pure function: the tables at the top name what it looks for) and
:func:`run_h2load` does both, bounded by a request count and a time limit.

A ``http://`` URL makes h2load speak h2c with prior knowledge (the connection preface
straight away, no Upgrade); ``https://`` negotiates ``h2`` by ALPN.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

#: h2load's summary lines, e.g.
#: ``finished in 509.71ms, 3923.79 req/s, 349.63KB/s``
#: ``requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout``
#: ``status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx``
#: ``time for request:     2.33ms    108.58ms     30.30ms     13.77ms    82.80%``
FINISHED: Final = re.compile(r"^finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", re.M)
REQUESTS: Final = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout", re.M)
STATUS_CODES: Final = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx",
                                 re.M)
REQUEST_TIME: Final = re.compile(
    r"^time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", re.M)
PROTOCOL: Final = re.compile(r"^Application protocol: (\S+)", re.M)
TO_MS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0}


class H2loadError(Exception):
    """h2load could not be run, did not finish in time, or printed no report."""


@dataclass(frozen=True)
class H2loadResult:
    """What one h2load run reports."""

    requests: int  # asked for
    succeeded: int  # answered, whatever the status
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    status_other: int  # 3xx, 4xx and 5xx
    seconds: float  # the whole run
    requests_per_sec: float
    mean_ms: float  # time for a request (from its HEADERS to the end of its response)
    max_ms: float
    protocol: str | None  # "h2" or "h2c" as negotiated; None when no connection was made

    @property
    def all_2xx(self) -> bool:
        """Every request asked for was answered with a 2xx."""
        return self.status_2xx == self.requests and self.succeeded == self.requests

    def problems(self) -> str | None:
        """What went wrong, as one line; None when every request got a 2xx."""
        if self.all_2xx:
            return None
        return (f"{self.requests - self.status_2xx} of {self.requests} requests without a 2xx "
                f"({self.failed} failed, {self.errored} errored, {self.timeout} timed out, "
                f"{self.status_other} non-2xx)")


def parse_report(text: str) -> H2loadResult:
    """The numbers of h2load's report; H2loadError when a summary line is missing."""
    finished, requests = FINISHED.search(text), REQUESTS.search(text)
    codes, times = STATUS_CODES.search(text), REQUEST_TIME.search(text)
    if finished is None or requests is None or codes is None or times is None:
        raise H2loadError(f"no h2load report in its output: {text.strip()[-300:]!r}")
    total, _started, _done, succeeded, failed, errored, timeout = map(int, requests.groups())
    ok, *others = map(int, codes.groups())
    protocol = PROTOCOL.search(text)
    return H2loadResult(
        requests=total, succeeded=succeeded, failed=failed, errored=errored, timeout=timeout,
        status_2xx=ok, status_other=sum(others),
        seconds=float(finished.group(1)) * TO_MS[finished.group(2)] / 1000.0,
        requests_per_sec=float(finished.group(3)),
        mean_ms=float(times.group(5)) * TO_MS[times.group(6)],
        max_ms=float(times.group(3)) * TO_MS[times.group(4)],
        protocol=None if protocol is None else protocol.group(1),
    )


def h2load_command(url: str, *, requests: int, connections: int, streams: int,
                   extra: Sequence[str] = ()) -> list[str]:
    """``h2load -n REQUESTS -c CONNECTIONS -m STREAMS -t 1 URL``: one thread (on a
    small machine the servers need the other cores more than the load does)."""
    return ["h2load", "-n", str(requests), "-c", str(connections), "-m", str(streams),
            "-t", "1", *extra, url]


def run_h2load(url: str, *, requests: int, connections: int, streams: int,
               time_limit: float, extra: Sequence[str] = ()) -> H2loadResult:
    """Run h2load to completion and read its report. Bounded twice: ``requests`` in
    all, and ``time_limit`` seconds, past which h2load is killed (H2loadError)."""
    if shutil.which("h2load") is None:
        raise H2loadError("h2load is not installed (scripts/system-deps.sh installs "
                          "Debian's nghttp2-client)")
    command = h2load_command(url, requests=requests, connections=connections,
                             streams=streams, extra=extra)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=time_limit,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise H2loadError(f"{requests} requests not done within {time_limit:g}s") from exc
    if done.returncode != 0:
        raise H2loadError(f"h2load exited with status {done.returncode}: "
                          f"{(done.stderr or done.stdout).strip()[-300:]}")
    return parse_report(done.stdout)
