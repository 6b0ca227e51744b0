"""``--reload``: watch the application's files and roll the workers when one changes.

For development, not production. The supervisor runs the watch (never a worker) and
answers a change with tether's own rolling reload, the one SIGHUP starts: a new
worker imports the new code and becomes ready before an old one drains, so nothing
in flight fails, and a change that does not import leaves the old workers serving
(the failed worker prints its error once; the next save tries again).

Why ``watchfiles``: it is what uvicorn and granian use (Rust's ``notify``: inotify on
Linux, no polling), and its ``awatch`` batches a burst of saves (an editor writing a
file and its backup, a ``git checkout``) into one set of changes, so one save is one
reload. The filter follows uvicorn's ``--reload-include`` / ``--reload-exclude``
rules so the same flags mean the same files.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

logger = logging.getLogger("tether.supervisor")

#: uvicorn's defaults: Python sources in, editor droppings and bytecode out
DEFAULT_INCLUDES: Final = ("*.py",)
DEFAULT_EXCLUDES: Final = (".*", ".py[cod]", ".sw.*", "~*")
#: milliseconds a burst of changes is gathered into one batch (watchfiles' debounce)
DEBOUNCE_MS: Final = 200


class FileFilter:
    """Which changed paths trigger a reload: uvicorn's rules.

    A path triggers when it matches an include pattern and neither lies under an
    excluded directory nor matches an exclude pattern. An include pattern given on
    the command line removes the same default exclude (``--reload-include '.env'``
    works), and an exclude removes the same default include.
    """

    def __init__(self, includes: Sequence[str] = (), excludes: Sequence[str] = ()) -> None:
        self.includes = sorted({*(p for p in DEFAULT_INCLUDES if p not in excludes), *includes})
        self.excludes: list[str] = [p for p in DEFAULT_EXCLUDES if p not in includes]
        self.exclude_dirs: list[Path] = []
        for pattern in excludes:
            path = Path(pattern)
            try:
                is_dir = path.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                self.exclude_dirs.append(path.resolve())
            elif pattern not in self.excludes:
                self.excludes.append(pattern)

    def __call__(self, path: Path) -> bool:
        for include in self.includes:
            if not path.match(include):
                continue
            if any(excluded in path.parents for excluded in self.exclude_dirs):
                return False
            return not any(path.match(exclude) for exclude in self.excludes)
        return False


def watch_dirs(dirs: Sequence[str], app_dir: str | None) -> list[Path]:
    """The directories to watch: ``--reload-dir`` ones, else the app's directory."""
    chosen = dirs or (app_dir or os.getcwd(),)
    return [Path(d).resolve() for d in chosen]


async def watch(
    dirs: Sequence[Path], accept: FileFilter, on_change: Callable[[list[Path]], None],
    stop: asyncio.Event,
) -> None:
    """Call ``on_change`` with the changed paths of each batch until ``stop`` is set."""
    from watchfiles import awatch

    def wanted(_change: object, path: str) -> bool:
        return accept(Path(path))

    async for changes in awatch(*dirs, watch_filter=wanted, debounce=DEBOUNCE_MS,
                                stop_event=stop):
        paths = sorted({Path(path) for _, path in changes})
        if paths:
            on_change(paths)


def describe(paths: Sequence[Path], root: Path) -> str:
    """``a.py, pkg/b.py`` (relative to ``root`` where possible), for the log line."""
    shown = []
    for path in paths[:5]:
        try:
            shown.append(str(path.relative_to(root)))
        except ValueError:
            shown.append(str(path))
    more = len(paths) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
