"""The dashboard's files (tether.dashboard), without a browser: every file the page
references is served by ``asset()``, nothing comes from anywhere but the admin port,
the wheel ships every file, and ``asset()`` never reaches outside its package.

(The page in a real browser over real processes: tests/test_dashboard_browser.py.)
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tether import dashboard

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "tether" / "dashboard"
PAGE_FILES = ("index.html", "dashboard.js", "dashboard.css")


class _References(HTMLParser):
    """Every ``src`` and ``href`` in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [value for name, value in attrs if name in ("src", "href") and value]


def references() -> list[str]:
    parser = _References()
    parser.feed(dashboard.index().decode())
    return parser.found


def test_every_file_the_page_references_is_served_with_its_type() -> None:
    found = references()
    files = [ref for ref in found if ref.startswith("/dashboard/") and ref != "/dashboard/data"]
    assert {"/dashboard/dashboard.js", "/dashboard/dashboard.css",
            "/dashboard/vendor/uPlot.iife.min.js", "/dashboard/vendor/uPlot.min.css",
            "/dashboard/vendor/uPlot.LICENSE"} <= set(files), found
    types = {".js": b"text/javascript", ".css": b"text/css", ".LICENSE": b"text/plain"}
    for ref in files:
        served = dashboard.asset(ref.removeprefix("/dashboard/"))
        assert served is not None, f"{ref} is referenced by index.html but not served"
        body, ctype = served
        assert body and ctype.startswith(types["." + ref.rsplit(".", 1)[1]]), (ref, ctype)
    # the rest: the admin port's own routes, and the empty icon that saves a 404
    assert set(found) - set(files) == {"/dashboard/data", "/status", "/metrics", "data:,"}


def test_the_page_reaches_nothing_but_the_admin_port() -> None:
    # no CDN, no font or analytics host: the page works offline (and the port's CSP
    # would refuse anything else anyway)
    for name in PAGE_FILES:
        text = (PACKAGE / name).read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), name
    script = (PACKAGE / "dashboard.js").read_text()
    # read-only: the one request the script makes is a GET of the data
    assert script.count("fetch(") == 1 and 'method: "GET"' in script
    assert "innerHTML" not in script  # server values reach the page as text only


def test_index_is_the_page_and_asset_is_the_packages_files_only() -> None:
    assert dashboard.index() == (PACKAGE / "index.html").read_bytes()
    assert dashboard.asset("dashboard.js") == (
        (PACKAGE / "dashboard.js").read_bytes(), b"text/javascript; charset=utf-8")
    for refused in ("../__init__.py", "__init__.py", "vendor/../../admin.py", "",
                    "vendor/", ".hidden.js", "vendor/README.md", "missing.js",
                    "/etc/passwd.css", "vendor\\..\\x.js", "./dashboard.js"):
        assert dashboard.asset(refused) is None, refused


def test_the_vendored_uplot_is_the_version_its_readme_records() -> None:
    header = (PACKAGE / "vendor" / "uPlot.iife.min.js").read_text()[:200]
    version = re.search(r"uPlot \(v([\d.]+)\)", header)
    assert version is not None, header
    readme = (PACKAGE / "vendor" / "README.md").read_text()
    assert f"| version | {version.group(1)} |" in readme
    assert (PACKAGE / "vendor" / "uPlot.LICENSE").read_text().startswith("The MIT License")


@pytest.mark.parametrize("path", sorted(
    p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py"))
def test_a_non_editable_install_ships_the_file(path: str) -> None:
    # setuptools puts a package's non-Python files in the wheel only when they match
    # its package-data patterns: a new file type here must get a pattern there
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["tether.dashboard"]
    assert any(fnmatch.fnmatchcase(path, pattern) and path.count("/") == pattern.count("/")
               for pattern in patterns), (path, patterns)
