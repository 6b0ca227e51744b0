"""The connection pool on its own, with a fake opener and fake connections (no sockets):
acquisition, reuse, limits, the pool timeout, the wait queue, key separation by SNI and
TLS identity, stale and expired idle connections, retirement, and slots that never
leak whatever fails or is cancelled. The same pool under real sockets is in
test_client.py and test_client_tls.py."""

from __future__ import annotations

import asyncio

import pytest

from tether.client.errors import ConnectError, PoolTimeout
from tether.client.identity import PoolKey, TLSIdentity
from tether.client.pool import ConnectionPool

HTTP = PoolKey("http", "10.0.0.7", 80)
OTHER = PoolKey("http", "10.0.0.8", 80)
TLS = TLSIdentity(verify=True, ca="default")


class FakeConnection:
    """Just what the pool looks at (``PooledConnection``)."""

    def __init__(self, key: PoolKey, number: int) -> None:
        self.key = key
        self.number = number
        self.idle_since = 0.0
        self.slot_released = False
        self.closed = False
        self.peer_closed = False  # the server closed it while it sat idle
        self.clean = True  # its exchange ended cleanly, keep-alive on both sides

    @property
    def reusable(self) -> bool:
        return self.clean and not self.closed

    def is_idle_usable(self) -> bool:
        return not self.closed and not self.peer_closed

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<conn {self.number} {self.key.host}>"


class FakeOpener:
    """Opens fake connections, in order; can be made to fail or to hang."""

    def __init__(self) -> None:
        self.opened: list[FakeConnection] = []
        self.timeouts: list[float | None] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self, key: PoolKey, timeout: float | None) -> FakeConnection:
        self.timeouts.append(timeout)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        conn = FakeConnection(key, len(self.opened))
        self.opened.append(conn)
        return conn


def make_pool(opener: FakeOpener, *, total: int = 10, per_origin: int = 2,
              expiry: float | None = 30.0) -> ConnectionPool[FakeConnection]:
    return ConnectionPool(opener, max_connections=total, max_connections_per_origin=per_origin,
                          keepalive_expiry=expiry)


def held(pool: ConnectionPool[FakeConnection]) -> dict[str, int]:
    return pool.counts()


async def test_a_released_connection_is_reused_most_recent_first() -> None:
    opener = FakeOpener()
    pool = make_pool(opener)
    a = await pool.acquire(HTTP, 1.0, 2.0)
    b = await pool.acquire(HTTP, 1.0, 2.0)
    assert (a.number, b.number) == (0, 1) and opener.timeouts == [2.0, 2.0]
    pool.release(a)
    pool.release(b)
    assert held(pool) == {"idle": 2, "active": 0, "waiting": 0}
    assert await pool.acquire(HTTP, 1.0) is b  # LIFO: the least likely to be stale
    assert await pool.acquire(HTTP, 1.0) is a
    stats = pool.stats
    assert (stats.outgoing_requests, stats.connections_opened, stats.connections_reused) == (
        4, 2, 2)
    assert len(opener.opened) == 2


async def test_fresh_skips_idle_connections() -> None:
    opener = FakeOpener()
    pool = make_pool(opener)
    a = await pool.acquire(HTTP, 1.0)
    pool.release(a)
    b = await pool.acquire(HTTP, 1.0, fresh=True)  # a retry after a stale connection
    assert b is not a and held(pool) == {"idle": 1, "active": 1, "waiting": 0}


@pytest.mark.parametrize("other", [
    PoolKey("https", "10.0.0.7", 443, "b.internal", TLS),  # another SNI name
    PoolKey("https", "10.0.0.7", 443, "a.internal", TLSIdentity(verify=False, ca="default")),
    PoolKey("https", "10.0.0.7", 443, "a.internal", TLSIdentity(verify=True, ca="/ca.pem")),
    PoolKey("https", "10.0.0.7", 443, "a.internal", TLSIdentity(
        verify=True, ca="default", cert=("client.pem",))),
    PoolKey("http", "10.0.0.7", 443),  # same address, no TLS
])
async def test_connections_never_cross_identities(other: PoolKey) -> None:
    """Field report 4: same address, any part of the identity different: never the same
    connection; the same identity: always may."""
    opener = FakeOpener()
    pool = make_pool(opener)
    key = PoolKey("https", "10.0.0.7", 443, "a.internal", TLS)
    a = await pool.acquire(key, 1.0)
    pool.release(a)
    b = await pool.acquire(other, 1.0)
    assert b is not a and b.key == other
    pool.release(b)
    same = PoolKey("https", "10.0.0.7", 443, "a.internal", TLSIdentity(verify=True, ca="default"))
    assert await pool.acquire(same, 1.0) is a  # equal identity, another object: shared
    assert await pool.acquire(other, 1.0) is b
    assert pool.open_to("10.0.0.7", 443) == 2  # one per identity, both to one address


async def test_the_per_origin_limit_holds_and_the_pool_timeout_names_it() -> None:
    opener = FakeOpener()
    pool = make_pool(opener, per_origin=2)
    await pool.acquire(HTTP, 1.0)
    await pool.acquire(HTTP, 1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PoolTimeout, match="2/2 for this connection key") as info:
        await pool.acquire(HTTP, 0.05)
    assert 0.04 <= loop.time() - started < 1.0
    assert info.value.phase == "pool" and info.value.target == "http://10.0.0.7:80"
    assert held(pool) == {"idle": 0, "active": 2, "waiting": 0}  # the waiter is gone
    assert len(opener.opened) == 2
    other = await pool.acquire(OTHER, 0.05)  # another key has its own limit
    assert other.key == OTHER


async def test_waiters_are_served_first_come_first_served() -> None:
    opener = FakeOpener()
    pool = make_pool(opener, per_origin=1)
    a = await pool.acquire(HTTP, 1.0)
    first = asyncio.ensure_future(pool.acquire(HTTP, 5.0))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(pool.acquire(HTTP, 5.0))
    await asyncio.sleep(0)
    assert held(pool)["waiting"] == 2
    pool.release(a)  # handed straight to the first waiter, never idle
    assert await first is a
    assert not second.done()
    pool.release(a)
    assert await second is a
    assert len(opener.opened) == 1


async def test_a_discarded_connection_frees_its_slot_for_a_waiter() -> None:
    opener = FakeOpener()
    pool = make_pool(opener, per_origin=1)
    a = await pool.acquire(HTTP, 1.0)
    waiter = asyncio.ensure_future(pool.acquire(HTTP, 5.0))
    await asyncio.sleep(0)
    a.clean = False  # e.g. a half-read response: release() must not keep it
    pool.release(a)
    b = await waiter
    assert a.closed and b is not a and pool.open_to("10.0.0.7", 80) == 1


async def test_the_total_limit_closes_an_idle_connection_of_another_origin() -> None:
    opener = FakeOpener()
    pool = make_pool(opener, total=1, per_origin=1)
    a = await pool.acquire(HTTP, 1.0)
    pool.release(a)
    b = await pool.acquire(OTHER, 0.05)  # no room: a (idle, another origin) makes room
    assert a.closed and b.key == OTHER
    with pytest.raises(PoolTimeout, match="1/1 open"):
        await pool.acquire(HTTP, 0.05)  # b is busy: nothing to close
    pool.release(b)
    waiter = asyncio.ensure_future(pool.acquire(HTTP, 1.0))
    await asyncio.sleep(0)
    assert (await waiter).key == HTTP and b.closed


async def test_a_connection_the_server_closed_while_idle_is_never_handed_out() -> None:
    opener = FakeOpener()
    pool = make_pool(opener)
    a = await pool.acquire(HTTP, 1.0)
    pool.release(a)
    a.peer_closed = True
    b = await pool.acquire(HTTP, 1.0)
    assert b is not a and a.closed
    assert pool.open_to("10.0.0.7", 80) == 1  # a's slot went back


async def test_idle_connections_expire() -> None:
    opener = FakeOpener()
    pool = make_pool(opener, expiry=0.02)
    a = await pool.acquire(HTTP, 1.0)
    pool.release(a)
    await asyncio.sleep(0.05)
    b = await pool.acquire(HTTP, 1.0)
    assert b is not a and a.closed


async def test_a_failed_or_cancelled_open_gives_its_slot_back() -> None:
    opener = FakeOpener()
    pool = make_pool(opener, per_origin=1)
    opener.fail = ConnectError("refused")
    with pytest.raises(ConnectError):
        await pool.acquire(HTTP, 1.0)
    assert pool.open_to("10.0.0.7", 80) == 0
    opener.fail = None
    opener.gate = asyncio.Event()  # the next connect hangs
    opening = asyncio.ensure_future(pool.acquire(HTTP, 1.0))
    await asyncio.sleep(0.01)
    assert pool.open_to("10.0.0.7", 80) == 1  # counted while connecting
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    assert pool.open_to("10.0.0.7", 80) == 0
    opener.gate.set()
    assert (await pool.acquire(HTTP, 1.0)).number == 0


async def test_a_cancelled_waiter_leaks_nothing() -> None:
    opener = FakeOpener()
    pool = make_pool(opener, per_origin=1)
    a = await pool.acquire(HTTP, 1.0)
    waiter = asyncio.ensure_future(pool.acquire(HTTP, 5.0))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    pool.release(a)
    assert held(pool) == {"idle": 1, "active": 0, "waiting": 0}
    assert await pool.acquire(HTTP, 0.05) is a


async def test_retired_addresses_are_drained_then_closed_and_prune_drops_dead_ones() -> None:
    opener = FakeOpener()
    pool = make_pool(opener)
    busy = await pool.acquire(HTTP, 1.0)
    idle = await pool.acquire(HTTP, 1.0)
    pool.release(idle)
    other = await pool.acquire(OTHER, 1.0)
    pool.release(other)
    pool.retire("10.0.0.7", 80)
    assert idle.closed and not busy.closed and not other.closed
    pool.release(busy)  # in flight when retired: it finished, and is not kept
    assert busy.closed and pool.open_to("10.0.0.7", 80) == 0
    pool.unretire("10.0.0.7", 80)
    again = await pool.acquire(HTTP, 1.0)
    pool.release(again)
    assert pool.counts()["idle"] == 2  # pooled again

    again.peer_closed = True  # e.g. the provider was killed
    pool.prune("10.0.0.8", 80)  # another address: nothing to do
    assert not again.closed
    pool.prune("10.0.0.7", 80)
    assert again.closed and pool.open_to("10.0.0.7", 80) == 0
    assert pool.open_to("10.0.0.8", 80) == 1 and not other.closed


async def test_close_closes_idle_connections_and_cancels_waiters() -> None:
    opener = FakeOpener()
    pool = make_pool(opener, per_origin=1)
    a = await pool.acquire(HTTP, 1.0)
    b = await pool.acquire(OTHER, 1.0)
    pool.release(b)
    waiter = asyncio.ensure_future(pool.acquire(HTTP, 5.0))
    await asyncio.sleep(0)
    await pool.aclose()
    assert b.closed
    with pytest.raises(asyncio.CancelledError):
        await waiter
    pool.release(a)  # a request that finishes after the close: closed, not kept
    assert a.closed and pool.counts() == {"idle": 0, "active": 0, "waiting": 0}
