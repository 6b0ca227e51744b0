"""Noticing that a worker is at its file-descriptor limit, which no protocol sees.

At ``ulimit -n`` the event loop can only refuse new connections: libuv (uvloop)
accepts each one with a reserved descriptor and closes it at once, asyncio stops
accepting for a second; either way the client sees a reset or a stall and nothing
is logged. This watch asks the kernel directly, at most once a second from the
worker's sweep: ``dup()`` of a descriptor the watch holds (``/dev/null``, opened
once) fails with ``EMFILE`` exactly when no descriptor is left (libuv keeps its spare
one open again after each refusal). It says so once per :data:`LOG_INTERVAL` with
how many checks found the limit, and counts every such check
(``tether_fd_limit_reached_total``). Must never hold more than its one descriptor
between probes.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
from typing import Final

logger = logging.getLogger("tether.server")

#: seconds between two probes
CHECK_INTERVAL: Final = 1.0
#: seconds between two log lines while the limit persists
LOG_INTERVAL: Final = 10.0


def soft_limit() -> int:
    """This process's RLIMIT_NOFILE soft limit."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def at_limit(fd: int) -> bool:
    """True when no file descriptor can be opened now (``fd`` is one we hold)."""
    try:
        probe = os.dup(fd)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return True
        raise
    os.close(probe)
    return False


class FdLimitWatch:
    """Probes once per :data:`CHECK_INTERVAL`; logs once per :data:`LOG_INTERVAL`.
    ``close()`` it when the worker stops."""

    def __init__(self) -> None:
        # Its own descriptor: the listening sockets close during a stop while the
        # sweep still runs.
        self.fd: int | None = os.open(os.devnull, os.O_RDONLY)
        self.next_check = 0.0
        self.next_log = 0.0
        #: probes that found the limit since the last log line
        self.unlogged = 0

    def check(self, now: float, connections: int) -> bool:
        """Probe if it is time; True when this probe found the limit (count it)."""
        if now < self.next_check or self.fd is None:
            return False
        self.next_check = now + CHECK_INTERVAL
        if not at_limit(self.fd):
            return False
        self.unlogged += 1
        if now >= self.next_log:
            logger.error(
                "at the file-descriptor limit (ulimit -n %d, %d client connections open): "
                "new connections are refused; at the limit in %d check(s) since the last "
                "report. Raise the limit or lower the load (docs/security.md)",
                soft_limit(), connections, self.unlogged,
            )
            self.unlogged = 0
            self.next_log = now + LOG_INTERVAL
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
