"""Keeping one registration alive: refresh every ttl/3, re-create it if it was lost,
back off while the registry is unreachable, and log each outage once.

Shared by every backend so that the rules are the same everywhere. Must never log
per retry, and never stop refreshing on its own: only ``stop()`` ends it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from tether.backoff import Backoff
from tether.registry.base import Provider
from tether.tasks import cancel_and_wait

logger = logging.getLogger("tether.registry")

#: first retry while the registry is unreachable; retries double up to ttl/3 and stay there
MIN_RETRY = 0.2


class KeptRegistration:
    """A live registration. ``refresh`` returns False when the entry was lost (it
    expired, or a restarted registry forgot it), and then ``recreate`` puts it back."""

    def __init__(
        self,
        provider: Provider,
        ttl: float,
        refresh: Callable[[], Awaitable[bool]],
        recreate: Callable[[], Awaitable[None]],
    ) -> None:
        self.provider = provider
        self.ttl = ttl
        self._refresh = refresh
        self._recreate = recreate
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_alive())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            for error in await cancel_and_wait([task]):
                logger.warning("registration of %s at %s: keep-alive failed: %r",
                               self.provider.service, self.provider.address, error)

    async def _keep_alive(self) -> None:
        period = self.ttl / 3
        # Registrations made together would otherwise refresh in lockstep forever
        # (bursts at the registry): spread the first refresh over a tenth of a period.
        delay = period * random.uniform(0.9, 1.0)
        retry = Backoff(initial=min(MIN_RETRY, period), maximum=period)
        failures = 0  # refreshes failed in a row
        label = f"{self.provider.service} at {self.provider.address}"
        while True:
            await asyncio.sleep(delay)
            try:
                if not await self._refresh():
                    await self._recreate()
                    logger.warning("registration of %s had expired: registered again", label)
            except Exception as exc:  # unreachable: keep trying, say so once
                if not failures:
                    logger.warning("cannot refresh registration of %s: %s (retrying)", label, exc)
                failures += 1
                delay = retry.delay(failures)
                continue
            if failures:
                logger.info("registration of %s refreshed again", label)
            failures = 0
            delay = period
