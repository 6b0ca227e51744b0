"""Smoke test of bench/overload.py: it runs end to end (briefly) and prints its table.

The numbers themselves are recorded in bench/README.md, never asserted here.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT


@pytest.mark.bench
def test_overload_benchmark_runs() -> None:
    result = subprocess.run(
        [sys.executable, "bench/overload.py", "--seconds", "1", "--configs", "off,defaults"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "goodput" in result.stdout
    assert "defaults" in result.stdout and "off" in result.stdout
