"""The embedded default registry: one SQLite file (stdlib, WAL mode) shared by every
process on one machine.

Each provider is a row with an ``expires_at`` (wall clock, shared by processes) that
its owner refreshes every ttl/3; readers ignore expired rows, so a ``kill -9``ed
server disappears by itself within its TTL. Watchers poll ``PRAGMA data_version``
(it changes when *another* connection commits: one cheap read) and re-read at the
next expiry time, and emit a full snapshot when the set of providers changes.

For one machine only: SQLite's locking is not safe on network file systems (NFS).
All sqlite3 calls run on one thread per registry (the module is blocking), never on
the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tether.registry.base import (
    DEFAULT_TTL,
    Provider,
    Registration,
    RegistryError,
    RegistryUnreachable,
    Snapshot,
    Unreachable,
    WatchEvent,
    metadata_tuple,
)
from tether.registry.lease import KeptRegistration

T = TypeVar("T")

#: how often a watcher checks PRAGMA data_version
POLL_INTERVAL = 0.1

SCHEMA = """
CREATE TABLE IF NOT EXISTS providers (
    service TEXT NOT NULL,
    address TEXT NOT NULL,
    metadata TEXT NOT NULL,
    registration TEXT NOT NULL,
    registered_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (service, address)
)
"""


def _data_version(db: sqlite3.Connection) -> int:
    version: int = db.execute("PRAGMA data_version").fetchone()[0]
    return version


class SQLiteRegistry:
    """``create``: make the file (and its directory) when it is not there, as a
    server registering itself must. A reader (``tether registry ls``) passes False:
    a mistyped path is then an error naming it, not a new, empty registry."""

    def __init__(self, path: str, *, url: str = "", create: bool = True) -> None:
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self.create = create
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tether-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._kept: list[KeptRegistration] = []
        #: each open watch's own connection (a watch sees other connections' commits)
        self._watching: set[sqlite3.Connection] = set()

    # -- plumbing: every sqlite3 call runs on the registry's own thread -------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, fn, *args)
        except RuntimeError:  # the executor is shut down
            raise RegistryError(f"sqlite registry {self.path} is closed") from None
        try:
            return await future
        except sqlite3.Error as exc:
            raise RegistryUnreachable(f"sqlite registry {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        if self.create:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None,
                                   check_same_thread=False)
        else:
            if not os.path.isfile(self.path):
                raise RegistryError(
                    f"no registry file {os.path.abspath(self.path)} (tether serve "
                    "--registry creates it when it registers)")
            # mode=rw: never create it, even if it vanished since the check.
            conn = sqlite3.connect(f"{pathlib.Path(self.path).absolute().as_uri()}?mode=rw",
                                   uri=True, timeout=5.0, isolation_level=None,
                                   check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute(SCHEMA)
        return conn

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    # -- writes -------------------------------------------------------------------------

    def _put(self, provider: Provider, ttl: float) -> None:
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO providers VALUES (?, ?, ?, ?, ?, ?)",
                (provider.service, provider.address, json.dumps(provider.metadata),
                 provider.registration, now, now + ttl),
            )

    def _refresh(self, provider: Provider, ttl: float) -> bool:
        now = time.time()
        with self._db() as db:
            cursor = db.execute(
                "UPDATE providers SET expires_at = ? WHERE service = ? AND address = ? "
                "AND registration = ? AND expires_at > ?",
                (now + ttl, provider.service, provider.address, provider.registration, now),
            )
            return cursor.rowcount == 1

    def _delete(self, provider: Provider) -> None:
        with self._db() as db:
            db.execute(
                "DELETE FROM providers WHERE service = ? AND address = ? AND registration = ?",
                (provider.service, provider.address, provider.registration),
            )

    async def register(
        self, service: str, address: str, metadata: Mapping[str, str] | None = None,
        ttl: float = DEFAULT_TTL,
    ) -> Registration:
        provider = Provider(service, address, metadata_tuple(metadata), uuid.uuid4().hex)
        await self._run(self._put, provider, ttl)

        async def refresh() -> bool:
            return await self._run(self._refresh, provider, ttl)

        async def recreate() -> None:
            await self._run(self._put, provider, ttl)

        kept = KeptRegistration(provider, ttl, refresh, recreate)
        kept.start()
        self._kept.append(kept)
        return kept

    async def deregister(self, registration: Registration) -> None:
        assert isinstance(registration, KeptRegistration)
        await registration.stop()
        if registration in self._kept:
            self._kept.remove(registration)
        await self._run(self._delete, registration.provider)

    # -- reads --------------------------------------------------------------------------

    @staticmethod
    def _rows(db: sqlite3.Connection, service: str | None) -> list[tuple[Provider, float]]:
        now = time.time()
        query = ("SELECT service, address, metadata, registration, expires_at FROM providers "
                 "WHERE expires_at > ?")
        params: tuple[Any, ...] = (now,)
        if service is not None:
            query += " AND service = ?"
            params += (service,)
        result = []
        for svc, address, metadata, registration, expires_at in db.execute(query, params):
            meta = tuple(tuple(pair) for pair in json.loads(metadata))
            result.append((Provider(svc, address, meta, registration), expires_at - now))
        return sorted(result, key=lambda item: (item[0].service, item[0].address))

    async def list(self, service: str | None = None) -> list[tuple[Provider, float]]:
        return await self._run(lambda: self._rows(self._db(), service))

    async def watch(self, service: str) -> AsyncIterator[WatchEvent]:
        """Poll ``data_version`` (changes on other connections' commits) and the next
        expiry (an expired row changes nothing in the file); emit when the set differs."""
        conn: sqlite3.Connection | None = None
        last: frozenset[Provider] | None = None
        version = -1
        next_expiry = 0.0
        revision = 0
        lost = False
        try:
            while True:
                try:
                    if conn is None:
                        conn = await self._run(self._connect)
                        self._watching.add(conn)
                    current_version = await self._run(_data_version, conn)
                    if current_version != version or time.time() >= next_expiry or lost:
                        version = current_version
                        rows = await self._run(self._rows, conn, service)
                        providers = frozenset(p for p, _ in rows)
                        next_expiry = time.time() + min((left for _, left in rows),
                                                        default=3600.0)
                        if providers != last or lost:
                            last, lost = providers, False
                            revision += 1
                            yield Snapshot(service, providers, revision)
                except RegistryUnreachable as exc:
                    if not lost:
                        lost = True
                        yield Unreachable(service, str(exc))
                    if conn is not None:
                        self._close_later(conn)
                    conn = None
                await asyncio.sleep(POLL_INTERVAL)
        finally:
            if conn is not None:
                self._close_later(conn)

    def _close_later(self, conn: sqlite3.Connection) -> None:
        """Close ``conn`` on the registry's thread, after the call that may still be
        running there: a watch cancelled mid-poll leaves its thread call running,
        and closing the connection under it from this thread crashes the process
        (a segfault inside sqlite3, seen in a test run)."""
        # RuntimeError: the executor is shut down (the registry was closed, and
        # closed this connection on its way).
        self._watching.discard(conn)
        with contextlib.suppress(RuntimeError):
            self._executor.submit(conn.close)

    async def close(self) -> None:
        for kept in list(self._kept):
            await kept.stop()
        self._kept.clear()
        # Every connection is closed on the registry's thread, after whatever call
        # is still running there; a watch still open then ends with RegistryError.
        conns, self._watching = list(self._watching), set()
        if self._conn is not None:
            conns.append(self._conn)
            self._conn = None
        loop = asyncio.get_running_loop()
        for conn in conns:
            await loop.run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=False)
