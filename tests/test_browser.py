"""A real browser (headless Chromium, Debian's ``chromium``) talks WebSocket to a real
``tether serve`` process: a page served by tether opens a WebSocket back to it,
exchanges text and binary messages (two of them over 64 KB: a compressible text
through permessage-deflate, and 300 KB of noise that Chromium sends fragmented, as
one BINARY frame and four continuations, seen on this machine), and reports what it
saw; the close code the page saw must be the one the server sent. A second page stays
open across a rolling reload: it must see 1012 and reconnect to the new worker.

The browser and why it is driven this way: tests/browser.py.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apps import browser_app
from tests.browser import BROWSER_SKIP, MISSING, PAGE_TIMEOUT, chromium
from tests.support import APPS, ServerProcess, server_process

pytestmark = BROWSER_SKIP


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium with a profile in ``tmp_path``; quit after the test."""
    if MISSING is not None:
        pytest.fail(f"no browser under CI: {MISSING}")
    with chromium(tmp_path) as driver:
        yield driver


def _wait_for_title(driver: Any, titles: set[str], what: str) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, PAGE_TIMEOUT, poll_frequency=0.05).until(
        lambda d: d.title in titles, f"the page to report {what}")
    return str(driver.title)


def _result(driver: Any, server: ServerProcess) -> dict[str, Any]:
    title = _wait_for_title(driver, {"done", "failed"}, "its result")
    text = driver.find_element("id", "result").text
    result: dict[str, Any] = json.loads(text)
    assert title == "done", f"the page failed: {result}\nserver:\n{server.output()}"
    return result


def test_a_browser_exchanges_text_binary_and_large_messages_and_sees_the_servers_close(
    browser: Any,
) -> None:
    with server_process("browser_app:app", cwd=APPS) as server:
        browser.get(f"{server.url}/?mode=exchange")
        result = _result(browser, server)

    assert result["protocol"] == browser_app.SUBPROTOCOL
    # Chromium offers permessage-deflate and the server accepts it
    assert any("permessage-deflate" in offer for offer in result["greeting"]["offered"])
    assert result["extensions"].startswith("permessage-deflate"), result
    assert result["textEcho"] is True
    assert result["binaryEcho"] is True
    assert (result["bigTextEcho"], result["bigTextLength"]) == (True, 210_000)
    assert (result["bigBinaryEcho"], result["bigBinaryLength"]) == (True, 300_000)
    assert result["close"] == {"code": browser_app.CLOSE_CODE,
                               "reason": browser_app.CLOSE_REASON, "wasClean": True}


def test_a_browser_sees_1012_on_a_reload_and_reconnects_to_the_new_worker(
    browser: Any,
) -> None:
    with server_process("browser_app:app", "--graceful-timeout", "10", cwd=APPS) as server:
        browser.get(f"{server.url}/?mode=reload")
        _wait_for_title(browser, {"open", "failed"}, "its first session open")
        server.proc.send_signal(signal.SIGHUP)
        result = _result(browser, server)
        server.wait_for_line("reload finished")

    # what the old worker sent (src/tether/server/worker.py), not a dropped connection
    assert result["close"] == {"code": 1012, "reason": "server restarting", "wasClean": True}
    assert result["secondPid"] != result["firstPid"]
    assert result["afterReload"] == "still there?"
    assert result["secondClose"]["code"] == 1000
