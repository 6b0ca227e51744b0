"""Smoke test of ``bench/registry_scale.py`` at a tiny size.

Checks the harness (its own etcd, owner processes, watchers, the steady-state
counters, changes seen by every watcher, clean deregistration, JSON), not performance.
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
def test_bench_registry_scale_small(tmp_path: Path) -> None:
    results = tmp_path / "registry.json"
    options = ["--providers", "50", "--services", "5", "--watchers", "10", "--changes", "5",
               "--steady", "2", "--ttl", "3"]
    command = [sys.executable, str(ROOT / "bench" / "registry_scale.py"), *options,
               "--json", str(results)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "p50" in done.stdout and "p99" in done.stdout, output
    data = json.loads(results.read_text())
    assert data["ok"] is True, output
    assert data["registered"] == 50, output
    assert data["changes"]["lost"] == 0 and data["changes"]["count"] == 5, output
    steady = data["steady"]
    # 50 leases refreshed every ttl/3 = 1 s: about 50 keep-alives a second
    assert 25 <= steady["lease_renewals_per_second"] <= 100, output
    assert steady["rpcs_per_second_by_method"].get("LeaseKeepAlive", 0) > 0, output
