"""Smoke test of ``bench/grpc_unary.py`` in its ``--quick`` mode (1 s window, 8 calls at
a time): both servers start, answer grpcio, and the ratio line is printed.

Checks the harness (start, readiness, the load, stop, the report), not performance.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import grpc_unary

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_bench_grpc_unary_runs_both_servers_and_prints_the_ratio() -> None:
    command = [sys.executable, str(ROOT / "bench" / "grpc_unary.py"), "--quick"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=160)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for server in ("tether", "grpc.aio"):
        row = re.search(rf"^\s*{re.escape(server)}\s+(\d+)\s+[\d.]+\s+[\d.]+\s+0$",
                        done.stdout, re.M)
        assert row is not None and int(row.group(1)) > 0, output
    assert re.search(r"^\s*tether/grpc\.aio \d+\.\d\d \(target >= 0\.7: (met|NOT met)\)$",
                     done.stdout, re.M), output


def test_report_lines_say_which_run_failed() -> None:
    """bench/http2.py prints run()'s lines: a failed server must show in them."""
    opts = grpc_unary.Options.of(quick=True)
    ok = grpc_unary.Result(calls=100, seconds=1.0, latencies=[0.001, 0.002, 0.003])
    runs = [grpc_unary.Run("tether", 0, result=ok),
            grpc_unary.Run("grpc.aio", 0, error="grpc.aio not ready (refused)\n    | log")]
    lines = grpc_unary.report_lines(runs, opts)
    assert any(re.match(r"\s*tether\s+100\s", line) for line in lines), lines
    assert "  grpc.aio   failed: grpc.aio not ready (refused)" in lines, lines
    assert lines[-1] == "  tether/grpc.aio - (a run failed)", lines
