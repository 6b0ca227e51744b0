"""Stopping background tasks without losing the caller's own cancellation.

``task.cancel(); with suppress(CancelledError): await task`` is the usual idiom, and
it is wrong: if the *caller* is cancelled while it waits (a Ctrl-C, a deadline, a
stop), that CancelledError is swallowed too and the caller goes on as if nothing
happened. :func:`cancel_and_wait` waits with :func:`asyncio.wait`, which never
raises for the tasks it waits on and always raises for its caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> list[BaseException]:
    """Cancel ``tasks`` and wait until each has finished; return the exceptions of
    those that failed (other than by being cancelled), for the caller to report.
    A cancellation of the caller itself propagates. The caller is never among the
    tasks it waits for (a task cannot wait for itself)."""
    me = asyncio.current_task()
    pending = [task for task in tasks if task is not me]
    for task in pending:
        task.cancel()
    if not pending:
        return []
    await asyncio.wait(pending)
    return [error for task in pending
            if not task.cancelled() and (error := task.exception()) is not None]
