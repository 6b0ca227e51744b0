"""A Cluster driven through a fake :class:`~tether.client.cluster.ClientLink` (no
sockets): what each failure of an attempt does to the provider and to the request.
The same cluster against real provider processes is in test_clusters.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import wait_for
from tether.client import Cluster, ClusterConfig, NoProviderAvailable
from tether.client.cluster import ClientLink
from tether.client.errors import ConnectError, LocalProtocolError, PoolTimeout, ReadTimeout
from tether.client.models import Headers, Origin, Response

A, B = "10.0.0.1:80", "10.0.0.2:80"


class FakeClient:
    """Answers per provider: a status, or an exception to raise. Probes answer 200
    unless told otherwise, and are counted apart from requests."""

    def __init__(self) -> None:
        self.answers: dict[str, int | Exception] = {}
        self.healthy: dict[str, bool] = {}
        self.sent: Counter[str] = Counter()
        self.probed: Counter[str] = Counter()
        self.retired: list[tuple[str, int]] = []
        self.targets: list[str] = []

    def link(self) -> ClientLink:
        return ClientLink(send=self.send, deadline_scope=self.deadline_scope,
                          probe=self.probe, retire=self.retire, probing=self.probing)

    async def send(
        self, method: str, origin: Origin, target: str, url: str, **options: Any
    ) -> Response:
        address = f"{origin.host}:{origin.port}"
        assert url.split("/")[2] == address  # (the URL only names the request)
        self.targets.append(target)
        self.sent[address] += 1
        answer = self.answers.get(address, 200)
        if isinstance(answer, Exception):
            raise answer
        return Response(answer, Headers({"content-length": "0"}), url=url, method=method,
                        content=b"")

    @contextlib.asynccontextmanager
    async def deadline_scope(self) -> AsyncIterator[None]:
        yield

    async def probe(self, origin_url: str, target: str, timeout: float) -> int:
        address = origin_url.split("/")[2]
        self.probed[address] += 1
        if not self.healthy.get(address, True):
            raise ConnectError("refused", target=address, phase="connect")
        return 200

    def retire(self, host: str, port: int) -> None:
        self.retired.append((host, port))

    def probing(self, host: str, port: int) -> None:
        pass


async def alive_cluster(fake: FakeClient, providers: list[str], **options: Any) -> Cluster:
    cluster = Cluster(fake.link(), "svc", providers=providers, **options)
    await cluster.wait_ready()
    await wait_for(lambda: len(cluster.machine.alive()) == len(providers), 2, "all alive")
    return cluster


async def test_pool_timeouts_never_touch_the_provider() -> None:
    """Issue 12, bug 1, through the cluster's own code path: a request that never left
    the client fails with PoolTimeout (after its retries), never NoProviderAvailable,
    and the provider is neither ejected nor probed because of it."""
    fake = FakeClient()
    config = ClusterConfig(ejection_failures=1, max_ejection_percent=100,
                           heartbeat_interval=60.0)
    cluster = await alive_cluster(fake, [A], config=config)
    probes = fake.probed[A]
    fake.answers[A] = PoolTimeout("no slot", target=A, phase="pool")
    try:
        for _ in range(20):
            with pytest.raises(PoolTimeout):
                await cluster.get("/")
        assert cluster.machine.alive() == (A,)
        assert cluster.stats()["ejections"] == 0
        assert fake.probed[A] == probes  # no probe was sent on its account
        assert cluster.last_error.get(A) is None  # and nothing blamed on it
        fake.answers[A] = 200
        assert (await cluster.get("/")).status_code == 200
    finally:
        await cluster.aclose()


async def test_a_failed_connect_takes_the_provider_out_and_goes_elsewhere() -> None:
    fake = FakeClient()
    cluster = await alive_cluster(fake, [A, B], config=ClusterConfig(heartbeat_interval=60.0))
    fake.answers[A] = ConnectError("refused", target=A, phase="connect")
    fake.healthy[A] = False
    try:
        for _ in range(10):  # POST too: it never reached A
            assert (await cluster.post("/", content=b"x")).status_code == 200
        assert cluster.machine.alive() == (B,)
        assert {a: state for a, state, *_ in cluster.providers()} == {
            A: "retrying", B: "alive"}
        assert isinstance(cluster.last_error[A], ConnectError)
    finally:
        await cluster.aclose()


async def test_a_sent_request_that_failed_counts_is_probed_and_resent_only_if_safe() -> None:
    fake = FakeClient()
    config = ClusterConfig(ejection_failures=2, max_ejection_percent=50,
                           heartbeat_interval=60.0)
    cluster = await alive_cluster(fake, [A, B], config=config, balancer="round_robin")
    fake.answers[A] = ReadTimeout("slow", target=A, phase="read")
    try:
        probes = fake.probed[A]
        responses = [await cluster.get("/") for _ in range(4)]  # idempotent: resent to B
        assert {r.status_code for r in responses} == {200}
        await wait_for(lambda: fake.probed[A] > probes, 2, "a probe of the failing provider")
        assert cluster.stats()["ejections"] == 1  # 2 failures in a row, under the cap
        assert cluster.machine.alive() == (B,)

        fake.answers[B] = ReadTimeout("slow", target=B, phase="read")
        sent = fake.sent.copy()
        with pytest.raises(ReadTimeout):
            await cluster.post("/", content=b"x")  # not idempotent: never sent twice
        assert fake.sent - sent == Counter({B: 1})
    finally:
        await cluster.aclose()


async def test_503_is_resent_elsewhere_500_is_the_answer_both_count() -> None:
    fake = FakeClient()
    config = ClusterConfig(ejection_failures=100, heartbeat_interval=60.0)
    cluster = await alive_cluster(fake, [A, B], config=config)
    fake.answers[A] = 503
    try:
        for _ in range(10):
            assert (await cluster.get("/")).status_code == 200  # A's 503s went to B
        fake.answers[A] = 500
        sent_before = fake.sent[A]
        statuses = Counter([(await cluster.get("/")).status_code for _ in range(20)])
        assert statuses[500] == fake.sent[A] - sent_before >= 1  # returned, not resent
        assert statuses[200] == 20 - statuses[500]
        # every answer of A was a 5xx, and every one counted
        assert cluster.machine.records[A].consecutive_failures == fake.sent[A]
    finally:
        await cluster.aclose()


async def test_nobody_alive_fails_at_once() -> None:
    fake = FakeClient()
    fake.healthy[A] = False
    cluster = Cluster(fake.link(), "svc", providers=[A], probe_timeout=0.2)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(NoProviderAvailable, match="retrying"):
            await cluster.get("/")  # waits for the first probe's verdict, no longer
        assert asyncio.get_running_loop().time() - started < 1.0
        assert fake.sent[A] == 0
    finally:
        await cluster.aclose()


_TARGET_PIECES = ["*", "@", ":", "/", "//", "?", "#", "%40", "127.0.0.1", "[::1]", "9",
                  "http://", "evil.example", " ", "\t", "\r\n", "\x00", "..", "a", "~"]


@given(path=st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(_TARGET_PIECES), max_size=8).map("".join),
))
@settings(max_examples=300, deadline=None)
def test_no_path_makes_a_cluster_connect_anywhere_but_its_providers(path: str) -> None:
    """Issue 13: whatever path a caller (the proxy, relaying a client's target) gives,
    requests go only to the providers' own origins, the target on the wire is
    origin-form (or ``*``), and a path that is not refused before any provider is
    tried, so it counts against none."""

    async def scenario() -> None:
        fake = FakeClient()
        cluster = await alive_cluster(fake, ["127.0.0.1:8001", "127.0.0.1:8002"])
        try:
            try:
                await cluster.request("GET", path)
            except LocalProtocolError:
                assert not fake.sent  # refused before any provider was tried
            else:
                assert set(fake.sent) <= {"127.0.0.1:8001", "127.0.0.1:8002"}
                (target,) = fake.targets
                assert target == "*" or target.startswith("/")
                assert not any(c in target for c in " \t\r\n\x00#")
            for record in cluster.machine.records.values():
                assert record.consecutive_failures == 0
        finally:
            await cluster.aclose()

    asyncio.run(scenario())
