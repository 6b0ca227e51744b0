"""Plain request/response models for the client: headers, timeouts, URLs, responses.

Must never do I/O except through the connection a streaming response holds.
"""

from __future__ import annotations

import json as jsonlib
import re
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass
from typing import Any, Final, TypeAlias
from urllib.parse import urlencode, urlsplit

from tether.client.errors import HTTPStatusError, LocalProtocolError, StreamConsumed

BodyReader: TypeAlias = "Callable[[], Awaitable[bytes | None]]"
HeaderTypes: TypeAlias = "Mapping[str, str] | Iterable[tuple[str, str]] | Headers | None"
Content: TypeAlias = "bytes | str | Iterable[bytes] | AsyncIterable[bytes] | None"


class Headers:
    """Case-insensitive, multi-valued HTTP headers that keep their order."""

    __slots__ = ("_items",)

    def __init__(self, headers: HeaderTypes = None) -> None:
        self._items: list[tuple[str, str]] = []
        if headers is None:
            return
        items = headers.items() if isinstance(headers, Mapping | Headers) else headers
        for name, value in items:
            self._items.append((str(name), str(value)))

    @classmethod
    def from_raw(cls, items: list[tuple[str, str]]) -> Headers:
        """Wrap an already decoded list without copying (the response path)."""
        headers = cls()
        headers._items = items
        return headers

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def get(self, name: str, default: str | None = None) -> str | None:
        lname = name.lower()
        values = [v for k, v in self._items if k.lower() == lname]
        return ", ".join(values) if values else default

    def get_list(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self._items if k.lower() == lname]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: str) -> None:
        lname = name.lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != lname]
        self._items.append((name, value))

    def __delitem__(self, name: str) -> None:
        lname = name.lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != lname]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(k.lower() == name.lower() for k, _ in self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return sorted((k.lower(), v) for k, v in self._items) == sorted(
            (k.lower(), v) for k, v in other._items
        )

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass(frozen=True, slots=True)
class Timeout:
    """Per-phase timeouts in seconds; None means no limit for that phase."""

    connect: float | None = 5.0
    read: float | None = 5.0
    write: float | None = 5.0
    pool: float | None = 5.0

    @classmethod
    def of(cls, value: float | Timeout | None) -> Timeout:
        """``5.0`` -> every phase 5 s; ``None`` -> no limits; a Timeout as is."""
        if isinstance(value, Timeout):
            return value
        return cls(value, value, value, value)


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


#: origins already parsed, by "scheme://authority" (a client talks to few of them)
_ORIGINS: dict[str, Origin] = {}
_ORIGINS_MAX: Final = 1024
#: what must never reach the request line: it would end or split it
_BAD_TARGET: Final = re.compile(r"[\x00-\x20\x7f]")


def _origin(prefix: str, url: str) -> Origin:
    origin = _ORIGINS.get(prefix)
    if origin is not None:
        return origin
    parts = urlsplit(prefix)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise LocalProtocolError(f"unsupported URL scheme {parts.scheme!r} in {url!r}")
    if not parts.hostname:
        raise LocalProtocolError(f"URL has no host: {url!r}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise LocalProtocolError(f"invalid port in {url!r}") from exc
    if len(_ORIGINS) >= _ORIGINS_MAX:
        _ORIGINS.clear()
    origin = _ORIGINS[prefix] = Origin(scheme, parts.hostname, port)
    return origin


def parse_url(url: str, params: Mapping[str, str] | None = None) -> tuple[Origin, str]:
    """Split an absolute URL into its origin and the request target (path + query;
    the fragment is dropped)."""
    start = url.find("://")
    if start < 0:
        raise LocalProtocolError(f"unsupported URL {url!r}: expected http:// or https://")
    end = len(url)
    for delimiter in "/?#":
        i = url.find(delimiter, start + 3)
        if 0 <= i < end:
            end = i
    origin = _origin(url[:end].strip(), url)
    path, _, query = url[end:].partition("#")[0].partition("?")
    target = path or "/"
    if params:
        extra = urlencode(params)
        query = f"{query}&{extra}" if query else extra
    if query:
        target = f"{target}?{query}"
    if _BAD_TARGET.search(target):
        raise LocalProtocolError(f"URL has whitespace or control characters: {url!r}")
    return origin, target


def origin_form(path: str, params: Mapping[str, str] | None = None) -> str:
    """The request target for a path sent to an origin chosen apart from it (a
    cluster's provider, a proxy's upstream): ``/path?query``, or ``*`` (OPTIONS).

    The path is never parsed as a URL, so nothing in it can name a host: glued to an
    address as a string, ``*@127.0.0.1:9/secret`` made the provider's address the
    userinfo of a URL pointing elsewhere (issue 13). Anything that is not
    origin-form raises :class:`LocalProtocolError`; the fragment is dropped.
    """
    if path[:1] != "/" and path != "*":
        raise LocalProtocolError(
            f"request path must be origin-form ('/...') or '*', not {path[:64]!r}"
        )
    target = path.partition("#")[0] if "#" in path else path
    if params:
        extra = urlencode(params)
        target = f"{target}&{extra}" if "?" in target else f"{target}?{extra}"
    if _BAD_TARGET.search(target):
        raise LocalProtocolError(f"request path has whitespace or control characters: "
                                 f"{path[:64]!r}")
    return target


def encode_body(
    content: Content = None,
    data: Mapping[str, Any] | None = None,
    json: Any = None,
) -> tuple[bytes | Iterable[bytes] | AsyncIterable[bytes] | None, str | None]:
    """Return (body, content-type) for the three ways a caller can give a body."""
    if json is not None:
        return jsonlib.dumps(json, separators=(",", ":")).encode(), "application/json"
    if data is not None:
        return urlencode(data, doseq=True).encode(), "application/x-www-form-urlencoded"
    if isinstance(content, str):
        return content.encode(), None
    return content, None


class Response:
    """An HTTP response. Read whole (``content``, ``text``, ``json()``) or streamed
    (``aiter_bytes()`` inside ``client.stream(...)``)."""

    def __init__(
        self,
        status_code: int,
        headers: Headers,
        *,
        http_version: str = "1.1",
        url: str = "",
        method: str = "GET",
        reader: BodyReader | None = None,
        on_close: Callable[[], None] | None = None,
        content: bytes | None = None,
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self.http_version = http_version
        self.url = url
        self.method = method
        self._reader = reader
        self._content = content
        self._consumed = content is not None
        self._on_close = on_close

    @property
    def reason_phrase(self) -> str:
        from http import HTTPStatus

        try:
            return HTTPStatus(self.status_code).phrase
        except ValueError:
            return ""

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def content(self) -> bytes:
        if self._content is None:
            raise StreamConsumed("response body not read yet: await response.aread() first")
        return self._content

    @property
    def encoding(self) -> str:
        ctype = self.headers.get("content-type", "") or ""
        for part in ctype.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                return value.strip('"')
        return "utf-8"

    @property
    def text(self) -> str:
        return self.content.decode(self.encoding, errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def raise_for_status(self) -> Response:
        if self.status_code >= 400:
            raise HTTPStatusError(
                f"{self.status_code} {self.reason_phrase} for {self.method} {self.url}",
                status_code=self.status_code, target=self.url,
            )
        return self

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives; the connection returns to the pool at the end."""
        if self._content is not None:
            if self._content:
                yield self._content
            return
        if self._consumed:
            raise StreamConsumed("response body already read or closed")
        self._consumed = True
        reader = self._reader
        assert reader is not None
        try:
            while (chunk := await reader()) is not None:
                yield chunk
        finally:
            await self.aclose()

    async def aread(self) -> bytes:
        """Read the whole body (once); the connection then returns to the pool."""
        if self._content is not None:
            return self._content
        if self._consumed:
            raise StreamConsumed("response body already streamed or closed")
        self._consumed = True
        reader = self._reader
        assert reader is not None
        chunks: list[bytes] = []
        try:
            while (chunk := await reader()) is not None:
                chunks.append(chunk)
        finally:
            await self.aclose()
        self._content = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self._content

    async def aclose(self) -> None:
        """Release the connection: back to the pool if the body was read completely,
        closed otherwise (HTTP/1.1 cannot abandon a response half-read)."""
        self._consumed = True
        callback, self._on_close = self._on_close, None
        if callback is not None:
            callback()

    def __repr__(self) -> str:
        return f"<Response [{self.status_code} {self.reason_phrase}]>"
