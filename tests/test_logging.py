"""Logging as an operator configures it: ``--log-format json``, ``--log-config`` (JSON,
YAML and INI), ``--access-log-format``, ``--access-log-exclude``, and the access line
of a refused request.

Every server here is a real ``python -m tether serve`` process, its access log read
from the file its stdout (or a --log-config handler) writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    raw_exchange,
    run_tether,
    serve,
    server_process,
    tether_command,
    wait_for,
)
from tether.logs import ACCESS_FIELDS

TESTS = Path(__file__).resolve().parent
APP = "apps.logging_app:app"
EXIT_USAGE = 2


def wait_for_lines(
    path: Path, done: Callable[[list[str]], bool], timeout: float = 15.0
) -> list[str]:
    """The lines of ``path`` once ``done(lines)``; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        if done(lines):
            return lines
        assert time.monotonic() < deadline, f"timed out; {path.name} has:\n" + "\n".join(lines)
        time.sleep(0.05)


def has(*needles: str) -> Callable[[list[str]], bool]:
    """``done`` for wait_for_lines: every needle is on some line."""
    return lambda lines: all(any(n in line for line in lines) for n in needles)


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.startswith("{")]


# -- --log-format json ------------------------------------------------------------------


def test_json_lines_carry_the_access_fields(tmp_path: Path) -> None:
    out = tmp_path / "stdout"
    with server_process(APP, "--log-format", "json", cwd=TESTS, stdout=out) as proc:
        assert httpx.get(proc.url + "/hello?x=1", timeout=10).status_code == 200
        slow = httpx.get(proc.url + "/slow", headers={"x-request-timeout-ms": "300"},
                         timeout=10)
        assert slow.status_code == 504
        assert httpx.get(proc.url + "/boom", timeout=10).status_code == 500
        lines = wait_for_lines(out, has('"/hello?x=1"', '"/slow"', '"/boom"'))
        proc.wait_for_line("sentinel: the handler failed")
        errors = proc.output().splitlines()

    access = {line["path"]: line for line in json_lines(lines)}
    assert len(access) == len([line for line in lines if line.strip()]), lines
    hello = access["/hello?x=1"]
    assert hello["level"] == "INFO" and hello["logger"] == "tether.access"
    assert hello["time"].endswith("Z") and "T" in hello["time"]
    assert hello["method"] == "GET" and hello["status"] == 200
    assert hello["client"].startswith("127.0.0.1:")
    assert hello["bytes"] > len(b"hello")  # head and body, as sent
    assert hello["duration"] >= 0 and hello["deadline"] is None and hello["cancel"] is None
    assert '"GET /hello?x=1" 200' in hello["message"]

    slow_line = access["/slow"]
    assert slow_line["status"] == 504 and slow_line["cancel"] == "deadline"
    assert 250 <= slow_line["deadline"] <= 300  # the budget it arrived with, ms
    assert slow_line["duration"] >= 250

    assert access["/boom"]["status"] == 500
    # stderr: JSON as well, the traceback in "exception" rather than on lines of its own
    records = json_lines(errors)
    assert len(records) == len([line for line in errors if line.strip()]), errors
    failed = [r for r in records if "Exception in ASGI application" in r["message"]]
    assert len(failed) == 1, records
    assert failed[0]["level"] == "ERROR" and failed[0]["logger"] == "tether.error"
    assert "RuntimeError: sentinel: the handler failed" in failed[0]["exception"]


# -- --log-config --------------------------------------------------------------------------


def _dict_config(log_file: Path) -> dict[str, Any]:
    """Both tether loggers to one file, the access fields in the format; lifecycle
    lines to stderr as well (where the test finds the port)."""
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(name)s %(message)s"},
                       "fields": {"format": "FIELDS %(method)s %(path)s %(status)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(log_file),
                     "formatter": "plain"},
            "access": {"class": "logging.FileHandler", "filename": str(log_file),
                       "formatter": "fields"},
            "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        },
        "loggers": {"tether": {"handlers": ["file", "console"], "level": "INFO",
                               "propagate": False},
                    "tether.access": {"handlers": ["access"], "level": "INFO",
                                      "propagate": False}},
    }


def _write_json(path: Path, log_file: Path) -> None:
    path.write_text(json.dumps(_dict_config(log_file)), encoding="utf-8")


def _write_yaml(path: Path, log_file: Path) -> None:
    yaml = pytest.importorskip("yaml")  # a dev dependency (pyproject.toml)
    path.write_text(yaml.safe_dump(_dict_config(log_file)), encoding="utf-8")


def _write_ini(path: Path, log_file: Path) -> None:
    path.write_text(f"""\
[loggers]
keys=root,tether,access

[handlers]
keys=file,access,console

[formatters]
keys=plain,fields

[logger_root]
handlers=

[logger_tether]
qualname=tether
handlers=file,console
level=INFO
propagate=0

[logger_access]
qualname=tether.access
handlers=access
level=INFO
propagate=0

[handler_file]
class=FileHandler
formatter=plain
args=({str(log_file)!r}, "a")

[handler_access]
class=FileHandler
formatter=fields
args=({str(log_file)!r}, "a")

[handler_console]
class=StreamHandler
formatter=plain
args=(sys.stderr,)

[formatter_plain]
format=%(name)s %(message)s

[formatter_fields]
format=FIELDS %(method)s %(path)s %(status)s
""", encoding="utf-8")


@pytest.mark.parametrize(("name", "write"), [
    ("logging.json", _write_json), ("logging.yaml", _write_yaml), ("logging.ini", _write_ini),
])
def test_log_config_takes_effect_in_supervisor_and_workers(
    tmp_path: Path, name: str, write: Callable[[Path, Path], None]
) -> None:
    log_file = tmp_path / "tether.log"
    config = tmp_path / name
    write(config, log_file)
    with server_process(APP, "--log-config", str(config), "--workers", "2",
                        cwd=TESTS) as proc:
        for i in range(4):
            assert httpx.get(f"{proc.url}/hello?n={i}", timeout=10).status_code == 200
        lines = wait_for_lines(log_file, has(*(f"FIELDS GET /hello?n={i} 200"
                                               for i in range(4))))
    # the supervisor's lifecycle lines went to the file too (it applied the file)
    assert any(line.startswith("tether.supervisor ") and "serving on" in line
               for line in lines), lines


def test_a_log_config_broken_before_a_reload_keeps_the_service_logging(
    tmp_path: Path,
) -> None:
    """Workers read the file again when they start: one broken since the start costs
    the new workers its settings (they say so, once each), never the service."""
    log_file = tmp_path / "tether.log"
    config = tmp_path / "logging.json"
    _write_json(config, log_file)
    with server_process(APP, "--log-config", str(config), cwd=TESTS) as proc:
        config.write_text("{broken", encoding="utf-8")
        proc.proc.send_signal(signal.SIGHUP)
        line = proc.wait_for_line("this worker keeps tether's default logging")
        assert f"--log-config {config}" in line
        proc.wait_for_line("reload finished")
        assert httpx.get(proc.url + "/hello", timeout=10).status_code == 200
        assert proc.output().count("keeps tether's default logging") == 1


@pytest.mark.parametrize(("name", "text", "says"), [
    ("bad.json", "{not json", "JSONDecodeError"),
    ("bad.json", '{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}',
     "handler 'h'"),
    ("bad.json", "[1, 2]", "expected a mapping"),
    ("bad.yaml", "version: [1", "invalid YAML"),
    ("bad.ini", "[loggers]\nkeys=root\n", "missing section or option 'formatters'"),
])
def test_a_broken_log_config_is_a_usage_error(
    tmp_path: Path, name: str, text: str, says: str
) -> None:
    config = tmp_path / name
    config.write_text(text, encoding="utf-8")
    done = run_tether("serve", APP, "--port", "0", "--log-config", str(config), cwd=TESTS)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert f"--log-config {config}" in done.stderr and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_log_config_is_a_usage_error(tmp_path: Path) -> None:
    done = run_tether("serve", APP, "--port", "0", "--log-config",
                      str(tmp_path / "nowhere.json"), cwd=TESTS)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "nowhere.json" in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_yaml_without_pyyaml_says_what_is_missing(tmp_path: Path) -> None:
    # A `yaml` module that fails to import stands in for PyYAML not being installed.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "yaml.py").write_text("raise ImportError('no yaml here')\n", encoding="utf-8")
    config = tmp_path / "logging.yaml"
    config.write_text("version: 1\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": f"{shadow}:{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        tether_command("serve", APP, "--port", "0", "--log-config", str(config)),
        cwd=TESTS, env=env, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "needs PyYAML (pip install pyyaml)" in done.stderr, done.stderr


# -- access-log format and exclusions ---------------------------------------------------


def test_access_log_format_names_fields(tmp_path: Path) -> None:
    out = tmp_path / "stdout"
    fmt = "%(method)s %(path)s -> %(status)s (%(bytes)s bytes, cancel=%(cancel)s)"
    with server_process(APP, "--access-log-format", fmt, cwd=TESTS, stdout=out) as proc:
        assert httpx.get(proc.url + "/hello", timeout=10).status_code == 200
        lines = wait_for_lines(out, has("GET /hello -> 200"))
    line = next(line for line in lines if "GET /hello" in line)
    assert line.startswith("GET /hello -> 200 (") and line.endswith("bytes, cancel=None)")


@pytest.mark.parametrize(("extra", "says"), [
    ((), "nope"),
    (("--log-format", "json"), "applies to text lines"),
])
def test_an_unusable_access_log_format_is_a_usage_error(
    extra: tuple[str, ...], says: str
) -> None:
    done = run_tether("serve", APP, "--port", "0", "--access-log-format", "%(nope)s", *extra,
                      cwd=TESTS)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "--access-log-format" in done.stderr and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_excluded_paths_leave_no_access_line(tmp_path: Path) -> None:
    out = tmp_path / "stdout"
    with server_process(APP, "--access-log-exclude", "/healthz",
                        "--access-log-exclude", "/readyz", cwd=TESTS, stdout=out) as proc:
        for path in ("/healthz", "/readyz?full=1", "/hello"):
            assert httpx.get(proc.url + path, timeout=10).status_code == 200
        # one worker logs in order: once /hello's line is there, the others had their turn
        lines = wait_for_lines(out, has('"GET /hello"'))
    assert not any("/healthz" in line or "/readyz" in line for line in lines), lines
    assert len([line for line in lines if line.strip()]) == 1, lines


# -- the access line of a refused request ------------------------------------------------


def test_refused_upgrade_logs_method_path_and_bytes(tmp_path: Path) -> None:
    out = tmp_path / "stdout"
    with server_process(APP, cwd=TESTS, stdout=out) as proc:
        raw = asyncio.run(raw_exchange(proc.port, (
            b"GET /ws?room=1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 8\r\n\r\n")))  # a version tether does not speak
        assert raw.startswith(b"HTTP/1.1 426 ")
        lines = wait_for_lines(out, has(" 426 "))
    line = next(line for line in lines if " 426 " in line)
    assert f'"GET /ws?room=1" 426 {len(raw)} ' in line, line


def test_refused_body_logs_method_and_path(tmp_path: Path) -> None:
    """A rejection found while the application runs (413: the body is too large)."""
    out = tmp_path / "stdout"
    with server_process(APP, "--limit-request-body", "10", cwd=TESTS, stdout=out) as proc:
        raw = asyncio.run(raw_exchange(proc.port, (
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"20\r\n" + b"x" * 32 + b"\r\n0\r\n\r\n")))
        assert raw.startswith(b"HTTP/1.1 413 ")
        lines = wait_for_lines(out, has(" 413 "))
    line = next(line for line in lines if " 413 " in line)
    assert f'"POST /upload" 413 {len(raw)} ' in line, line


# -- the cost of the default line ---------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(("settings", "fields"), [
    ({}, False),
    ({"log_format": "json"}, True),
    ({"access_log_format": "%(status)s"}, True),
])
async def test_fields_are_built_only_when_a_handler_may_read_them(
    settings: dict[str, Any], fields: bool
) -> None:
    """The default text line passes no ``extra`` (no dict per request); the
    structured settings put every access field on the record."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    access = logging.getLogger("tether.access")
    records = _Records()
    level = access.level
    access.addHandler(records)
    access.setLevel(logging.INFO)
    try:
        async with serve(app, access_log=True, **settings) as server:
            async with httpx.AsyncClient() as client:
                assert (await client.get(server.url + "/x")).status_code == 204
            await wait_for(lambda: bool(records.records), what="the access record")
    finally:
        access.removeHandler(records)
        access.setLevel(level)
    record = records.records[0]
    assert all(hasattr(record, name) == fields for name in ACCESS_FIELDS), record.__dict__
    if fields:
        assert record.__dict__["status"] == 204 and record.__dict__["path"] == "/x"
