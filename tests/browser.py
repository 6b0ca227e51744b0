"""The real browser the tests drive (tether.testing.browser: headless Debian chromium
under chromium-driver, through Selenium), and when its tests skip.

The browser can be missing only where ``scripts/system-deps.sh`` has not run: there
the tests using it skip and say so (``BROWSER_SKIP``), except under CI (``CI`` set),
where ``make test`` installs it and a missing browser is a failure.
"""

from __future__ import annotations

import os

import pytest

from tether.testing.browser import PAGE_TIMEOUT, chromium, missing

__all__ = ["BROWSER_SKIP", "MISSING", "PAGE_TIMEOUT", "chromium"]

MISSING = missing()
# CI runs `make test`, which installs the browser: there its absence is a broken install
# step (the browser fixture fails), not a reason to skip the proof.
BROWSER_SKIP = pytest.mark.skipif(MISSING is not None and not os.environ.get("CI"),
                                  reason=MISSING or "")
