"""Smoke test of ``bench/reload.py``: tether only, 2 reloads 1 s apart under load.

Checks the harness (start, load in both client modes, reload signals, counting
finished reloads, stop, JSON) and that tether failed no request while reloading.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.bench


@pytest.mark.timeout(150)
def test_bench_reload_tether_loses_nothing(tmp_path: Path) -> None:
    results = tmp_path / "reload.json"
    options = ["--servers", "tether", "--reloads", "2", "--interval", "1", "--concurrency", "4"]
    command = [sys.executable, str(ROOT / "bench" / "reload.py"), *options, "--json", str(results)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    data = json.loads(results.read_text())
    runs = [run for run in data["runs"] if run["server"] == "tether"]
    assert len(runs) == 1, output
    run = runs[0]
    assert run["error"] is None, output
    assert run["reloads_sent"] == 2, output
    assert run["reloads_done"] == 2, output
    assert run["reloads_seen_in_log"] == 2, output
    assert {mode["mode"] for mode in run["modes"]} == {"new-conn", "keep-alive"}, output
    for mode in run["modes"]:
        assert mode["requests"] > 0, output
        assert mode["failed"] == 0, output
    assert data["subject_clean"] is True, output
