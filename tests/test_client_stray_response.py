"""Issue 13: a stray upstream response never reaches anyone.

An upstream (broken, or answering a request that was smuggled past it) writes a
complete response and, in the same write, a second one. ``tether.Client`` sends one
request at a time on a connection (it never pipelines), so whatever follows a
complete response is not an answer to anything: the client delivers the first
response exactly as sent and closes the connection; nothing of the second
response reaches the first, a later request, or the pool.

nginx does the same: since 1.19.1 ("Proxy: drop extra data sent by upstream",
"Proxy: detection of data after final chunk", ticket #1695) it passes on exactly
the framed response, drops the extra bytes with a warning, and disables keepalive
on that upstream connection; a cached idle upstream connection on which anything
arrives is closed by ngx_http_upstream_keepalive_module. Before, a tether proxy in
front of such an upstream answered the 302 to its client, or 500 for every request
("ASGI application sent 3 body bytes with Content-Length 0": the second head's
headers had been merged into the first).

Raw bytes on real loopback sockets, as a hostile upstream would send them: a raw
server on the test's event loop for ``tether.Client``, a raw server thread behind a
real ``tether proxy`` process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

import tether
from tests.test_client import wait_until
from tests.test_proxy import HTTP_TIMEOUT, RawUpstream, proxy
from tether.client import RemoteProtocolError

FIRST = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
STRAY = (b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\n"
         b"Content-Length: 0\r\n\r\n")

#: the headers of FIRST, exactly as the caller must see them
FIRST_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "3")]

Answer = Callable[[int, bytes], bytes]  # (request number over all connections, method)


class Upstream:
    """A raw HTTP/1.1 server on the test's own loop: request n (counted over all
    connections) gets ``answer(n, method)`` written in ONE write. Counts connections and
    the ones the client hung up on."""

    def __init__(self, answer: Answer, *, after: bytes = b"", after_delay: float = 0.0) -> None:
        self.answer = answer
        self.after, self.after_delay = after, after_delay  # written later, unasked
        self.requests = 0
        self.connections = 0
        self.hung_up = 0  # connections the client closed
        self.url = ""
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()  # its handler sees the end and returns
        await asyncio.gather(*self._handlers)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method = head.split(b" ", 1)[0]
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length" and int(value):
                        await reader.readexactly(int(value))
                n, self.requests = self.requests, self.requests + 1
                writer.write(self.answer(n, method))
                await writer.drain()
                if self.after:
                    await asyncio.sleep(self.after_delay)
                    writer.write(self.after)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.hung_up += 1
        finally:
            self._writers.discard(writer)
            writer.close()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def client_log() -> Iterator[list[logging.LogRecord]]:
    """Records of the ``tether.client`` logger (whatever the root logger is set to)."""
    handler = Records()
    log = logging.getLogger("tether.client")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


def stray_records(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if "after a complete response" in r.getMessage()]


# (method, what the upstream answers, status, body the caller must get, headers)
CASES = {
    "content-length": (b"GET", FIRST, 200, b"ok\n", FIRST_HEADERS),
    "chunked": (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nok\n\r\n0\r\n\r\n", 200, b"ok\n", [("Transfer-Encoding", "chunked")]),
    "204": (b"GET", b"HTTP/1.1 204 No Content\r\nX-First: yes\r\n\r\n", 204, b"",
            [("X-First", "yes")]),
    "304": (b"GET", b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n", 304, b"",
            [("ETag", '"a"')]),
    "100 continue": (b"GET", b"HTTP/1.1 100 Continue\r\n\r\n" + FIRST, 200, b"ok\n",
                     FIRST_HEADERS),
    # HEAD: the Content-Length describes the GET body, none follows the head.
    "head": (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", 200, b"",
             [("Content-Length", "3")]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("stray", [STRAY, b"ok\n"], ids=["a 302", "three bytes"])
async def test_a_stray_response_in_the_same_write_is_dropped_with_its_connection(
    case: str, stray: bytes, client_log: list[logging.LogRecord],
) -> None:
    """Request 0 is answered by a response and a stray in one write; requests 1 and 2
    by the response alone. The caller gets the first response as sent every time; the
    poisoned connection is closed (request 1 opens a new one), the clean one is
    reused (request 2): informational, HEAD, 204 and 304 responses keep working."""
    method, first, status, body, headers = CASES[case]

    def answer(n: int, got: bytes) -> bytes:
        assert got == method
        return first + stray if n == 0 else first

    async with Upstream(answer) as upstream, tether.Client(timeout=5) as client:
        for i in range(3):
            r = await client.request(method.decode(), upstream.url)
            assert (r.status_code, r.content) == (status, body), i
            assert r.headers.items() == headers, i
            assert "location" not in r.headers
            if i == 0:
                await wait_until(lambda: upstream.hung_up == 1)  # closed by the client
        stats = client.stats()
        assert (stats["connections_opened"], stats["connections_reused"]) == (2, 1)
        assert upstream.connections == 2
        assert stats["idle"] == 1 and stats["active"] == 0
    assert len(stray_records(client_log)) == 1, client_log
    assert stray_records(client_log)[0].levelno == logging.WARNING


async def test_a_stray_with_connection_close_is_dropped_and_logged(
    client_log: list[logging.LogRecord],
) -> None:
    """After a response saying Connection: close the parser refuses any byte: still the
    first response, once logged, no error."""
    first = FIRST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    async with Upstream(lambda n, m: first + STRAY) as upstream, tether.Client() as client:
        for _ in range(2):
            r = await client.get(upstream.url)
            assert (r.status_code, r.text, "location" in r.headers) == (200, "ok\n", False)
        assert client.stats()["connections_opened"] == 2
    assert len(stray_records(client_log)) == 2  # once per event


async def test_a_stray_head_cut_short_never_answers_the_next_request(
    client_log: list[logging.LogRecord],
) -> None:
    """The stray's head is left unfinished in the first write (no callback of the
    parser fires for it yet). Kept, the connection's next response would complete
    that head: the next request got the 302, with the real answer's Content-Length."""
    stray = b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\nX-Pad: "

    async with Upstream(lambda n, m: FIRST + stray if n == 0 else FIRST) as upstream, \
            tether.Client(timeout=5) as client:
        for _ in range(3):
            r = await client.get(upstream.url)
            assert (r.status_code, r.text, r.headers.items()) == (200, "ok\n", FIRST_HEADERS)
        assert client.stats()["connections_opened"] == 2
    assert len(stray_records(client_log)) == 1


async def test_bytes_on_an_idle_connection_close_it(
    client_log: list[logging.LogRecord],
) -> None:
    """A response nobody asked for, arriving while the connection sits in the pool:
    the connection is closed at once (logged once), and the next request opens a new
    one and gets its own answer."""
    async with Upstream(lambda n, m: FIRST, after=STRAY, after_delay=0.05) as upstream, \
            tether.Client(timeout=5) as client:
        r = await client.get(upstream.url)
        assert (r.status_code, r.text) == (200, "ok\n")
        await wait_until(lambda: upstream.hung_up == 1)
        r = await client.get(upstream.url)
        assert (r.status_code, r.text, r.headers.items()) == (200, "ok\n", FIRST_HEADERS)
        assert client.stats()["connections_opened"] == 2
    idle = [r for r in client_log if "idle connection" in r.getMessage()]
    assert len(idle) >= 1 and all(r.levelno == logging.INFO for r in idle), client_log
    assert not stray_records(client_log)


async def test_an_early_response_with_a_stray_is_the_response(
    client_log: list[logging.LogRecord],
) -> None:
    """The upstream answers a streamed upload before reading it (allowed: an early
    response) and a stray follows in the same write. The caller gets the first
    response; the rest of the upload is not sent on that connection."""
    hung_up = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(FIRST + STRAY)
        await writer.drain()
        while await reader.read(65536):
            pass
        hung_up.set()
        writer.close()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield b"x" * 1024
            await asyncio.sleep(0.01)

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    async with server, tether.Client(timeout=5) as client:
        r = await client.post(url, content=body())
        assert (r.status_code, r.text, r.headers.items()) == (200, "ok\n", FIRST_HEADERS)
        await asyncio.wait_for(hung_up.wait(), 5)
        assert client.stats()["idle"] == 0
    assert len(stray_records(client_log)) == 1


async def test_through_the_proxy_every_client_gets_the_first_response() -> None:
    """A real ``tether proxy`` in front of the hostile upstream: every request through
    it gets the upstream's first response (not the 302, not a 500), and the proxy logs
    the dropped bytes."""
    def respond(method: str, target: str) -> bytes:
        if target == "*" or target.endswith("/healthz"):  # the proxy's health probe
            return FIRST
        return FIRST + STRAY

    with RawUpstream(respond) as raw, proxy("--route", f"/={raw.address}") as px:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            for i in range(6):
                r = await client.get(f"{px.url}/page/{i}")
                assert (r.status_code, r.text) == (200, "ok\n"), (i, r.status_code, r.text)
                assert "location" not in r.headers
                assert r.headers.get_list("content-length") == ["3"]
            # concurrent clients too: none gets anything of another exchange
            many = await asyncio.gather(*(client.get(f"{px.url}/c/{i}") for i in range(20)))
            assert {(r.status_code, r.text) for r in many} == {(200, "ok\n")}
        assert sum(1 for m, t in raw.requests if t.startswith(("/page/", "/c/"))) == 26
        px.process.wait_for_line("after a complete response", timeout=5)


async def test_a_switching_protocols_nobody_asked_for_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """tether never asks to upgrade (the proxy drops Upgrade), so a 101 is a broken or
    hostile server and what follows it is not HTTP: an error before any response is
    handed on (a proxy answers 502), the connection closed, no traceback in the log
    (the parser's HttpParserUpgrade used to escape data_received)."""
    switch = (b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
              b"Upgrade: websocket\r\n\r\n")
    async with Upstream(lambda n, m: switch + STRAY if n == 0 else FIRST) as upstream, \
            tether.Client(timeout=5) as client:
        with pytest.raises(RemoteProtocolError, match="101 Switching Protocols"):
            await client.get(upstream.url)
        r = await client.get(upstream.url)
        assert (r.status_code, r.text, r.headers.items()) == (200, "ok\n", FIRST_HEADERS)
        assert client.stats()["connections_opened"] == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records
