"""Listening sockets: bind TCP or a Unix socket, or adopt an inherited descriptor.

The process that binds is the one that owns the backlog (field report 3, docs/incidents.md): workers
only ever accept. Must never silently pick another address than the one asked for.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from tether.errors import TetherError


class BindError(TetherError):
    """A listening socket could not be created; the message names the address."""


def bind_tcp(host: str, port: int, backlog: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(f"cannot resolve --host {host!r}: {exc}") from exc
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def bind_unix(path: str, backlog: int) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket left by a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on unix socket {path!r}: {exc.strerror or exc}") from exc
    return sock


def adopt_fd(fd: int) -> socket.socket:
    """Wrap an inherited listening descriptor (``--fd``, systemd socket activation)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindError(f"--fd {fd} is not a usable socket: {exc.strerror or exc}") from exc
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise BindError(f"--fd {fd} is not a stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise BindError(f"--fd {fd} is not a listening socket (call listen() first)")
    return sock


def describe(sock: socket.socket, *, tls: bool = False) -> str:
    """``http(s)://host:port`` or ``unix:path`` for log lines."""
    name = sock.getsockname()
    scheme = "https" if tls else "http"
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"{scheme}://[{name[0]}]:{name[1]}"
    return f"{scheme}://{name[0]}:{name[1]}"
