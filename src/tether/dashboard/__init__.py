"""The dashboard's files (placeholder until the page lands): ``index()`` and ``asset()``."""

from __future__ import annotations

from importlib import resources

_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
          ".css": b"text/css; charset=utf-8", ".png": b"image/png"}


def index() -> bytes:
    """The page served at ``/`` of the admin port."""
    return b"<!doctype html><title>tether</title><p>dashboard</p>"


def asset(name: str) -> tuple[bytes, bytes] | None:
    """``(content, content type)`` of the file ``name`` under this package, or None."""
    parts = name.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    suffix = "." + parts[-1].rsplit(".", 1)[-1] if "." in parts[-1] else ""
    ctype = _TYPES.get(suffix)
    if ctype is None:
        return None
    node = resources.files(__name__).joinpath(*parts)
    if not node.is_file():
        return None
    return node.read_bytes(), ctype
