"""The operator flags a uvicorn (gunicorn, granian) user reaches for, on real processes:
``--env-file``, ``--header``, ``--server-header``, ``--date-header``, the process
titles ``ps`` shows, and the hint an unknown flag with a tether equivalent gets.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from tests.support import ROOT, raw_exchange, run_tether, server_process
from tether.cli import proxy, serve
from tether.config import ServerConfig
from tether.migrating import FLAGS

TESTS = Path(__file__).resolve().parent
APP = "apps.operator_app:app"


def head_fields(raw: bytes) -> list[tuple[str, str]]:
    """The (lower-case name, value) header fields of the first response in ``raw``."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    fields = []
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        fields.append((name.lower(), value.strip()))
    return fields


def values(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [value for field, value in fields if field == name]


def get(port: int, target: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % target.encode()


# -- --env-file ------------------------------------------------------------------------


def test_env_file_is_seen_by_the_app_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text(
        "# comments and quotes as python-dotenv reads them\n"
        "GREETING='hello from the file'\n"
        "OVERRIDDEN=from-the-file\n"
        "TETHER_WORKERS=3\n"
    )
    with server_process(APP, "--env-file", str(env_file), cwd=TESTS,
                        env={"OVERRIDDEN": "from-the-environment"}) as proc:
        assert httpx.get(proc.url + "/env?GREETING").text == "hello from the file"
        # uvicorn's (and dotenv's) rule: a variable already set is not overwritten
        assert httpx.get(proc.url + "/env?OVERRIDDEN").text == "from-the-environment"
        # tether's own options are not read from the file, and it says so
        assert httpx.get(proc.url + "/env?TETHER_WORKERS").text == "<unset>"
        proc.wait_for_line("skipped TETHER_WORKERS")
        assert "worker 2 " not in proc.output()


def test_missing_env_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run_tether("serve", APP, "--env-file", str(tmp_path / "absent.env"), cwd=TESTS)
    assert result.returncode == 2, result.stderr
    assert "--env-file" in result.stderr and "does not exist" in result.stderr


# -- default response headers ------------------------------------------------------------


async def test_default_headers_are_sent_and_the_apps_own_win() -> None:
    with server_process(APP, "--header", "X-Team: ops", "--header",
                        "Strict-Transport-Security: max-age=60", cwd=TESTS) as proc:
        plain = head_fields(await raw_exchange(proc.port, get(proc.port, "/plain")))
        assert values(plain, "server") == ["tether"]
        assert len(values(plain, "date")) == 1 and values(plain, "date")[0].endswith(" GMT")
        assert values(plain, "x-team") == ["ops"]
        assert values(plain, "strict-transport-security") == ["max-age=60"]

        # The application's own header of the same name wins: never two of them.
        own = head_fields(await raw_exchange(proc.port, get(proc.port, "/own")))
        assert values(own, "server") == ["app-server"]
        assert values(own, "date") == ["Thu, 01 Jan 1970 00:00:00 GMT"]
        assert values(own, "x-team") == ["app"]
        assert values(own, "strict-transport-security") == ["max-age=60"]

        # The error responses tether writes itself carry them too.
        bad = await raw_exchange(proc.port, b"NOT HTTP AT ALL\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 400 "), bad
        fields = head_fields(bad)
        assert values(fields, "server") == ["tether"]
        assert values(fields, "x-team") == ["ops"]
        assert len(values(fields, "date")) == 1


async def test_no_server_header_and_no_date_header() -> None:
    with server_process(APP, "--no-server-header", "--no-date-header", cwd=TESTS) as proc:
        plain = head_fields(await raw_exchange(proc.port, get(proc.port, "/plain")))
        assert values(plain, "server") == [] and values(plain, "date") == [], plain
        own = head_fields(await raw_exchange(proc.port, get(proc.port, "/own")))
        assert values(own, "server") == ["app-server"]  # the app's own still go out
        assert values(own, "date") == ["Thu, 01 Jan 1970 00:00:00 GMT"]
        bad = head_fields(await raw_exchange(proc.port, b"NOT HTTP AT ALL\r\n\r\n"))
        assert values(bad, "server") == [] and values(bad, "date") == [], bad


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("no-colon", "--header must be NAME:VALUE"),
        ("Bad Name: x", "invalid header name"),
        ("Connection: close", "tether sets 'Connection' itself"),
        ("Date: today", "--no-date-header"),
    ],
)
def test_invalid_header_flag_is_a_usage_error_naming_the_flag(header: str, reason: str) -> None:
    result = run_tether("serve", APP, "--header", header, cwd=TESTS)
    assert result.returncode == 2, result.stderr
    assert "--header" in result.stderr and reason in result.stderr, result.stderr


def test_header_flags_survive_the_config_a_worker_gets() -> None:
    """Workers receive the configuration as JSON: the headers must come back as the
    same tuples, and the two switches with them."""
    config = ServerConfig(app=APP, headers=(("X-Team", "ops"), ("X-Zone", "eu-1")),
                          server_header=False, date_header=False)
    worker = ServerConfig.from_json(config.to_json())
    assert (worker.headers, worker.server_header, worker.date_header) == (
        (("X-Team", "ops"), ("X-Zone", "eu-1")), False, False)


# -- process titles ------------------------------------------------------------------------


def _title(pid: int) -> str:
    """What ``ps`` shows for ``pid``: the first argument of /proc/PID/cmdline."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()


def test_supervisor_and_workers_carry_readable_process_titles(tmp_path: Path) -> None:
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    with server_process(APP, "--workers", "2", "--registry", registry, "--service", "orders",
                        cwd=TESTS) as proc:
        assert _title(proc.proc.pid) == f"tether supervisor: orders {APP}"
        workers = psutil.Process(proc.proc.pid).children()
        assert sorted(_title(w.pid) for w in workers) == [
            f"tether worker: orders {APP} #1", f"tether worker: orders {APP} #2"]


# -- migration hints -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "args", "hint"),
    [
        ("serve", ["--timeout-graceful-shutdown", "5"],
         "uvicorn's --timeout-graceful-shutdown is tether's --graceful-timeout"),
        ("serve", ["--limit-max-requests", "100"],
         "uvicorn's --limit-max-requests is tether's --max-requests"),
        ("serve", ["-w", "4"], "gunicorn's -w is tether's --workers"),
        ("serve", ["--bind=127.0.0.1:8000"], "gunicorn's --bind is tether's --host, --port"),
        ("serve", ["--interface", "asgi"], "granian's --interface has no tether equivalent"),
        ("proxy", ["--timeout", "30"], "gunicorn's --timeout is tether's --worker-timeout"),
    ],
)
def test_another_servers_flag_names_tethers(command: str, args: list[str], hint: str) -> None:
    app = [APP] if command == "serve" else []
    result = run_tether(command, *app, *args, cwd=TESTS)
    assert result.returncode == 2, result.stderr
    assert "No such option" in result.stderr and hint in result.stderr, result.stderr
    assert "docs/migrating.md" in result.stderr


def test_unknown_flag_without_equivalent_keeps_clicks_error() -> None:
    result = run_tether("serve", APP, "--no-such-flag-anywhere", cwd=TESTS)
    assert result.returncode == 2
    assert "No such option" in result.stderr and "migrating" not in result.stderr


def test_migration_table_names_only_real_flags_and_docs_cover_it() -> None:
    """The table cannot rot: every tether flag it names exists, none of the other
    servers' flags it lists is one `tether serve` accepts (the hint would never show),
    and docs/migrating.md mentions each of them. (`tether proxy` has every serve flag,
    plus --config of its own: gunicorn's -c hint shows under serve only.)"""
    tether_flags = {
        opt for param in serve.params
        for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")
    }
    assert tether_flags - {"--host", "--port", "--uds", "--fd", "--factory", "--lifespan",
                           "--app-dir", "--registry", "--reload", "--reload-dir",
                           "--reload-include", "--reload-exclude"} <= {
        opt for param in proxy.params for opt in (*param.opts, *param.secondary_opts)}
    doc = (ROOT / "docs" / "migrating.md").read_text()
    for entry in FLAGS:
        assert set(entry.tether) <= tether_flags, entry
        assert not set(entry.flags) & tether_flags, entry
        assert entry.tether or entry.note, entry  # no equivalent: say what to do instead
        for flag in (*entry.flags, *entry.tether):
            assert f"`{flag}`" in doc, f"docs/migrating.md does not mention {flag}"
