"""Unchanged FastAPI and Starlette apps answer tether's errors exactly as a plain ASGI
app does (503 with Retry-After, 504), under ``tether serve`` and behind ``tether
proxy``, logged once and counted as what the client got (server/frameworks.py).

Without the adapter every case here was Starlette's 500 (the test of
``--no-framework-handlers`` shows it).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.apps.framework_errors_app import ERRORS
from tests.support import ServerProcess, server_process
from tests.test_proxy import proxy
from tether import metrics

APPS = Path(__file__).resolve().parent / "apps"
MODULE = "framework_errors_app"
FRAMEWORKS = ("fastapi", "starlette")

#: where, in the framework apps, each error of ERRORS escapes from
PLACES = {
    "fastapi": ("", "/router", "/middleware", "/pure-middleware"),
    "starlette": ("", "/router", "/mounted", "/middleware", "/pure-middleware"),
}
UNAVAILABLE = 'tether_requests_unavailable_total{reason="no_provider"}'
OVERLOADED = 'tether_requests_unavailable_total{reason="overloaded"}'
DEADLINE = "tether_requests_deadline_exceeded_total"


def _serve(app: str, *args: str) -> Iterator[ServerProcess]:
    with server_process(f"{MODULE}:{app}", "--admin-port", "0", *args, cwd=APPS) as server:
        yield server


@pytest.fixture(scope="module")
def plain() -> Iterator[ServerProcess]:
    yield from _serve("plain")


@pytest.fixture(scope="module", params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    yield from _serve(request.param)


def _answer(response: httpx.Response) -> tuple[int, str, str | None, str | None, str]:
    """What a client relies on in an error answer (the Date header aside)."""
    return (response.status_code, response.headers.get("content-type", ""),
            response.headers.get("retry-after"), response.headers.get("connection"),
            response.text)


def _admin(server: ServerProcess) -> str:
    return server.wait_for_line("admin listening on http://").rsplit(" ", 1)[1].strip()


def _scrape(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(f"{_admin(server)}/metrics", timeout=5).text
    return {
        metrics.series(sample.name, **sample.labels): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def _scrape_until(
    server: ServerProcess, done: Callable[[dict[str, float]], bool], timeout: float = 15.0
) -> dict[str, float]:
    """Scrape /metrics until ``done`` holds (workers report their counts with their
    heartbeat)."""
    deadline = time.monotonic() + timeout
    while not done(_scrape(server)):
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never got there: {_scrape(server)}")
        time.sleep(0.05)
    return _scrape(server)


def _app_name(server: ServerProcess) -> str:
    """Which app a server runs (its APP argument)."""
    app = next(arg for arg in server.proc.args if str(arg).startswith(MODULE + ":"))  # type: ignore[union-attr]
    return str(app).split(":")[1]


def test_each_error_answers_what_a_plain_asgi_app_answers(
    framework: ServerProcess, plain: ServerProcess
) -> None:
    name = _app_name(framework)
    expected = {path: _answer(httpx.get(plain.url + path, timeout=10)) for path in ERRORS}
    assert {path: answer[0] for path, answer in expected.items()} == {
        "/unavailable": 503, "/overloaded": 503, "/deadline": 504, "/no-provider": 503}
    assert expected["/unavailable"][2] == "1"  # Retry-After
    for place in PLACES[name]:
        for path in ERRORS:
            got = _answer(httpx.get(framework.url + place + path, timeout=10))
            assert got == expected[path], f"{name} {place}{path}"


def test_a_dependency_that_runs_out_of_time_is_a_504(custom: ServerProcess) -> None:
    """(Dependencies are FastAPI's: the FastAPI app with its own handler for
    ServiceUnavailable still gets tether's 504 for a deadline.)"""
    response = httpx.get(custom.url + "/dependency", timeout=10)
    assert response.status_code == 504
    assert response.text == "Deadline exceeded\n"


@pytest.fixture(params=FRAMEWORKS)
def fresh(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A framework app of its own: every count in its /metrics is this test's."""
    yield from _serve(request.param)


def test_counted_as_what_the_client_got_and_logged_once(fresh: ServerProcess) -> None:
    framework = fresh
    before: dict[str, float] = {}
    for path in ("/unavailable", "/middleware/unavailable", "/no-provider"):
        assert httpx.get(framework.url + path, timeout=10).status_code == 503
    assert httpx.get(framework.url + "/overloaded", timeout=10).status_code == 503
    assert httpx.get(framework.url + "/pure-middleware/deadline", timeout=10).status_code == 504
    lines_before = framework.output().count("\n")
    # A bug in the app is still a 500, logged once with its traceback.
    assert httpx.get(framework.url + "/crash", timeout=10).status_code == 500
    fives = 'tether_http_requests_total{code="5xx"}'
    after = _scrape_until(framework, lambda now: now.get(fives, 0) - before.get(fives, 0) >= 6)

    def moved(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert moved(UNAVAILABLE) == 3
    assert moved(OVERLOADED) == 1
    assert moved(DEADLINE) == 1
    assert moved(fives) == 6
    crash_lines = framework.output().splitlines()[lines_before:]
    assert sum("Exception in ASGI application" in line for line in crash_lines) == 1
    assert "ValueError: a bug" in "".join(crash_lines)
    # tether's errors are not application bugs: no traceback for them, ever
    assert "ServiceUnavailable" not in framework.output()


def test_a_background_task_failing_after_the_response_is_not_counted(
    fresh: ServerProcess,
) -> None:
    framework = fresh
    before: dict[str, float] = {}
    response = httpx.get(framework.url + "/background", timeout=10)
    assert (response.status_code, response.text) == (200, "accepted")
    line = framework.wait_for_line("raised after the response was sent")
    assert "GET /background" in line and "the audit service is down" in line
    twos = 'tether_http_requests_total{code="2xx"}'
    after = _scrape_until(framework, lambda now: now.get(twos, 0) > before.get(twos, 0))
    assert after.get(UNAVAILABLE, 0) == before.get(UNAVAILABLE, 0)  # the client got a 200
    assert after[twos] == before.get(twos, 0) + 1
    assert framework.output().count("raised after the response was sent") == 1


@pytest.fixture
def custom() -> Iterator[ServerProcess]:
    yield from _serve("custom")


def test_an_apps_own_handler_wins(custom: ServerProcess, plain: ServerProcess) -> None:
    response = httpx.get(custom.url + "/unavailable", timeout=10)
    assert response.status_code == 503
    assert response.headers["x-handled-by"] == "the app"
    assert response.text == "our own page: orders are down"
    # ...and for the errors it does not handle, tether's answer
    assert _answer(httpx.get(custom.url + "/deadline", timeout=10)) == _answer(
        httpx.get(plain.url + "/deadline", timeout=10))


def test_a_deadline_mid_stream_cuts_the_response_as_for_a_plain_app(
    custom: ServerProcess,
) -> None:
    """Starlette turns the DeadlineExceeded (a TimeoutError, so an OSError) of a failing
    body into its ClientDisconnect; tether still sees a deadline and cuts the response
    (no last chunk: the client knows it is incomplete), without a traceback."""
    with socket.create_connection(("127.0.0.1", custom.port), timeout=10) as sock:
        sock.sendall(b"GET /stream-deadline HTTP/1.1\r\nHost: t\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 ")
    assert b"first part" in received
    assert not received.endswith(b"0\r\n\r\n")  # cut: no last chunk
    line = custom.wait_for_line("failed mid-response")
    assert "Deadline exceeded" in line
    assert "Traceback" not in custom.output()


def test_no_framework_handlers_leaves_starlettes_500() -> None:
    with server_process(f"{MODULE}:fastapi", "--no-framework-handlers", cwd=APPS) as server:
        response = httpx.get(server.url + "/unavailable", timeout=10)
    assert (response.status_code, response.text) == (500, "Internal Server Error")


def test_behind_tether_proxy(framework: ServerProcess) -> None:
    with proxy("--route", f"/=127.0.0.1:{framework.port}") as front:
        unavailable = httpx.get(front.url + "/no-provider", timeout=10)
        deadline = httpx.get(front.url + "/router/deadline", timeout=10)
    assert unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "1"
    assert "no provider of 'orders' is available" in unavailable.text
    assert deadline.status_code == 504
    assert deadline.text == "Deadline exceeded\n"
