"""FastAPI and Starlette run unchanged under tether: as a real ``tether serve``
process (driven by httpx) and in-process.

Each app has a JSON endpoint, a multipart upload (python-multipart), a streaming
response, a background task and lifespan state; every one is exercised here.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.apps import _shared, fastapi_app
from tests.support import ServerProcess, serve, server_process, wait_for

TESTS = Path(__file__).resolve().parent
EXPECTED_STREAM = b"".join(_shared.stream_chunk(i) for i in range(_shared.STREAM_CHUNKS))
FIRST_CHUNK = _shared.stream_chunk(0)
UPLOAD = bytes(range(256)) * 800  # 200 KiB: many reads, more than the server's high-water mark
FRAMEWORKS = ("fastapi", "starlette")


@dataclass
class Framework:
    name: str
    proc: ServerProcess
    out: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.proc.url, timeout=10.0)


def wait_for_path(path: Path, timeout: float = 10.0) -> None:
    """Poll until ``path`` exists; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.01)


@contextlib.contextmanager
def run_framework(name: str) -> Iterator[Framework]:
    """``tether serve`` the app as a real process, with a fresh output directory.

    FastAPI is found through the working directory (the tests directory),
    Starlette through ``--app-dir`` from an unrelated working directory.
    """
    with tempfile.TemporaryDirectory(prefix="tether-fw-") as tmp:
        out = Path(tmp)
        env = {_shared.OUTPUT_DIR_ENV: tmp}
        if name == "fastapi":
            cm = server_process("apps.fastapi_app:app", cwd=TESTS, env=env)
        else:
            cm = server_process("apps.starlette_app:app", "--app-dir", str(TESTS), cwd=out, env=env)
        with cm as proc:
            yield Framework(name, proc, out)


@pytest.fixture(scope="module", params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> Iterator[Framework]:
    with run_framework(request.param) as fw:
        yield fw


def test_json(framework: Framework) -> None:
    with framework.client() as client:
        r = client.get("/json", params={"name": "tether"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"framework": framework.name, "hello": "tether", "numbers": [1, 2, 3]}
    assert int(r.headers["content-length"]) == len(r.content)


def test_form_upload_with_file(framework: Framework) -> None:
    with framework.client() as client:
        r = client.post(
            "/upload",
            data={"title": "quarterly report", "tags": ["a", "b"]},
            files={"file": ("data.bin", UPLOAD, "application/x-test")},
        )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "title": "quarterly report",
        "tags": ["a", "b"],
        "filename": "data.bin",
        "content_type": "application/x-test",
        "size": len(UPLOAD),
        "sha256": hashlib.sha256(UPLOAD).hexdigest(),
    }


def test_streaming_chunks_arrive_as_sent(framework: Framework) -> None:
    """The first chunk reaches the client while the app is still blocked before the
    second (it waits for a gate file the test creates only after reading it)."""
    gate = f"gate-{uuid.uuid4().hex}"
    with framework.client() as client, client.stream("GET", "/stream", params={"gate": gate}) as r:
        assert r.status_code == 200
        assert r.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in r.headers
        pieces = r.iter_raw()
        first = b""
        while len(first) < len(FIRST_CHUNK):
            first += next(pieces)
        assert first == FIRST_CHUNK  # nothing more could have been sent yet
        (framework.out / gate).touch()
        rest = b"".join(pieces)
    assert first + rest == EXPECTED_STREAM


def test_streaming_without_gate(framework: Framework) -> None:
    with framework.client() as client, client.stream("GET", "/stream") as r:
        chunks = list(r.iter_bytes())
    assert b"".join(chunks) == EXPECTED_STREAM


def test_background_task_runs_after_response(framework: Framework) -> None:
    token = f"bg-{uuid.uuid4().hex}"
    with framework.client() as client:
        r = client.post("/background", params={"token": token})
        assert r.status_code == 200
        assert r.json() == {"scheduled": token}
        wait_for_path(framework.out / token)
        assert (framework.out / token).read_text() == (
            f"{framework.name} background task ran for {token}\n"
        )
        # The connection the background task ran on is still usable afterwards.
        assert client.get("/json").status_code == 200


def test_lifespan_state_reaches_requests(framework: Framework) -> None:
    with framework.client() as client:
        r = client.get("/state")
    assert r.status_code == 200
    assert r.json() == {"greeting": f"hello from {framework.name} lifespan", "started": True}


def test_unknown_route_is_404(framework: Framework) -> None:
    with framework.client() as client:
        r = client.get("/no/such/route")
        assert r.status_code == 404
        # Starlette answers 405 for a known path with a method it does not route.
        assert client.delete("/json").status_code == 405


def test_keep_alive_across_framework_requests(framework: Framework) -> None:
    ports: set[int] = set()
    with framework.client() as client:
        for _ in range(10):
            r = client.get("/json")
            assert r.status_code == 200
            stream = r.extensions["network_stream"]
            ports.add(stream.get_extra_info("client_addr")[1])
    assert len(ports) == 1


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_sigterm_runs_lifespan_shutdown(name: str) -> None:
    with run_framework(name) as fw:
        with fw.client() as client:
            assert client.get("/state").status_code == 200
        assert not (fw.out / f"{name}-shutdown").exists()
        assert fw.proc.stop(signal.SIGTERM) == 0
        assert (fw.out / f"{name}-shutdown").read_text() == "lifespan shutdown ran\n"


async def test_fastapi_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_shared.OUTPUT_DIR_ENV, str(tmp_path))
    token = f"bg-{uuid.uuid4().hex}"
    gate = f"gate-{uuid.uuid4().hex}"
    async with (
        serve(fastapi_app.app, lifespan="on") as server,
        httpx.AsyncClient(base_url=server.url, timeout=10.0) as client,
    ):
        r = await client.get("/json")
        assert r.json() == {"framework": "fastapi", "hello": "world", "numbers": [1, 2, 3]}

        r = await client.get("/state")
        assert r.json() == {"greeting": "hello from fastapi lifespan", "started": True}

        r = await client.post(
            "/upload", data={"title": "t"}, files={"file": ("f.txt", UPLOAD, "text/plain")}
        )
        assert r.status_code == 200, r.text
        assert r.json()["sha256"] == hashlib.sha256(UPLOAD).hexdigest()
        assert r.json()["tags"] == []

        async with client.stream("GET", "/stream", params={"gate": gate}) as s:
            pieces = s.aiter_raw()
            first = b""
            while len(first) < len(FIRST_CHUNK):
                first += await anext(pieces)
            assert first == FIRST_CHUNK
            (tmp_path / gate).touch()
            rest = b"".join([piece async for piece in pieces])
        assert first + rest == EXPECTED_STREAM

        r = await client.post("/background", params={"token": token})
        assert r.json() == {"scheduled": token}
        await wait_for(lambda: token in _shared.BACKGROUND_RUNS, what="background task")
        assert (tmp_path / token).exists()

        assert (await client.get("/missing")).status_code == 404

        await server.worker.lifespan.shutdown()
        assert (tmp_path / "fastapi-shutdown").exists()
