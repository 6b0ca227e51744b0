"""``tether serve --reload`` on real processes: an edit under load fails no request and
the new code answers within seconds; a broken edit keeps the old code serving and
prints its error once; files the filter leaves out reload nothing; the supervisor
stops cleanly. The filter's rules (uvicorn's) are checked on their own first.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess, run_tether, server_process, wait_for
from tether.server.reloader import FileFilter

APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]}})
    await send({{"type": "http.response.body", "body": b"{answer}"}})
'''


def test_the_filter_follows_uvicorns_rules(tmp_path: Path) -> None:
    default = FileFilter()
    assert default(tmp_path / "app.py")
    assert default(tmp_path / "pkg" / "mod.py")
    assert not default(tmp_path / "notes.txt")
    assert not default(tmp_path / ".hidden.py")  # .*
    assert not default(tmp_path / "app.pyc")
    assert not default(tmp_path / ".app.py.swp")
    (tmp_path / "generated").mkdir()
    custom = FileFilter(includes=["*.toml", ".*"], excludes=[str(tmp_path / "generated")])
    assert custom(tmp_path / "settings.toml")
    assert custom(tmp_path / ".env.py")  # an include removes the same default exclude
    assert not custom(tmp_path / "generated" / "schema.py")
    assert not FileFilter(excludes=["*.py"])(tmp_path / "app.py")


def _write_app(directory: Path, answer: str) -> None:
    (directory / "reload_app.py").write_text(APP.format(answer=answer))


class Load:
    """A bounded client loop (at most 60 s, 20,000 requests) counting answers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self.latest = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=10) as client:
            for _ in range(20_000):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    response = client.get(self.url)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text}")
                    continue
                self.latest = response.text
                self.answers[response.text] += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    _write_app(tmp_path, "v1")
    return tmp_path


def _until_watching(server: ServerProcess, directory: Path) -> None:
    """Until the watch sees changes (it starts a moment after it says so): save a
    probe module until a reload for it begins, then wait for that reload to end."""
    for attempt in range(40):
        (directory / "probe.py").write_text(f"attempt = {attempt}\n")
        try:
            server.wait_for_line("changes in probe.py", timeout=0.5)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("the --reload watch never saw a change")
    deadline = time.monotonic() + 30
    while (server.output().count("reload finished") < server.output().count("reload begun")
           or "reload begun" not in server.output()):
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def reloading(request: pytest.FixtureRequest, app_dir: Path) -> Iterator[ServerProcess]:
    with server_process("reload_app:app", "--reload", "--workers", str(request.param),
                        cwd=app_dir, timeout=30) as server:
        _until_watching(server, app_dir)
        yield server


async def test_an_edit_under_load_fails_nothing(reloading: ServerProcess, app_dir: Path) -> None:
    load = Load(reloading.url)
    try:
        await wait_for(lambda: load.answers["v1"] > 20, 20, "traffic on v1")
        _write_app(app_dir, "v2")
        await wait_for(lambda: load.latest == "v2", 10, "the new code to answer")
        await wait_for(lambda: "reload finished" in reloading.output(), 20, "the reload")
        await wait_for(lambda: load.answers["v2"] > 20, 20, "traffic on v2")
    finally:
        load.stop()
    assert load.failures == []
    assert "changes in reload_app.py: reloading" in reloading.output()


async def test_a_broken_edit_keeps_the_old_code_serving(
    reloading: ServerProcess, app_dir: Path
) -> None:
    load = Load(reloading.url)
    try:
        await wait_for(lambda: load.answers["v1"] > 10, 20, "traffic on v1")
        (app_dir / "reload_app.py").write_text("def app(:\n")  # a syntax error
        await wait_for(lambda: "reload aborted" in reloading.output(), 30, "the failed reload")
        served_before = load.answers["v1"]
        await wait_for(lambda: load.answers["v1"] > served_before + 10, 20,
                       "the old code still answering")
        output = reloading.output()
        assert output.count("importing module 'reload_app' raised SyntaxError") == 1
        # the next save that imports brings the new code
        _write_app(app_dir, "v3")
        await wait_for(lambda: load.latest == "v3", 30, "the fixed code to answer")
    finally:
        load.stop()
    assert load.failures == []


async def test_files_the_filter_leaves_out_reload_nothing(app_dir: Path) -> None:
    with server_process("reload_app:app", "--reload", "--reload-include", "*.toml",
                        cwd=app_dir, timeout=30) as server:
        _until_watching(server, app_dir)
        reloads = server.output().count("reload begun")
        (app_dir / "notes.txt").write_text("not code")
        (app_dir / ".hidden.py").write_text("x = 1")
        (app_dir / "settings.toml").write_text("a = 1")  # included on the command line
        line = server.wait_for_line("changes in settings.toml")
        assert "notes.txt" not in line and ".hidden.py" not in line
        await wait_for(lambda: server.output().count("reload finished") == reloads + 1, 20,
                       "the reload")
        assert server.stop() == 0
    output = server.output()
    assert "notes.txt" not in output and ".hidden.py" not in output
    assert output.count("reload begun") == reloads + 1


def test_reload_flags_need_reload(tmp_path: Path) -> None:
    result = run_tether("serve", "reload_app:app", "--reload-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "need --reload" in result.stderr
    assert "not for production" in " ".join(run_tether("serve", "--help").stdout.split())
