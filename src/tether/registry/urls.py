"""Open a registry from its URL. The one place that knows every backend's scheme.

A URL may carry a secret (``etcd://user:password@host:2379/prefix``): only
:func:`redact` of it is ever stored on a registry, logged or shown in ``/status``.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

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


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: what may be shown.

    The userinfo ends at the *last* ``@`` (a password may hold an unencoded ``/``,
    ``@`` or ``:``); when in doubt it redacts too much, never too little."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    at = rest.rfind("@")
    if at == -1 or ":" not in rest[:at]:
        return url
    user = rest[:at].split(":", 1)[0]
    return f"{scheme}://{user}:***@{rest[at + 1:]}"


def etcd_credentials(url: str) -> tuple[str, str] | None:
    """(user, password) from ``etcd://user:password@...`` (percent-decoded), or None."""
    netloc = url.partition("://")[2].partition("/")[0]
    userinfo, at, _ = netloc.rpartition("@")
    if not at:
        return None
    user, sep, password = userinfo.partition(":")
    if not user or not sep:
        raise ConfigError(
            f"registry URL {redact(url)!r}: credentials must be user:password@"
        )
    return unquote(user), unquote(password)


def etcd_endpoints(url: str) -> tuple[list[tuple[str, int]], str]:
    """``etcd://h1:2379,h2:2379/prefix`` -> ([(h1, 2379), (h2, 2379)], "/prefix")."""
    shown = redact(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"registry URL {shown!r}: {exc}") from exc
    if parts.query or parts.fragment:
        raise ConfigError(f"registry URL {shown!r}: no query or fragment expected")
    endpoints = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or not host.strip("[]") or not 0 < int(port) < 65536:
            raise ConfigError(f"registry URL {shown!r}: endpoint {item!r} is not host:port")
        endpoints.append((host.strip("[]"), int(port)))
    prefix = parts.path.rstrip("/") or "/tether"
    return endpoints, prefix


def open_registry(url: str, *, create: bool = True) -> Registry:
    """A registry client for ``url``; raises ConfigError for an unknown or bad URL.

    ``create=False`` is for readers: a sqlite file that does not exist is then a
    RegistryError naming it (at the first read), not a new, empty registry."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from tether.registry.sqlite import SQLiteRegistry

        return SQLiteRegistry(sqlite_path(url), url=url, create=create)
    if scheme == "etcd":
        endpoints, prefix = etcd_endpoints(url)  # validate before importing anything
        credentials = etcd_credentials(url)
        try:
            from tether.registry.etcd import EtcdRegistry
        except ImportError as exc:
            raise ConfigError(
                f"registry URL {redact(url)!r} needs the etcd client: "
                f"pip install 'tether[etcd]' ({exc})"
            ) from exc
        return EtcdRegistry(endpoints, prefix, url=redact(url), credentials=credentials)
    if scheme == "memory":
        from tether.registry.memory import MemoryRegistry

        return MemoryRegistry.shared(url)
    raise ConfigError(
        f"unknown registry URL {redact(url)!r}: use sqlite:///path.db, etcd://host:port/prefix "
        "or memory://"
    )
