"""The supervisor <-> worker control channel: newline-delimited JSON over a socketpair.

Worker -> supervisor: ``ready``, ``heartbeat`` (requests served, in flight),
``recycle`` (max requests reached), ``stopped`` (what the stop drained and cancelled).
Supervisor -> worker: ``drain`` (leave while the others keep serving: a reload or
a recycle), ``stop`` (the whole service stops: also serve what the kernel queued),
``force`` (cancel what is still running, now).

Must never block either side: writes are buffered by asyncio, and a closed channel
on the worker side means the supervisor is gone, which the worker treats as ``stop``.
A worker whose supervisor is already gone before it starts accepting never starts
(see :func:`supervisor_gone`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from typing import Any

#: environment variables the supervisor sets for a worker process
ENV_CONFIG = "TETHER_WORKER_CONFIG"
ENV_LISTEN_FDS = "TETHER_WORKER_LISTEN_FDS"
ENV_CONTROL_FD = "TETHER_WORKER_CONTROL_FD"
ENV_WORKER_ID = "TETHER_WORKER_ID"
ENV_SUPERVISOR_PID = "TETHER_SUPERVISOR_PID"
#: the worker's process title (tether.proctitle; the worker's copy of the config
#: lacks the service name)
ENV_WORKER_TITLE = "TETHER_WORKER_TITLE"

Message = dict[str, Any]


def supervisor_gone() -> bool:
    """True when the supervisor that started this worker process has exited.

    A worker spawned just before its supervisor was killed (``kill -9`` while it
    replaced a crashed worker) would otherwise start accepting on the inherited
    sockets, serve whatever arrives until it reads the closed control channel, and
    answer for a service that is no longer there. The parent pid is the cheap and
    certain test: once the supervisor exits, the worker is re-parented.
    """
    expected = os.environ.get(ENV_SUPERVISOR_PID)
    return expected is not None and os.getppid() != int(expected)


class ControlChannel:
    """One end of the control socketpair, as asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> ControlChannel:
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    def send(self, mtype: str, **fields: Any) -> None:
        if self.writer.is_closing():
            return
        fields["type"] = mtype
        self.writer.write(json.dumps(fields).encode() + b"\n")

    async def receive(self) -> Message | None:
        """The next message, or None once the other side has gone."""
        try:
            line = await self.reader.readline()
        except (ConnectionError, OSError):
            return None
        if not line:
            return None
        try:
            message = json.loads(line)
        except ValueError:
            return {"type": "invalid", "line": line[:200].decode("latin-1")}
        return message if isinstance(message, dict) else {"type": "invalid"}

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
