"""Logging setup for the ``tether`` command: errors and lifecycle to stderr, access to stdout.

Library code only ever calls ``logging.getLogger("tether.*")``; this module is the
one place that attaches handlers, and only the CLI calls it.
"""

from __future__ import annotations

import logging
import sys

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}


def configure_logging(level: str, *, access_log: bool = True) -> None:
    fmt = logging.Formatter(
        "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
    )
    errors = logging.StreamHandler(sys.stderr)
    errors.setFormatter(fmt)
    root = logging.getLogger("tether")
    root.handlers[:] = [errors]
    root.setLevel(LEVELS[level])
    root.propagate = False

    access = logging.getLogger("tether.access")
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(message)s"))
    access.handlers[:] = [out]
    access.propagate = False
    access.setLevel(LEVELS[level] if access_log else logging.CRITICAL + 1)
