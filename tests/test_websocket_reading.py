"""How an open WebSocket session reads (``server/websocket_reader.py``): straight into
one buffer that every session of a worker shares, on asyncio's and uvloop's
transports, plain and TLS. Concurrent sessions sending messages larger than the
buffer, small ones and fragmented ones get each of their own back whole: nothing of
one session's bytes ends up in another's.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import pytest
import trustme
import uvloop
import websockets

from tests.apps import ws_app
from tests.support import serve
from tether.server.websocket_reader import READ_BUFFER_SIZE, SessionReader

SESSIONS = 4
SIZES = (1, 1024, 65536, 2 * READ_BUFFER_SIZE + 7)  # the last takes several reads
TIMEOUT = 60.0  # seconds for the whole exchange, on a loaded machine


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 (one file, key and chain) and a client trusting it."""
    ca = trustme.CA()
    pem = tmp_path_factory.mktemp("tls") / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return pem, client


async def _exchange(pem: Path | None, client: ssl.SSLContext | None) -> None:
    certfile = keyfile = None if pem is None else str(pem)
    async with serve(ws_app.app, ssl_certfile=certfile, ssl_keyfile=keyfile) as server:
        url = f"{'ws' if client is None else 'wss'}://127.0.0.1:{server.port}/echo"
        opened = asyncio.Event()
        ready = 0

        async def session(number: int) -> None:
            nonlocal ready
            # odd sessions negotiate permessage-deflate: its frames go through the buffer too
            compression = "deflate" if number % 2 else None
            async with websockets.connect(url, ssl=client, max_size=None,
                                          compression=compression) as ws:
                ready += 1
                if ready == SESSIONS:
                    # every session open: each connection now reads into the shared buffer
                    readers = [c.transport.get_protocol()
                               for c in server.worker.state.connections]
                    assert len(readers) == SESSIONS
                    assert all(isinstance(r, SessionReader) for r in readers), readers
                    opened.set()
                await opened.wait()  # every session open: their reads interleave
                for size in SIZES:
                    data = bytes([number]) + os.urandom(size - 1) if size > 1 else bytes([number])
                    await ws.send(data)
                    assert await ws.recv() == data, f"session {number}, {size} bytes"
                await ws.send(["frag", "mented", f" {number}"])
                assert await ws.recv() == f"fragmented {number}"

        await asyncio.wait_for(asyncio.gather(*(session(n) for n in range(SESSIONS))), TIMEOUT)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("secure", [False, True], ids=["plain", "tls"])
def test_concurrent_sessions_read_through_the_shared_buffer(
    tls: tuple[Path, ssl.SSLContext], loop: str, secure: bool
) -> None:
    pem, client = tls if secure else (None, None)
    if loop == "uvloop":
        uvloop.run(_exchange(pem, client))
    else:
        asyncio.run(_exchange(pem, client))
