"""Deadline-aware database access. ``tether.db.asyncpg`` wraps an asyncpg pool.

``counters`` is importable without any database driver: the worker reports it to
the supervisor (``db_queries_cancelled``, ``db_connections_opened``, ...).
"""

from __future__ import annotations

from collections import Counter

counters: Counter[str] = Counter()

__all__ = ["counters"]
