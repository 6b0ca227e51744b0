"""Open a registry from its URL. The one place that knows every backend's scheme."""

from __future__ import annotations

from urllib.parse import urlsplit

from tether.errors import ConfigError
from tether.registry.base import Registry

DEFAULT_URL = "sqlite:///.tether/registry.db"


def sqlite_path(url: str) -> str:
    """SQLAlchemy's convention: ``sqlite:///rel.db`` is relative, ``sqlite:////abs.db``
    absolute."""
    rest = url[len("sqlite://"):]
    if not rest.startswith("/") or len(rest) < 2:
        raise ConfigError(f"registry URL {url!r}: expected sqlite:///relative/path.db "
                          "or sqlite:////absolute/path.db")
    return rest[1:]


def etcd_endpoints(url: str) -> tuple[list[tuple[str, int]], str]:
    """``etcd://h1:2379,h2:2379/prefix`` -> ([(h1, 2379), (h2, 2379)], "/prefix")."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"registry URL {url!r}: {exc}") from exc
    if parts.query or parts.fragment:
        raise ConfigError(f"registry URL {url!r}: no query or fragment expected")
    endpoints = []
    for item in parts.netloc.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or not host.strip("[]") or not 0 < int(port) < 65536:
            raise ConfigError(f"registry URL {url!r}: endpoint {item!r} is not host:port")
        endpoints.append((host.strip("[]"), int(port)))
    prefix = parts.path.rstrip("/") or "/tether"
    return endpoints, prefix


def open_registry(url: str) -> Registry:
    """A registry client for ``url``; raises ConfigError for an unknown or bad URL."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from tether.registry.sqlite import SQLiteRegistry

        return SQLiteRegistry(sqlite_path(url), url=url)
    if scheme == "etcd":
        endpoints, prefix = etcd_endpoints(url)  # validate before importing anything
        try:
            from tether.registry.etcd import EtcdRegistry
        except ImportError as exc:
            raise ConfigError(
                f"registry URL {url!r} needs the etcd client: pip install 'tether[etcd]' "
                f"({exc})"
            ) from exc
        return EtcdRegistry(endpoints, prefix, url=url)
    if scheme == "memory":
        from tether.registry.memory import MemoryRegistry

        return MemoryRegistry.shared(url)
    raise ConfigError(
        f"unknown registry URL {url!r}: use sqlite:///path.db, etcd://host:port/prefix "
        "or memory://"
    )
