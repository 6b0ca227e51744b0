"""A module that exists but whose own import fails (a missing dependency)."""

from __future__ import annotations

import nosuchdependency_xyz  # type: ignore[import-not-found]  # noqa: F401
