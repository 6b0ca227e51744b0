"""SQLAlchemy's asyncio engine on asyncpg, under tether's deadlines and cancellation.

What happens without help (SQLAlchemy 2.x): when the task running a statement is
cancelled (a deadline, a client disconnect), asyncpg does cancel the query on the
server, but SQLAlchemy treats ``CancelledError`` as an "exit exception", marks it a
disconnect and invalidates the connection: the next checkout opens a new one. One
new connection per cancelled query is exactly the Boulder churn (field report 1, docs/incidents.md).

:func:`keep_connection_on_cancel` tells SQLAlchemy a cancelled statement is not a
lost connection. That is safe with asyncpg underneath: it has already sent the
CancelRequest, and the connection's next command (the ROLLBACK of SQLAlchemy's
reset-on-return) first waits for the server to acknowledge it.
:func:`statement_timeout_from_deadline` is the other half: PostgreSQL itself ends
the statement shortly before the deadline (only for the current transaction).

Must never be applied to a driver other than asyncpg (others may not cancel on the
server, and the connection's state would then be unknown).
"""

from __future__ import annotations

import asyncio
from typing import Any

from tether.deadline import time_remaining


def keep_connection_on_cancel(engine: Any) -> None:
    """Install on an ``AsyncEngine`` (postgresql+asyncpg) so cancelled statements keep
    their pooled connection instead of invalidating it."""
    from sqlalchemy import event

    @event.listens_for(engine.sync_engine, "handle_error")
    def _cancelled_is_not_disconnect(context: Any) -> None:
        if isinstance(context.original_exception, asyncio.CancelledError):
            context.is_disconnect = False


async def statement_timeout_from_deadline(conn: Any, margin: float = 0.05) -> None:
    """Inside a transaction on an ``AsyncConnection``: let PostgreSQL end the next
    statements ``margin`` seconds before the current deadline (SQLSTATE 57014, which
    SQLAlchemy does not treat as a disconnect). No-op without a deadline."""
    from sqlalchemy import text

    remaining = time_remaining()
    if remaining is not None:
        ms = max(1, int((remaining - margin) * 1000))
        await conn.execute(
            text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(ms)}
        )
