"""What the framework test apps share: where background tasks leave their marks.

Across processes the test passes a directory in ``TESTAPP_OUTPUT_DIR``; a
background task writes a file there, and a streaming response may wait for a
"gate" file the test creates. In-process tests read ``BACKGROUND_RUNS`` too.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

OUTPUT_DIR_ENV = "TESTAPP_OUTPUT_DIR"
STREAM_CHUNKS = 5
GATE_TIMEOUT = 15.0

#: tokens whose background task ran, in this process
BACKGROUND_RUNS: list[str] = []


def output_dir() -> Path | None:
    value = os.environ.get(OUTPUT_DIR_ENV)
    return Path(value) if value else None


def record_background(token: str, framework: str) -> None:
    """The background task: observable on disk (if configured), then in this process.

    Frameworks run a sync background task in a thread: the in-memory mark comes
    last, so a test that sees it can rely on the file being there too.
    """
    out = output_dir()
    if out is not None:
        tmp = out / f"{token}.tmp"
        tmp.write_text(f"{framework} background task ran for {token}\n")
        tmp.rename(out / token)  # atomic: the test never sees a half-written file
    BACKGROUND_RUNS.append(token)


def record_shutdown(framework: str) -> None:
    out = output_dir()
    if out is not None:
        (out / f"{framework}-shutdown").write_text("lifespan shutdown ran\n")


async def wait_for_gate(gate: str) -> None:
    """Wait (bounded) until the test creates ``<output dir>/<gate>``."""
    out = output_dir()
    if out is None:
        raise RuntimeError(f"{OUTPUT_DIR_ENV} is not set: cannot wait for gate {gate!r}")
    deadline = time.monotonic() + GATE_TIMEOUT
    while not (out / gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate!r} was not opened within {GATE_TIMEOUT}s")
        await asyncio.sleep(0.01)


def stream_chunk(i: int) -> bytes:
    return f"chunk {i}\n".encode()
