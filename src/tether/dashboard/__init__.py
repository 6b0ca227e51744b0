"""The admin port's live dashboard: the page (``index.html``, ``dashboard.js``,
``dashboard.css``) and the charting library it uses (``vendor/``, uPlot from npm,
vendored with its license), read from this package with importlib.resources.

Everything the page needs ships here: no CDN, no build step, nothing fetched from
anywhere but the admin port itself (its CSP says so too). The page only reads
(``GET /dashboard/data`` once a second); nothing here may change the server.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

#: content types of the files served; anything else under this package is not served
#: (``__init__.py``, caches, the vendor README)
CONTENT_TYPES: Final = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".png": b"image/png",
    ".LICENSE": b"text/plain; charset=utf-8",
}


def index() -> bytes:
    """The page served at ``/`` of the admin port."""
    return resources.files(__name__).joinpath("index.html").read_bytes()


def asset(name: str) -> tuple[bytes, bytes] | None:
    """``(content, content type)`` of the file ``name`` (a ``/``-separated path under
    this package, as in ``/dashboard/<name>``), or None when there is no such file or
    it is not one the page uses. Never reaches outside the package: empty, dot and
    hidden path segments are refused before any lookup."""
    parts = name.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") or "\\" in p for p in parts):
        return None
    suffix = "." + parts[-1].rsplit(".", 1)[-1] if "." in parts[-1] else ""
    ctype = CONTENT_TYPES.get(suffix)
    if ctype is None:
        return None
    node = resources.files(__name__).joinpath(*parts)
    if not node.is_file():
        return None
    return node.read_bytes(), ctype
