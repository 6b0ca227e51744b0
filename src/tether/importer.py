"""Load an ASGI application from a ``MODULE:ATTR`` string (optionally a factory).

Must never swallow an error raised by the application's own module: the user
sees the original traceback as the cause of :class:`AppImportError`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, cast

from tether.asgi import ASGIApp
from tether.errors import AppImportError


def import_from_string(target: str) -> Any:
    module_name, sep, attrs = target.partition(":")
    if not sep or not module_name or not attrs:
        raise AppImportError(f'application must be given as "MODULE:ATTR", got {target!r}')
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise AppImportError(
                f"importing module {module_name!r} failed: {exc}"
            ) from exc
        raise AppImportError(f"could not import module {module_name!r}") from exc
    except Exception as exc:
        raise AppImportError(
            f"importing module {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError as exc:
            raise AppImportError(
                f"attribute {attrs!r} not found in module {module_name!r}"
            ) from exc
    return obj


def load_app(target: str, *, factory: bool = False, app_dir: str | None = None) -> ASGIApp:
    """Import ``target`` and return an ASGI 3 callable.

    ``app_dir`` is put first on ``sys.path`` (the current directory by default),
    as uvicorn does, so ``tether serve app:app`` finds ``./app.py``.
    """
    path = app_dir if app_dir is not None else "."
    if path not in sys.path:
        sys.path.insert(0, path)
    obj = import_from_string(target)
    if factory:
        if not callable(obj):
            raise AppImportError(f"--factory: {target!r} is not callable")
        try:
            obj = obj()
        except Exception as exc:
            raise AppImportError(
                f"application factory {target!r} raised {type(exc).__name__}: {exc}"
            ) from exc
    if not callable(obj):
        raise AppImportError(f"{target!r} is not an ASGI application (not callable)")
    return cast(ASGIApp, obj)
