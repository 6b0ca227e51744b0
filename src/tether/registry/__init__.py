"""Service registry: providers register with a TTL; clients watch full snapshots.

``open_registry(url)``: ``sqlite:///relative.db`` or ``sqlite:////absolute.db``
(the embedded default, one machine), ``etcd://host:port[,host:port]/prefix``
(many machines), ``memory://`` (tests, one process).
"""

from __future__ import annotations

from tether.registry.base import (
    DEFAULT_TTL,
    Provider,
    Registration,
    Registry,
    RegistryError,
    RegistryUnreachable,
    Snapshot,
    Unreachable,
    WatchEvent,
)
from tether.registry.urls import DEFAULT_URL, open_registry

__all__ = [
    "DEFAULT_TTL",
    "DEFAULT_URL",
    "Provider",
    "Registration",
    "Registry",
    "RegistryError",
    "RegistryUnreachable",
    "Snapshot",
    "Unreachable",
    "WatchEvent",
    "open_registry",
]
