"""Smoke test of ``bench/http2.py``: every server in its ``--quick`` mode (2,000
h2load requests, no warmup), and its hook for ``bench/grpc_unary.py``.

Checks the harness itself (start, the HTTP/2 readiness probe, h2load and the reading
of its report, stop, ratios, JSON), not performance: tether must complete its run
with every request answered 2xx; a peer's failure is reported, not asserted on.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from bench import http2
from bench.h2load import H2loadError, parse_report

ROOT = Path(__file__).resolve().parent.parent

#: a real h2load report (nghttp2 1.52), trimmed to the lines that are read
REPORT = """\
Application protocol: h2c
finished in 509.71ms, 3923.79 req/s, 349.63KB/s
requests: 2000 total, 2000 started, 2000 done, 1990 succeeded, 10 failed, 10 errored, 0 timeout
status codes: 1985 2xx, 0 3xx, 5 4xx, 0 5xx
traffic: 178.21KB (182488) total, 117.20KB (120008) headers (space savings 35.48%)
                     min         max         mean         sd        +/- sd
time for request:      950us       1.20s     30.30ms     13.77ms    82.80%
"""


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed "
                    "(scripts/system-deps.sh installs Debian's nghttp2-client)")
@pytest.mark.timeout(300)
def test_bench_http2_runs_every_server_and_prints_ratios(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    command = [sys.executable, str(ROOT / "bench" / "http2.py"), "--quick",
               "--json", str(results)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=280)

    output = done.stdout + done.stderr
    for peer, target in (("hypercorn", "2"), ("granian", "0.8")):
        ratio = (rf"^\s*tether/{peer}\s+\d+\.\d+\s+CPU\s+\d+\.\d+\s+"
                 rf"target >= {re.escape(target)}: (met|NOT met)$")
        assert re.search(ratio, done.stdout, re.M), output
    assert re.search(r"^gRPC", done.stdout, re.M), output  # its lines, or why there are none
    data = json.loads(results.read_text())
    assert {run["server"] for run in data["runs"]} == {"tether", "hypercorn", "granian"}
    [tether] = [run for run in data["runs"] if run["server"] == "tether"]
    assert tether["error"] is None, output
    assert tether["result"]["status_2xx"] == tether["result"]["requests"] == 2000, output
    assert tether["result"]["protocol"] == "h2c", output  # HTTP/2, not a fallback
    assert tether["result"]["requests_per_sec"] > 0, output
    # exit status 1 means some peer failed: shown in the output, not a harness fault
    assert done.returncode in (0, 1), output


def test_h2load_report_is_read_with_its_units() -> None:
    result = parse_report(REPORT)
    assert (result.requests, result.succeeded, result.failed, result.status_2xx,
            result.status_other) == (2000, 1990, 10, 1985, 5)
    assert result.requests_per_sec == pytest.approx(3923.79)
    assert result.seconds == pytest.approx(0.50971)
    assert result.mean_ms == pytest.approx(30.30)
    assert result.max_ms == pytest.approx(1200.0)
    assert result.protocol == "h2c"
    assert result.problems() == ("15 of 2000 requests without a 2xx (10 failed, 10 errored, "
                                 "0 timed out, 5 non-2xx)")
    with pytest.raises(H2loadError, match="no h2load report"):
        parse_report("starting benchmark...\n")


def test_the_grpc_benchmark_is_run_when_it_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []

    def run(quick: bool) -> list[str]:
        calls.append(quick)
        return ["unary RPCs/s: tether 1,000  grpc.aio 1,200  ratio 0.83"]

    monkeypatch.setitem(sys.modules, http2.GRPC_MODULE,
                        types.SimpleNamespace(run=run))
    assert http2.grpc_lines(True) == (["unary RPCs/s: tether 1,000  grpc.aio 1,200  ratio 0.83"],
                                      True)
    assert calls == [True]

    def broken(quick: bool) -> list[str]:
        raise RuntimeError("grpc.aio server did not start")

    monkeypatch.setitem(sys.modules, http2.GRPC_MODULE,
                        types.SimpleNamespace(run=broken))
    lines, ok = http2.grpc_lines(False)
    assert not ok and "grpc.aio server did not start" in "\n".join(lines)


def test_without_the_grpc_benchmark_a_line_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, http2.GRPC_MODULE, None)  # import raises
    lines, ok = http2.grpc_lines(True)
    assert ok and len(lines) == 1 and "bench/grpc_unary.py" in lines[0], lines
