"""An in-process registry for unit tests: same contract, same TTL rules, no I/O.

Instances are shared by URL (``memory://name``) so that a server and a client in one
process see the same providers. Must never be used across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import ClassVar

from tether.registry.base import (
    DEFAULT_TTL,
    Provider,
    Registration,
    Snapshot,
    WatchEvent,
    metadata_tuple,
)
from tether.registry.lease import KeptRegistration

#: how often watchers look for expired entries
EXPIRY_CHECK = 0.05


class MemoryRegistry:
    _instances: ClassVar[dict[str, MemoryRegistry]] = {}

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._entries: dict[tuple[str, str], tuple[Provider, float]] = {}
        self._revision = 0
        self._changed = asyncio.Event()
        self._kept: list[KeptRegistration] = []

    @classmethod
    def shared(cls, url: str) -> MemoryRegistry:
        if url not in cls._instances:
            cls._instances[url] = cls(url)
        return cls._instances[url]

    def _bump(self) -> None:
        self._revision += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def register(
        self, service: str, address: str, metadata: Mapping[str, str] | None = None,
        ttl: float = DEFAULT_TTL,
    ) -> Registration:
        provider = Provider(service, address, metadata_tuple(metadata), uuid.uuid4().hex)

        async def put() -> None:
            self._entries[(service, address)] = (provider, time.monotonic() + ttl)
            self._bump()

        async def refresh() -> bool:
            entry = self._entries.get((service, address))
            if entry is None or entry[0] != provider or entry[1] < time.monotonic():
                return False
            self._entries[(service, address)] = (provider, time.monotonic() + ttl)
            return True

        await put()
        kept = KeptRegistration(provider, ttl, refresh, put)
        kept.start()
        self._kept.append(kept)
        return kept

    async def deregister(self, registration: Registration) -> None:
        assert isinstance(registration, KeptRegistration)
        await registration.stop()
        if registration in self._kept:
            self._kept.remove(registration)  # as the SQLite backend does: no stopped entry kept
        provider = registration.provider
        entry = self._entries.get((provider.service, provider.address))
        if entry is not None and entry[0] == provider:
            del self._entries[(provider.service, provider.address)]
            self._bump()

    def _current(self, service: str) -> frozenset[Provider]:
        now = time.monotonic()
        return frozenset(p for (s, _), (p, exp) in self._entries.items()
                         if s == service and exp > now)

    async def watch(self, service: str) -> AsyncIterator[WatchEvent]:
        last: frozenset[Provider] | None = None
        while True:
            current = self._current(service)
            if current != last:
                last = current
                yield Snapshot(service, current, self._revision)
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EXPIRY_CHECK):
                    await changed.wait()

    async def list(self, service: str | None = None) -> list[tuple[Provider, float]]:
        now = time.monotonic()
        return sorted(
            ((p, exp - now) for (s, _), (p, exp) in self._entries.items()
             if exp > now and (service is None or s == service)),
            key=lambda item: (item[0].service, item[0].address),
        )

    async def close(self) -> None:
        for kept in self._kept:
            await kept.stop()
        self._kept.clear()
