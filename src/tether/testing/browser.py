"""A real browser for tests and demos: headless Chromium (Debian's ``chromium``)
driven by Selenium through Debian's ``chromium-driver``.

Why Selenium with Debian's ``chromium-driver`` and not Playwright: Playwright pins
one browser build per release and talks to it over its own protocol (plus a bundled
Node.js driver of some 100 MB); driving Debian's Chromium with it works only while
the two happen to agree. Debian builds ``chromium-driver`` from the same source as
``chromium``, so the driver always matches the browser, and Selenium is pure Python
(no browser download: it is given both paths, so Selenium Manager never runs).

Selenium is in the ``dev`` extra and imported only when a browser starts; anything
missing raises :class:`BrowserUnavailable` naming what to install
(``scripts/system-deps.sh chromium chromium-driver``). Only loopback is reached.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
PAGE_TIMEOUT = 60.0  # seconds a page gets to load (a loaded 2-core machine)


class BrowserUnavailable(RuntimeError):
    """No browser can be started here; the message says why and what to install."""


def missing() -> str | None:
    """Why no browser can be started here, or None."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        return ("Debian's chromium and chromium-driver are not installed "
                "(scripts/system-deps.sh installs them; `make test` runs it)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@contextlib.contextmanager
def chromium(profile: Path, *, width: int = 1280, height: int = 900,
             console_log: bool = False) -> Iterator[Any]:
    """Headless Chromium under chromedriver, its profile and the driver's log in the
    directory ``profile`` (the caller removes it), its window ``width`` x ``height``
    CSS pixels; quit on exit. ``console_log``: keep the page's console messages for
    ``driver.get_log("browser")``."""
    why = missing()
    if why is not None:
        raise BrowserUnavailable(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",  # loopback only: nothing else to reach
        "--hide-scrollbars",  # screenshots: the page, not the scrollbar
        f"--window-size={width},{height}",
        f"--user-data-dir={profile / 'profile'}",
    ):
        options.add_argument(argument)
    if console_log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(profile / "driver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT)
        yield driver
    finally:
        driver.quit()


def full_page_screenshot(driver: Any, path: Path, width: int | None = None) -> Path:
    """Save the whole page (not only the window) as a PNG at ``path``: the window is
    made as tall as the page first (``width``: its width too, else unchanged)."""
    size = driver.get_window_size()
    # a window's outer height includes no browser chrome in headless mode
    height = int(driver.execute_script(
        "return Math.ceil(document.documentElement.scrollHeight)"))
    driver.set_window_size(width or size["width"], max(height, 200))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"the browser could not save a screenshot at {path}")
    return path
