"""The registry's contract: providers register with a TTL and keep themselves alive;
watchers receive immutable full snapshots, or a typed "unreachable" event.

Field report 5 (docs/incidents.md, SOFARPC) is why snapshots are immutable and always full: the
client diffs old against new and nothing can alias (the SOFARPC bug compared the
new list against a shallow copy that the update had already emptied). Dubbo's
lesson is why "the service has zero providers" (an empty snapshot) and "the
registry is unreachable" (:class:`Unreachable`) are different things.

Must never report an unreachable registry as an empty snapshot.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tether.errors import TetherError

DEFAULT_TTL = 10.0


class RegistryError(TetherError):
    """A registry operation failed."""


class RegistryUnreachable(RegistryError):
    """The registry could not be reached (raised by register/list; watchers get an
    :class:`Unreachable` event instead and keep their last snapshot)."""


@dataclass(frozen=True, slots=True)
class Provider:
    """One registered instance of a service. Immutable; equal when every field is."""

    service: str
    address: str  # "host:port"
    metadata: tuple[tuple[str, str], ...] = ()
    #: a fresh id per registration, so a restart at the same address is a new provider
    registration: str = ""

    @property
    def meta(self) -> dict[str, str]:
        return dict(self.metadata)

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every provider of ``service`` at ``revision``: always the whole set."""

    service: str
    providers: frozenset[Provider]
    revision: int

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(p.address for p in self.providers)


@dataclass(frozen=True, slots=True)
class Unreachable:
    """The watch lost the registry; the watcher should keep its last snapshot."""

    service: str
    error: str
    since: float = field(default_factory=time.monotonic)


WatchEvent = Snapshot | Unreachable


class Registration(Protocol):
    """A live registration: it refreshes itself until deregistered."""

    @property
    def provider(self) -> Provider: ...


class Registry(Protocol):
    """What every backend (sqlite, etcd, memory) provides."""

    url: str

    async def register(
        self, service: str, address: str, metadata: Mapping[str, str] | None = None,
        ttl: float = DEFAULT_TTL,
    ) -> Registration:
        """Register and keep the entry alive (refresh every ttl/3) until deregistered.
        Raises RegistryUnreachable if the registry cannot be reached now."""
        ...

    async def deregister(self, registration: Registration) -> None:
        """Remove the entry now and stop refreshing it."""
        ...

    def watch(self, service: str) -> AsyncIterator[WatchEvent]:
        """A full snapshot first, then one per change; ``Unreachable`` while lost."""
        ...

    async def list(self, service: str | None = None) -> list[tuple[Provider, float]]:
        """Current providers with the seconds their entry has left to live."""
        ...

    async def close(self) -> None:
        """Stop every refresh task and watch, and release connections. Registrations
        left are not removed (they expire), so a crashed process behaves the same."""
        ...


def metadata_tuple(metadata: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((metadata or {}).items()))
