"""The distributed registry: etcd v3 through ``aetcd`` (asyncio, gRPC), for services
that run on many machines.

Each provider is one key, ``<prefix>/<service>/providers/<address>``, whose value is
JSON (service, address, metadata, registration id, registered_at, ttl) and which is
attached to its own lease of the TTL (whole seconds, at least 1, rounded up). aetcd
has no background keep-alive: tether's :class:`KeptRegistration` refreshes the lease
every ttl/3, and when a refresh answers TTL 0 (etcd does not raise for a dead lease:
it expired, or etcd lost it) it grants a new lease and puts the key again. A
``kill -9``ed server stops refreshing, so etcd revokes its lease and deletes its key.

Watchers list the service's keys, then watch from the listing's ``revision + 1`` so
that no change between the two is missed, and emit a full snapshot per change. When
the watch stream dies (etcd restarted, network lost) they yield :class:`Unreachable`
once (the caller keeps its last snapshot), then re-list and re-watch with capped
backoff (0.1 s doubling to 5 s), emitting a fresh full snapshot once back. Watches
use a connection of their own, on which aetcd gets no timeout for creating a watch
(after one, aetcd wires the next watch to the abandoned one's keys): a watch not
confirmed in time retires that connection instead. Several endpoints (the members
of one cluster): a call that cannot connect is tried on the next one.

Must never report an unreachable etcd as an empty snapshot, never let an aetcd or
gRPC error escape untyped (connection failures are ``RegistryUnreachable``, anything
else ``RegistryError``), and never block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import aetcd

from tether.backoff import Backoff
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

#: seconds one etcd call may take before its endpoint counts as unreachable
CALL_TIMEOUT = 3.0
#: a watcher that lost its stream re-lists after 0.1 s, doubling up to 5 s
WATCH_RETRY = Backoff(initial=0.1, maximum=5.0)
#: seconds etcd may take to confirm a new watch (watches on one connection are created
#: one at a time, so this is generous); past it the watch connection is replaced
WATCH_CREATE_TIMEOUT = 15.0
#: ``list()`` asks etcd how long each lease has left only up to this many leases;
#: beyond that it reports each entry's registered TTL (one call per lease is not cheap)
LEASE_INFO_LIMIT = 256

CHANNEL_OPTIONS: dict[str, Any] = {
    # Reconnect soon after etcd comes back (gRPC's default backoff grows to 120 s).
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    # Notice a dead peer under a silent watch stream (etcd refuses pings < 5 s apart).
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    # A listing of 10,000 providers is a few MB; gRPC's default limit is 4 MB.
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
}

#: errors that mean "this endpoint cannot be reached now": try the next one
_UNREACHABLE: tuple[type[BaseException], ...] = (
    aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError, aetcd.WatchTimeoutError,
    TimeoutError,
)
#: any other failure of aetcd or gRPC
_FAILED: tuple[type[BaseException], ...] = (
    aetcd.ClientError, aetcd.rpc.RpcError, aetcd.rpc.BaseError,
)


def lease_seconds(ttl: float) -> int:
    """etcd leases are whole seconds: round up, at least 1."""
    if not ttl > 0:
        raise RegistryError(f"registry TTL must be positive, not {ttl!r}")
    return max(1, math.ceil(ttl))


def decode(value: bytes) -> tuple[Provider, float] | None:
    """The provider stored in a key's JSON value and its registered TTL; None if the
    value is not one of ours."""
    try:
        data = json.loads(value)
        metadata = tuple(sorted((str(k), str(v)) for k, v in data["metadata"].items()))
        provider = Provider(str(data["service"]), str(data["address"]), metadata,
                            str(data["registration"]))
        return provider, float(data.get("ttl", DEFAULT_TTL))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


#: why a watch stopped when its stream delivered another watch's keys
_CROSSED = "etcd watch delivered keys of another watch"

#: one listed key: its provider, its lease id, its registered TTL
_Entry = tuple[Provider, int, float]


class _Lease:
    """The lease currently behind one registration (it changes when re-created)."""

    __slots__ = ("id", "ttl")

    def __init__(self) -> None:
        self.id = 0
        self.ttl = 0


class EtcdRegistry:
    def __init__(
        self, endpoints: list[tuple[str, int]], prefix: str, *, url: str,
        timeout: float = CALL_TIMEOUT, credentials: tuple[str, str] | None = None,
    ) -> None:
        """``url`` is what may be shown (redacted); ``credentials`` (user, password)
        authenticate to an etcd with auth enabled and are never logged."""
        if not endpoints:
            raise RegistryError("the etcd registry needs at least one endpoint")
        self.url = url
        self._user: str | None = credentials[0] if credentials is not None else None
        self._password: str | None = credentials[1] if credentials is not None else None
        self.endpoints = list(endpoints)
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self._timeout = timeout
        self._clients: dict[int, Any] = {}
        self._watch_clients: dict[int, Any] = {}
        self._current = 0
        self._kept: dict[KeptRegistration, _Lease] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- keys ---------------------------------------------------------------------------

    def _service_prefix(self, service: str) -> str:
        return f"{self.prefix}/{service}/providers/"

    def _key(self, service: str, address: str) -> str:
        return self._service_prefix(service) + address

    def _where(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.endpoints)

    # -- connections: one client per endpoint, the current one first --------------------

    def _client(self, index: int) -> Any:
        if self._closed:
            raise RegistryError(f"etcd registry {self.url} is closed")
        client = self._clients.get(index)
        if client is None:
            host, port = self.endpoints[index]
            if ":" in host:
                host = f"[{host}]"
            client = aetcd.Client(host, port, username=self._user, password=self._password,
                                  timeout=self._timeout, options=CHANNEL_OPTIONS)
            self._clients[index] = client
        return client

    def _watch_client(self, index: int) -> Any:
        """The connection watches use: apart from the one for calls, and without aetcd's
        own timeout on creating a watch. aetcd creates a connection's watches one at a
        time and matches etcd's "created" answer to whichever is pending; after a
        timeout, a late answer would wire the NEXT watch to the abandoned one's keys.
        So a watch that is not confirmed in time retires its whole connection instead
        (see ``_retire_watch_client``)."""
        if self._closed:
            raise RegistryError(f"etcd registry {self.url} is closed")
        client = self._watch_clients.get(index)
        if client is None:
            host, port = self.endpoints[index]
            if ":" in host:
                host = f"[{host}]"
            client = aetcd.Client(host, port, username=self._user, password=self._password,
                                  timeout=None, options=CHANNEL_OPTIONS)
            self._watch_clients[index] = client
        return client

    def _retire_watch_client(self, index: int, client: Any) -> None:
        """Close a watch connection that can no longer be trusted; its other watches end
        and start again (re-list, re-watch) on a new one."""
        if self._watch_clients.get(index) is client:
            del self._watch_clients[index]
        task = asyncio.get_running_loop().create_task(self._close_client(client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_client(client: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 2.0)

    def _failed_over(self, index: int) -> None:
        """The endpoint ``index`` could not be reached: the next call tries the next one
        (unless another task has moved on already)."""
        if self._current == index:
            self._current = (index + 1) % len(self.endpoints)

    async def _call(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``op(client)``, trying each endpoint in turn while they cannot be reached."""
        error: BaseException | None = None
        for _ in self.endpoints:
            index = self._current
            try:
                return await op(self._client(index))
            except _UNREACHABLE as exc:
                error = exc
                self._failed_over(index)
            except _FAILED as exc:
                raise RegistryError(f"etcd registry {self.url}: {exc}") from exc
        raise RegistryUnreachable(
            f"etcd at {self._where()} unreachable: {error or type(error).__name__}"
        ) from error

    # -- registering --------------------------------------------------------------------

    async def register(
        self, service: str, address: str, metadata: Mapping[str, str] | None = None,
        ttl: float = DEFAULT_TTL,
    ) -> Registration:
        if not service or "/" in service:
            raise RegistryError(f"service name {service!r}: must be non-empty, without '/'")
        seconds = lease_seconds(ttl)
        provider = Provider(service, address, metadata_tuple(metadata), uuid.uuid4().hex)
        key = self._key(service, address).encode()
        value = json.dumps({
            "service": service, "address": address, "metadata": dict(provider.metadata),
            "registration": provider.registration, "registered_at": time.time(),
            "ttl": seconds,
        }, sort_keys=True).encode()
        lease = _Lease()

        async def put() -> None:
            granted = await self._call(lambda c: c.lease(seconds))
            # Remember the lease before the put: a deregister that interrupts us here
            # must revoke this one (with the key, if the put went through).
            lease.id, lease.ttl = int(granted.id), max(seconds, int(granted.ttl))
            await self._call(lambda c: c.put(key, value, lease=lease.id))

        async def refresh() -> bool:
            reply = await self._call(lambda c: c.refresh_lease(lease.id))
            if reply is None:
                raise RegistryUnreachable(f"etcd at {self._where()}: keep-alive got no answer")
            return int(reply.TTL) > 0  # a dead lease answers TTL 0 instead of raising

        await put()
        kept = KeptRegistration(provider, float(lease.ttl), refresh, put)
        self._kept[kept] = lease
        kept.start()
        return kept

    async def deregister(self, registration: Registration) -> None:
        assert isinstance(registration, KeptRegistration)
        await registration.stop()
        lease = self._kept.pop(registration, None)
        if lease is None:
            return  # deregistered already

        async def revoke(client: Any) -> None:
            try:
                await client.revoke_lease(lease.id)  # deletes the key with it
            except aetcd.ClientError as exc:
                if "lease not found" not in str(exc):
                    raise  # it had expired: nothing left to remove

        await self._call(revoke)

    # -- reading ------------------------------------------------------------------------

    async def _listing(self, prefix: str) -> tuple[dict[bytes, _Entry], int]:
        """Providers under ``prefix`` by key (with their lease and registered TTL), and
        the revision they were read at."""
        response = await self._call(lambda c: c.get_prefix(prefix.encode()))
        entries: dict[bytes, _Entry] = {}
        for kv in response:
            decoded = decode(kv.value)
            if decoded is not None and b"/providers/" in kv.key:
                entries[bytes(kv.key)] = (decoded[0], int(kv.lease), decoded[1])
        return entries, int(response.header.revision)

    async def list(self, service: str | None = None) -> list[tuple[Provider, float]]:
        prefix = self._service_prefix(service) if service else f"{self.prefix}/"
        entries, _ = await self._listing(prefix)
        left = await self._leases_left({lease for _, lease, _ in entries.values() if lease})
        result = [
            (provider, left.get(lease, ttl)) for provider, lease, ttl in entries.values()
            if left.get(lease, 0.0) >= 0  # -1: expired, about to be deleted
        ]
        return sorted(result, key=lambda item: (item[0].service, item[0].address))

    async def _leases_left(self, leases: Iterable[int]) -> dict[int, float]:
        """Seconds each lease has left (-1 if expired); empty when there are too many
        leases to ask about or etcd does not say."""
        leases = list(leases)
        if not leases or len(leases) > LEASE_INFO_LIMIT:
            return {}

        async def ask(lease: int) -> float:
            info = await self._call(lambda c: c.get_lease_info(lease, keys=False))
            return float(info.TTL)

        answers = await asyncio.gather(*(ask(lease) for lease in leases),
                                       return_exceptions=True)
        return {lease: answer for lease, answer in zip(leases, answers, strict=True)
                if isinstance(answer, float)}

    async def watch(self, service: str) -> AsyncIterator[WatchEvent]:
        """Snapshot, then watch from the snapshot's revision + 1; on a lost stream say
        ``Unreachable`` once, back off, and start again with a full snapshot."""
        prefix = self._service_prefix(service)
        last: frozenset[Provider] | None = None
        lost = False
        failures = 0  # consecutive lost streams: the retry delay follows WATCH_RETRY
        while not self._closed:
            established = time.monotonic()
            error: BaseException | str | None = None
            try:
                entries, revision = await self._listing(prefix)
                index = self._current
                client = self._watch_client(index)
                try:
                    stream = await asyncio.wait_for(client.watch_prefix(
                        prefix.encode(), start_revision=revision + 1), WATCH_CREATE_TIMEOUT)
                except TimeoutError as exc:
                    self._retire_watch_client(index, client)
                    self._failed_over(index)
                    raise RegistryUnreachable(
                        f"etcd at {self._where()}: no watch within {WATCH_CREATE_TIMEOUT}s"
                    ) from exc
                except _UNREACHABLE as exc:
                    self._failed_over(index)
                    raise RegistryUnreachable(f"etcd at {self._where()}: {exc}") from exc
                except _FAILED as exc:
                    raise RegistryError(f"etcd registry {self.url}: {exc}") from exc
            except RegistryError as exc:
                error = exc
            else:
                current = {key: entry[0] for key, entry in entries.items()}
                providers = frozenset(current.values())
                if lost or providers != last:
                    last, lost = providers, False
                    yield Snapshot(service, providers, revision)
                following = self._follow(service, prefix, stream, current, last, revision)
                async with contextlib.aclosing(following) as events:
                    async for event in events:
                        if isinstance(event, Snapshot):
                            last = event.providers
                            yield event
                        else:
                            error = event
                if error is _CROSSED:  # cannot happen unless aetcd mixed two watches up
                    self._retire_watch_client(index, client)
                    continue
                if not isinstance(error, str) or self._closed:
                    return  # the stream ended because the registry was closed
                if time.monotonic() - established > WATCH_RETRY.maximum:
                    failures = 0  # it had been working: retry promptly
            if self._closed:
                return
            if not lost:
                lost = True
                yield Unreachable(service, str(error))
            failures += 1
            await asyncio.sleep(WATCH_RETRY.delay(failures))

    async def _follow(
        self, service: str, prefix: str, stream: Any, entries: dict[bytes, Provider],
        last: frozenset[Provider] | None, revision: int,
    ) -> AsyncGenerator[Snapshot | str, None]:
        """Apply the stream's events to ``entries``; yield a snapshot whenever the set
        changed (events that arrived together make one snapshot), and finally a string
        saying why the stream stopped (nothing if the registry was closed; ``_CROSSED``
        if it delivered a key outside ``prefix``)."""
        expected_prefix = prefix.encode()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        pump = asyncio.get_running_loop().create_task(self._pump(stream, queue))
        try:
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                end: Any = None
                for item in batch:
                    if item is None or isinstance(item, BaseException):
                        end = item if item is not None else "the watch stream ended"
                        break
                    key = bytes(item.kv.key)
                    if not key.startswith(expected_prefix):
                        end = _CROSSED
                        break
                    decoded = decode(item.kv.value) if item.kind == aetcd.EventKind.PUT else None
                    if decoded is not None:
                        entries[key] = decoded[0]
                    else:  # deleted (or overwritten by something that is not a provider)
                        entries.pop(key, None)
                    revision = max(revision, int(item.kv.mod_revision))
                providers = frozenset(entries.values())
                if providers != last:
                    last = providers
                    yield Snapshot(service, providers, revision)
                if end is _CROSSED:
                    yield _CROSSED
                    return
                if end is not None:
                    if not self._closed:
                        yield f"etcd watch lost: {end}" if isinstance(end, str) else (
                            f"etcd watch lost: {type(end).__name__}: {end}")
                    return
        finally:
            pump.cancel()
            await asyncio.wait({pump}, timeout=1.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.cancel(), 1.0)

    @staticmethod
    async def _pump(stream: Any, queue: asyncio.Queue[Any]) -> None:
        """Move the stream's events into ``queue``; then None (ended) or the error."""
        try:
            async for event in stream:
                queue.put_nowait(event)
        except Exception as exc:
            queue.put_nowait(exc)
        else:
            queue.put_nowait(None)

    async def close(self) -> None:
        for kept in list(self._kept):
            await kept.stop()
        self._kept.clear()
        self._closed = True
        clients = [*self._clients.values(), *self._watch_clients.values()]
        self._clients, self._watch_clients = {}, {}
        await asyncio.gather(*(self._close_client(client) for client in clients))
        if self._closing:
            await asyncio.wait(self._closing, timeout=3.0)
