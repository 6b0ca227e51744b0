"""The process settings a worker makes once its app has started (server/tuning.py):
the cycle collector's threshold, and glibc's allocator keeping freed memory for the
next large message instead of returning it at once (unless the operator chose)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.support import server_process
from tether.server.tuning import GC_YOUNG_THRESHOLD

# Run in a child: both settings are process-wide. It frees 4 MB of 64 KB buffers and
# prints whether the heap kept them (mallinfo2: bytes obtained with sbrk) and what
# tune_malloc() answered.
_HEAP_KEEPS_FREED = textwrap.dedent("""
    import ctypes
    from tether.server.tuning import tune_malloc

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    tuned = tune_malloc()
    blocks = [bytes(64 * 1024) for _ in range(64)]
    grown = libc.mallinfo2().arena
    del blocks
    kept = libc.mallinfo2().arena
    print(tuned, kept >= grown - 256 * 1024)
""")

linux_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc on Linux only")


def _heap_check(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", _HEAP_KEEPS_FREED], env={**clean, **env},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


@linux_glibc
def test_tuned_malloc_keeps_freed_large_buffers_for_the_next_message() -> None:
    assert _heap_check() == "True True"


@linux_glibc
@pytest.mark.parametrize("env", [{"MALLOC_ARENA_MAX": "2"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_an_operators_own_malloc_settings_are_left_alone(env: dict[str, str]) -> None:
    # untouched, glibc trims the freed buffers at once (its default threshold: 128 KiB)
    assert _heap_check(**env) == "False False"


def test_a_worker_tunes_the_cycle_collector_once_its_app_started(tmp_path: Path) -> None:
    (tmp_path / "gcapp.py").write_text(textwrap.dedent("""
        import gc, json

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            body = json.dumps([gc.get_threshold()[0], gc.get_freeze_count()]).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
    """))
    with server_process("gcapp:app", cwd=tmp_path) as server:
        threshold, frozen = httpx.get(server.url, timeout=10).json()
    assert threshold == GC_YOUNG_THRESHOLD
    assert frozen > 0  # what the app built at import no longer traversed
