"""``--env-file``: KEY=VALUE lines (dotenv syntax, read by python-dotenv as uvicorn
does) put into the environment the application's workers inherit.

Rules, decided once here:

* Variables already in the environment win over the file (uvicorn's and dotenv's
  default): an operator's ``FOO=1 tether serve ...`` overrides the checked-in file.
* ``TETHER_*`` names in the file are not loaded: tether's own options are read from
  flags and the real environment *before* the file (as uvicorn ignores
  ``UVICORN_*`` in its env file), and a file that silently half-configured the
  server, or planted a worker's internal variables, would be worse. They are
  returned so the CLI can say they were skipped.
* A line without ``=`` (a bare ``KEY``) sets nothing.
"""

from __future__ import annotations

import os

from dotenv import dotenv_values

from tether.errors import ConfigError

#: names the file may not set (see the module docstring)
RESERVED_PREFIX = "TETHER_"


def load_env_file(path: str) -> list[str]:
    """Load ``path`` into ``os.environ`` (existing variables win); return the
    ``TETHER_*`` names it contained, which were skipped. Raises ConfigError naming
    ``--env-file`` when the file cannot be read."""
    try:
        with open(path, encoding="utf-8") as stream:
            values = dotenv_values(stream=stream)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"--env-file: cannot read {path}: {reason}") from None
    skipped = []
    for name, value in values.items():
        if name.startswith(RESERVED_PREFIX):
            skipped.append(name)
        elif value is not None:
            os.environ.setdefault(name, value)
    return skipped
